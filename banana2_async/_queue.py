"""`Queue`: items handed from plain functions (callbacks, the poller's dispatch) to the tasks that wait for them.

Why not an anyio memory object stream: its two ends must both be closed, and
trio warns about one collected open, while the loops fed here (`AsCompleted`,
a bulk run's events) are left early on purpose, with nothing to close; its
``receive`` goes through the event loop even when items are waiting, a cost
the poller's workers would pay on every poll; and a stream has no count of
the tasks waiting on it, which the poller needs to know when to start another
worker. This is a deque and one `anyio.Event` per waiting task.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Generic, TypeVar

import anyio

__all__ = ["EndOfQueue", "Queue"]

T = TypeVar("T")


class EndOfQueue(Exception):
    """`Queue.get` on a queue that is closed and empty."""


class Queue(Generic[T]):
    """A first-in first-out queue without a bound: `put` never waits, `get` waits for an item."""

    __slots__ = ("_closed", "_items", "_waiters")

    def __init__(self) -> None:
        self._items: deque[T] = deque()
        self._waiters: deque[anyio.Event] = deque()
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"<Queue {len(self._items)} items, {len(self._waiters)} waiting{', closed' if self._closed else ''}>"

    @property
    def waiting(self) -> int:
        """How many tasks wait in `get` for an item now."""
        return len(self._waiters)

    def put(self, item: T) -> None:
        """Add ``item`` and wake one waiting task."""
        self._items.append(item)
        if self._waiters:
            self._waiters.popleft().set()

    def extend(self, items: Iterable[T]) -> int:
        """Add ``items`` in order, waking a waiting task for each; return how many were woken."""
        before = len(self._waiters)
        for item in items:
            self.put(item)
        return before - len(self._waiters)

    def get_nowait(self) -> T:
        """The oldest item; `IndexError` when there is none."""
        return self._items.popleft()

    async def get(self) -> T:
        """The oldest item, once there is one.

        Raises:
            EndOfQueue: The queue is closed and empty.
        """
        items = self._items
        while not items:
            if self._closed:
                raise EndOfQueue
            event = anyio.Event()
            self._waiters.append(event)
            try:
                await event.wait()
            except BaseException:
                if not event.is_set():
                    self._waiters.remove(event)
                elif items and self._waiters:
                    # Woken for an item, then cancelled: the item must wake another task.
                    self._waiters.popleft().set()
                raise
        return items.popleft()

    def clear(self) -> None:
        """Drop every item."""
        self._items.clear()

    def close(self) -> None:
        """Wake every waiting task: once the items left are taken, `get` raises `EndOfQueue`."""
        self._closed = True
        while self._waiters:
            self._waiters.popleft().set()
