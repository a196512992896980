"""TaskHandle: an awaitable, set-once view of one task, settled by the poller."""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from ._queue import EndOfQueue, Queue

if TYPE_CHECKING:
    from typing_extensions import Self

    from ._models import GenerationRequest, GenerationResult

__all__ = ["AsCompleted", "TaskHandle", "Watcher"]

logger = logging.getLogger("banana2_async")

DoneCallback = Callable[["TaskHandle"], object]


class Watcher(Protocol):
    """What watches a handle's task (the client's poller): told when the handle is awaited and let go."""

    def resume(self, handle: TaskHandle) -> None:
        """``handle`` is awaited again: watch its task if it was let go and is still pending."""

    def release(self, handle: TaskHandle) -> None:
        """No one awaits ``handle`` any more: stop watching its task for it."""


class TaskHandle:
    """A submitted or tracked task. ``await handle`` gives its `GenerationResult`.

    Awaiting raises `TaskFailedError` when the server reports a failure,
    `TaskTimeoutError` when the handle's deadline passes first,
    `ClientClosedError` when the client closes, or the API error that ended
    polling (`NotFoundError`, `AuthenticationError`, ...). A handle settles
    once; awaiting it again gives the same outcome.

    When every coroutine awaiting a handle is cancelled, the poller stops
    polling the task for it; awaiting the handle again resumes polling.
    """

    __slots__ = (
        "__weakref__",
        "_callbacks",
        "_error",
        "_error_traceback",
        "_event",
        "_result",
        "_waiters",
        "_watcher",
        "deadline",
        "request",
        "task_id",
    )

    def __init__(
        self,
        task_id: str,
        *,
        watcher: Watcher,
        deadline: float | None,
        request: GenerationRequest | None = None,
    ) -> None:
        self.task_id: str = task_id
        self.request: GenerationRequest | None = request
        self.deadline: float | None = deadline
        self._watcher = watcher
        self._result: GenerationResult | None = None
        self._error: BaseException | None = None
        self._error_traceback: TracebackType | None = None
        # Created on first wait: most handles of a bulk run are never awaited directly.
        self._event: anyio.Event | None = None
        self._waiters = 0
        self._callbacks: list[DoneCallback] | None = None

    def __repr__(self) -> str:
        if self._result is not None:
            state = "succeeded"
        elif self._error is not None:
            state = f"failed: {type(self._error).__name__}"
        else:
            state = "pending"
        return f"<TaskHandle {self.task_id!r} {state}>"

    def done(self) -> bool:
        """Whether the handle has settled, with a result or an error."""
        return self._result is not None or self._error is not None

    def exception(self) -> BaseException | None:
        """The error the handle settled with; ``None`` if it succeeded or is pending."""
        return self._error

    def result_nowait(self) -> GenerationResult:
        """The result of a settled handle, raising its error if it failed.

        Raises `RuntimeError` while the handle is still pending.
        """
        if self._error is not None:
            # Raised from the traceback it settled with, as asyncio's futures do: the error may be
            # shared (a 401 settles every handle with one), and each raise would otherwise add to it.
            raise self._error.with_traceback(self._error_traceback)
        if self._result is None:
            raise RuntimeError(f"task {self.task_id} is still pending")
        return self._result

    async def result(self) -> GenerationResult:
        """Wait for the task and return its result (the same as ``await handle``)."""
        if not self.done():
            if self._event is None:
                self._event = anyio.Event()
            event = self._event
            self._enter_wait()
            try:
                await event.wait()
            finally:
                self._exit_wait()
        return self.result_nowait()

    def __await__(self) -> Generator[Any, None, GenerationResult]:
        return self.result().__await__()

    def add_done_callback(self, callback: DoneCallback) -> None:
        """Call ``callback(handle)`` once the handle settles (at once if it has)."""
        if self.done():
            callback(self)
        elif self._callbacks is None:
            self._callbacks = [callback]
        else:
            self._callbacks.append(callback)

    def remove_done_callback(self, callback: DoneCallback) -> None:
        """Forget a callback added with `add_done_callback`."""
        if self._callbacks and callback in self._callbacks:
            self._callbacks.remove(callback)

    @property
    def waiting(self) -> bool:
        """Whether any coroutine is awaiting the handle now."""
        return self._waiters > 0

    def _enter_wait(self) -> None:
        """Count a waiter in; the poller resumes polling a handle that was released."""
        self._waiters += 1
        if self._waiters == 1:
            self._watcher.resume(self)

    def _exit_wait(self) -> None:
        """Count a waiter out; when the last one leaves early, the poller lets the task go."""
        self._waiters -= 1
        if self._waiters == 0 and not self.done():
            self._watcher.release(self)

    def _settle(self, result: GenerationResult | None, error: BaseException | None) -> bool:
        if self.done():
            return False
        self._result, self._error = result, error
        self._error_traceback = None if error is None else error.__traceback__
        if self._event is not None:
            self._event.set()
        callbacks, self._callbacks = self._callbacks, None
        for callback in callbacks or ():
            try:
                callback(self)
            except Exception:
                logger.exception("a done callback of task %s raised", self.task_id)
        return True

    def _set_result(self, result: GenerationResult) -> bool:
        return self._settle(result, None)

    def _set_error(self, error: BaseException) -> bool:
        return self._settle(None, error)


class AsCompleted:
    """Handles in the order they settle: ``async for done in client.as_completed(handles)``.

    It counts as a waiter of every handle it watches. Leaving the loop early
    and closing it (``async with client.as_completed(...) as results:``, or
    ``await results.aclose()``) lets go of the handles: those no one else
    awaits stop being polled. Unclosed, it keeps them polled until they settle.
    """

    __slots__ = ("_closed", "_pending", "_ready", "_remaining")

    def __init__(self, handles: Iterable[TaskHandle]) -> None:
        self._pending = list(dict.fromkeys(handles))
        self._remaining = len(self._pending)
        # Nothing to close: a loop left early warns about nothing.
        self._ready: Queue[TaskHandle] = Queue()
        self._closed = False
        for handle in self._pending:
            handle._enter_wait()
            handle.add_done_callback(self._ready.put)

    def __aiter__(self) -> AsCompleted:
        return self

    async def __anext__(self) -> TaskHandle:
        if self._remaining == 0 or self._closed:
            self._close()
            raise StopAsyncIteration
        try:
            handle = await self._ready.get()
        except EndOfQueue:
            raise StopAsyncIteration from None
        self._remaining -= 1
        return handle

    async def aclose(self) -> None:
        """Stop watching the handles that have not settled yet."""
        self._close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._close()

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for handle in self._pending:
            handle.remove_done_callback(self._ready.put)
            handle._exit_wait()
        self._ready.clear()
        self._ready.close()
