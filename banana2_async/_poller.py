"""The one poller of a client: the async shell around `PollSchedule` and `decide_poll`.

One dispatch coroutine sleeps until the earliest due poll, deadline or new
registration (with nothing registered it does not wake at all) and hands due
tasks to a pool of at most ``max_concurrent_polls`` workers, started as polls
come due faster than the running ones send them. Every task id is polled once
however many handles wait on it. What each answer means is decided by the
pure `decide_poll`; the poller applies it, to that task only (or, after a 401
or a 429, to every task).
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final

import anyio
import anyio.lowlevel

from ._decisions import BackOff, Fail, FailEveryTask, PauseEverything, PollAgain, PollDecision, Settle, decide_poll
from ._exceptions import Banana2Error, ClientClosedError, TaskTimeoutError
from ._handle import TaskHandle
from ._learn import DurationLearner
from ._queue import EndOfQueue, Queue
from ._schedule import Interval, PollSchedule, TimerHeap

if TYPE_CHECKING:
    from anyio.abc import TaskGroup, TaskStatus

    from ._http import Wire
    from ._models import GenerationRequest, GenerationResult
    from ._throttle import Throttle

__all__ = ["Poller"]

logger = logging.getLogger("banana2_async")

_MAX_UNKNOWN_LOGGED: Final = 64

# Requests waiting at a rate-limited gate from which on a poll of a task not expected done yet is put off.
_CONTENDED: Final = 8

# A kind of task, as far as how long it takes: its type and resolution.
_Kind = tuple[str, str]


class _Entry:
    __slots__ = ("handles", "kind", "last_error", "registered_at", "running_at", "task_id")

    def __init__(self, task_id: str, registered_at: float, handle: TaskHandle) -> None:
        self.task_id = task_id
        self.handles: list[TaskHandle] = [handle]
        self.registered_at = registered_at
        self.last_error: BaseException | None = None
        # What the learned schedule knows the task by, for one submitted here: its type and resolution.
        request = handle.request
        self.kind: _Kind | None = None if request is None else (request.task_type, request.resolution or "1k")
        # When a poll last found it running (anyio's clock).
        self.running_at: float | None = None


class _WorkerPool:
    """At most ``size`` workers, each polling the entries it takes off one `Queue`.

    A worker is started only when entries come and no worker waits for one:
    a pool of any size costs nothing until polls come due that fast.
    """

    __slots__ = ("_group", "_poll", "_queue", "_size", "hired")

    def __init__(self, size: int, poll: Callable[[_Entry], Awaitable[None]]) -> None:
        self._size = size
        self._poll = poll
        self._queue: Queue[_Entry] = Queue()
        self._group: TaskGroup | None = None
        self.hired = 0

    def start(self, group: TaskGroup) -> None:
        """Start workers in ``group`` from now on."""
        self._group = group

    def hand(self, entries: list[_Entry]) -> None:
        """Put ``entries`` in line, oldest first; start workers for those no idle worker takes."""
        unserved = len(entries) - self._queue.extend(entries)
        group = self._group
        if unserved > 0 and self.hired < self._size and group is not None:
            for _ in range(min(unserved, self._size - self.hired)):
                self.hired += 1
                group.start_soon(self._work)

    def close(self) -> None:
        """Let every worker end once the line is empty."""
        self._queue.clear()
        self._queue.close()

    async def _work(self) -> None:
        queue, poll = self._queue, self._poll
        while True:
            try:
                entry = queue.get_nowait() if queue else await queue.get()
            except EndOfQueue:
                return
            await poll(entry)
            # Other tasks get their turn between polls, also with a transport that never waits.
            await anyio.lowlevel.checkpoint()


class Poller:
    """Watches every in-flight task of one client and settles its handles."""

    __slots__ = (
        "_closed",
        "_coalesce",
        "_deadlines",
        "_entries",
        "_lead",
        "_learner",
        "_listeners",
        "_not_found_grace",
        "_pool",
        "_ranked",
        "_schedule",
        "_throttle",
        "_unknown_logged",
        "_wake_at",
        "_wakeup",
        "_wire",
        "polls_sent",
    )

    def __init__(
        self,
        wire: Wire,
        *,
        interval: Interval,
        max_concurrent_polls: int,
        throttle: Throttle,
        not_found_grace: float,
        rng: random.Random,
        learn_first_poll: bool = True,
    ) -> None:
        self._wire = wire
        self._throttle = throttle
        self._not_found_grace = not_found_grace
        self._schedule: PollSchedule[str] = PollSchedule(interval, rng)
        low, high = interval
        self._lead = (low + high) / 2
        self._learner: DurationLearner[_Kind] | None = (
            DurationLearner(lead=self._lead, floor=low) if learn_first_poll else None
        )
        # Under a rate limit, polls wait at the gate ranked by when their task is expected done.
        self._ranked = self._learner is not None and throttle.budget.rate is not None
        self._deadlines: TimerHeap[TaskHandle] = TimerHeap()
        self._entries: dict[str, _Entry] = {}
        self._pool = _WorkerPool(max_concurrent_polls, self._poll_if_watched)
        # Polls due within this window are sent together: fewer wake-ups, a few ms of slip.
        self._coalesce = min(0.01, interval[0] / 10)
        self._wakeup: anyio.Event | None = None
        self._wake_at = math.inf
        self._unknown_logged: set[str] = set()
        self._closed = False
        self._listeners: list[Callable[[str], object]] = []
        self.polls_sent: int = 0

    def __len__(self) -> int:
        """The number of distinct tasks being polled."""
        return len(self._entries)

    def __repr__(self) -> str:
        return f"<Poller {len(self._entries)} tasks, {self.polls_sent} polls sent>"

    @property
    def workers(self) -> int:
        """How many poll workers were started."""
        return self._pool.hired

    def pending(self) -> list[TaskHandle]:
        """Every handle the poller is watching."""
        return [handle for entry in self._entries.values() for handle in entry.handles]

    def add_poll_listener(self, listener: Callable[[str], object]) -> None:
        """Call ``listener(task_id)`` each time the server answers a poll (for progress displays)."""
        self._listeners.append(listener)

    def remove_poll_listener(self, listener: Callable[[str], object]) -> None:
        """Forget a listener added with `add_poll_listener`; a no-op if it is not there."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    # -- registration -------------------------------------------------------------------------

    def attach(
        self,
        task_id: str,
        *,
        wait_timeout: float | None,
        request: GenerationRequest | None = None,
        immediately: bool = False,
    ) -> TaskHandle:
        """A new handle on ``task_id``, polled from now on; its deadline is ``wait_timeout`` away."""
        now = anyio.current_time()
        deadline = None if wait_timeout is None else now + wait_timeout
        handle = TaskHandle(task_id, watcher=self, deadline=deadline, request=request)
        self._register(handle, now, immediately=immediately)
        return handle

    def _register(self, handle: TaskHandle, now: float, *, immediately: bool = False, fresh: bool = True) -> None:
        if self._closed:
            handle._set_error(ClientClosedError(handle.task_id))
            return
        entry = self._entries.get(handle.task_id)
        if entry is None:
            # A 404 is forgiven only right after a submit: a tracked task is one the server has.
            registered_at = now if handle.request is not None else -math.inf
            entry = self._entries[handle.task_id] = _Entry(handle.task_id, registered_at, handle)
            if not fresh:
                # Polled again after a release: how long it has run is no longer known here.
                entry.kind = None
            delay = None if immediately else self._first_poll(entry, handle.deadline, now)
            self._wake_by(self._schedule.add(handle.task_id, now, immediately=immediately, delay=delay))
        else:
            entry.handles.append(handle)
        if handle.deadline is not None:
            if handle.deadline <= now:
                self._expire(handle)
                return
            self._deadlines.set(handle, handle.deadline)
            self._wake_by(handle.deadline)

    def _first_poll(self, entry: _Entry, deadline: float | None, now: float) -> float | None:
        """Seconds to a new task's first poll, as learned; ``None`` for one poll interval."""
        if self._learner is None or entry.kind is None:
            return None
        delay = self._learner.first_poll(entry.kind)
        if delay is not None and deadline is not None:
            # A task is polled at least once before its handle's deadline.
            delay = max(0.0, min(delay, deadline - now - self._coalesce * 2))
        return delay

    def _expected_done(self, entry: _Entry, now: float) -> float:
        """When ``entry``'s task is expected done (anyio's clock); see `DurationLearner.expected_done`."""
        assert self._learner is not None
        return self._learner.expected_done(
            entry.kind, submitted_at=entry.registered_at, running_at=entry.running_at, now=now
        )

    def _rank(self, due: list[_Entry], now: float) -> list[_Entry]:
        """Under a rate limit: the due polls that go now, those of tasks expected done soonest first.

        While `_CONTENDED` requests or more wait at the gate, a poll of a task
        not expected done yet is put off until it is: the budget goes to polls
        that may find a task done, and to submits.
        """
        if self._throttle.waiting >= _CONTENDED:
            keep = []
            for entry in due:
                expected = self._expected_done(entry, now)
                if expected > now + self._coalesce:
                    self._wake_by(self._schedule.defer(entry.task_id, expected))
                else:
                    keep.append(entry)
            due = keep
        if len(due) > 1:
            due.sort(key=lambda entry: self._expected_done(entry, now))
        return due

    def resume(self, handle: TaskHandle) -> None:
        """Poll for ``handle`` again if it was released and is still pending."""
        if handle.done():
            return
        entry = self._entries.get(handle.task_id)
        if entry is None or handle not in entry.handles:
            self._register(handle, anyio.current_time(), fresh=False)

    def release(self, handle: TaskHandle) -> None:
        """Stop polling for ``handle``; the task stops being polled when no handle is left."""
        entry = self._entries.get(handle.task_id)
        self._deadlines.discard(handle)
        if entry is None or handle not in entry.handles:
            return
        entry.handles.remove(handle)
        if not entry.handles:
            del self._entries[handle.task_id]
            self._schedule.discard(handle.task_id)

    def _wake_by(self, when: float) -> None:
        if when < self._wake_at and self._wakeup is not None:
            self._wake_at = when
            self._wakeup.set()

    # -- settling ---------------------------------------------------------------------------------

    def _settle(self, task_id: str, result: GenerationResult | None, error: BaseException | None) -> None:
        entry = self._entries.pop(task_id, None)
        self._schedule.discard(task_id)
        if entry is None:
            return
        for handle in entry.handles:
            self._deadlines.discard(handle)
            handle._settle(result, error)

    def _expire(self, handle: TaskHandle) -> None:
        entry = self._entries.get(handle.task_id)
        self.release(handle)
        error = TaskTimeoutError(handle.task_id)
        if entry is not None and entry.last_error is not None:
            error.__cause__ = entry.last_error
        handle._set_error(error)

    def fail_all(self, error_for: Callable[[str], BaseException]) -> None:
        """Settle every pending handle with ``error_for(task_id)``."""
        for task_id in list(self._entries):
            self._settle(task_id, None, error_for(task_id))

    def close(self) -> None:
        """Fail every pending handle with `ClientClosedError`; later registrations fail at once."""
        self._closed = True
        self.fail_all(ClientClosedError)
        if self._wakeup is not None:
            self._wakeup.set()
        self._pool.close()

    # -- the coroutines ------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Dispatch due polls to the workers until cancelled."""
        self._wakeup = anyio.Event()
        async with anyio.create_task_group() as workers:
            self._pool.start(workers)
            task_status.started()
            await self._dispatch()

    async def _dispatch(self) -> None:
        schedule, deadlines, pool, entries = self._schedule, self._deadlines, self._pool, self._entries
        while not self._closed:
            now = anyio.current_time()
            for handle in deadlines.pop_due(now):
                self._expire(handle)
            paused = self._throttle.pause_remaining()
            if paused <= 0:
                due = [entry for task_id in schedule.pop_due(now) if (entry := entries.get(task_id)) is not None]
                if self._ranked:
                    due = self._rank(due, now)
                pool.hand(due)
            wake = math.inf
            next_poll = schedule.next_time()
            if next_poll is not None:
                wake = max(next_poll + self._coalesce, now + paused)
            next_deadline = deadlines.next_time()
            if next_deadline is not None:
                wake = min(wake, next_deadline)
            self._wake_at = wake
            wakeup = self._wakeup
            assert wakeup is not None
            if wake == math.inf:
                await wakeup.wait()
            else:
                with anyio.move_on_after(wake - now):
                    await wakeup.wait()
            if wakeup.is_set():
                self._wakeup = anyio.Event()

    async def _poll_if_watched(self, entry: _Entry) -> None:
        # An entry, not an id, was put in line: a task released and tracked again meanwhile has a new one.
        if self._entries.get(entry.task_id) is entry:
            await self._poll(entry)

    async def _poll(self, entry: _Entry) -> None:
        task_id = entry.task_id
        self.polls_sent += 1
        priority = -self._expected_done(entry, anyio.current_time()) if self._ranked else 0.0
        try:
            sent_at, answer = await self._wire.poll_status(task_id, priority=priority)
        except Exception as exc:
            # A bug must cost one task its result, never the poller its life.
            logger.exception("polling task %s failed unexpectedly", task_id)
            self._settle(task_id, None, exc)
            return
        if self._listeners and not isinstance(answer, Banana2Error):
            self._tell_listeners(task_id)
        decision = decide_poll(
            answer,
            task_id=task_id,
            sent_at=sent_at,
            registered_at=entry.registered_at,
            not_found_grace=self._not_found_grace,
        )
        self._apply(entry, sent_at, decision)

    def _apply(self, entry: _Entry, sent_at: float, decision: PollDecision) -> None:
        """Carry out ``decision`` about ``entry``'s task, polled at ``sent_at``."""
        task_id = entry.task_id
        watched = self._entries.get(task_id) is entry
        match decision:
            case PollAgain(unknown_status=unknown):
                if unknown is not None:
                    self._log_unknown(unknown)
                entry.running_at = sent_at
                if watched:
                    self._wake_by(self._schedule.polled(task_id, sent_at))
            case Settle(result=result):
                self._learn(entry, sent_at)
                self._settle(task_id, result, None)
            case Fail(error=error):
                self._settle(task_id, None, error)
            case FailEveryTask(error=error):
                logger.error("the API key was refused while polling; failing every pending task")
                self.fail_all(lambda _: error)
            case PauseEverything(error=error, retry_after=retry_after):
                pause = self._throttle.rate_limited(retry_after)
                logger.warning("rate limited: pausing every request for %.1f s", pause)
                if watched:
                    entry.last_error = _slim(error)
                    self._wake_by(self._schedule.polled(task_id, sent_at))
            case BackOff(error=error, retry_after=retry_after):
                if watched:
                    logger.debug("poll of task %s failed (%s); backing off", task_id, type(error).__name__)
                    entry.last_error = _slim(error)
                    self._wake_by(self._schedule.failed(task_id, sent_at, retry_after=retry_after))

    def _learn(self, entry: _Entry, done_at: float) -> None:
        """Learn how long ``entry``'s task took, if it was submitted by this client."""
        if self._learner is None or entry.kind is None or entry.registered_at == -math.inf:
            return
        start = entry.registered_at
        running_at = None if entry.running_at is None else entry.running_at - start
        self._learner.learn(entry.kind, running_at=running_at, done_at=done_at - start)

    def _tell_listeners(self, task_id: str) -> None:
        for listener in list(self._listeners):
            try:
                listener(task_id)
            except Exception:
                logger.exception("a poll listener raised")

    def _log_unknown(self, status: str) -> None:
        if status not in self._unknown_logged and len(self._unknown_logged) < _MAX_UNKNOWN_LOGGED:
            self._unknown_logged.add(status)
            logger.warning("unknown task status %r: treating it as in flight", status)


def _slim(exc: Banana2Error) -> Banana2Error:
    """``exc`` made fit to be kept for as long as its task is pending (as a later timeout's cause).

    Its traceback's frames, and those of the errors it was raised from or
    during, would keep alive whatever they held: the answer's body, the
    response, the request. The message says what happened; the rest goes.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        current.__traceback__ = None
        # What it was raised from stays (httpx's error, say); what it was raised while handling
        # (a JSONDecodeError, which keeps the whole document) goes.
        current.__context__ = None
        current = current.__cause__
    return exc
