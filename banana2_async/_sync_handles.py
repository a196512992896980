"""SyncTaskHandle and SyncBatch: the handles and bulk runs of a `Banana2`, blocking where theirs await."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import anyio

from ._exceptions import TaskTimeoutError
from ._validate import check_seconds

if TYPE_CHECKING:
    from ._batch import Batch, BatchEvent, BatchOutcome, BatchPlan
    from ._handle import TaskHandle
    from ._models import GenerationRequest, GenerationResult

__all__ = ["SyncBatch", "SyncTaskHandle"]

T = TypeVar("T")


class LoopCaller(Protocol):
    """What a handle or a run needs of its `Banana2`: a call, or an iteration, run on the client's loop."""

    def _call(self, func: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``func(*args)`` on the loop and wait for its outcome."""

    def _iterate(self, make: Callable[[], AsyncIterator[T]]) -> Iterator[T]:
        """Iterate ``make()`` on the loop, yielding each item in the calling thread."""


async def _wait(handle: TaskHandle, seconds: float | None) -> GenerationResult:
    with anyio.move_on_after(seconds):
        return await handle
    raise TaskTimeoutError(handle.task_id)


class SyncTaskHandle:
    """A submitted or tracked task of a `Banana2` client: a `TaskHandle` whose result blocks.

    ``handle.result()`` blocks until the task settles and returns its
    `GenerationResult`, or raises what awaiting a `TaskHandle` raises.
    The handle keeps its client open while it is in use.
    """

    __slots__ = ("_client", "_handle")

    def __init__(self, handle: TaskHandle, client: LoopCaller) -> None:
        self._handle = handle
        self._client = client

    def __repr__(self) -> str:
        return repr(self._handle).replace("<TaskHandle", "<SyncTaskHandle", 1)

    @property
    def task_id(self) -> str:
        """The task's id."""
        return self._handle.task_id

    @property
    def request(self) -> GenerationRequest | None:
        """The submitted request; ``None`` for a handle made by `Banana2.track`."""
        return self._handle.request

    @property
    def async_handle(self) -> TaskHandle:
        """The `TaskHandle` this wraps, owned by the client's event loop thread."""
        return self._handle

    def done(self) -> bool:
        """Whether the task has settled, with a result or an error."""
        return self._handle.done()

    def exception(self) -> BaseException | None:
        """The error the task settled with; ``None`` if it succeeded or is pending. Does not block."""
        return self._handle.exception()

    def result(self, timeout: float | None = None) -> GenerationResult:
        """Block until the task settles and return its result.

        Args:
            timeout: Seconds to wait at most; ``None`` waits until the handle's
                own deadline (the client's ``wait_timeout``).

        Raises:
            InvalidRequestError: ``timeout`` is not a number of seconds (0 or more) or ``None``.
            TaskTimeoutError: ``timeout`` passed first. The handle is still
                pending: call `result` again to wait on.
            TaskFailedError: The server reports the task as failed.
            Banana2Error: Whatever else ended the task (`ClientClosedError`, ...).
        """
        seconds = None if timeout is None else check_seconds(timeout, "timeout", zero=True)
        if self._handle.done():
            return self._handle.result_nowait()
        return self._client._call(_wait, self._handle, seconds)


class SyncBatch:
    """A bulk run of a `Banana2` client; made by `Banana2.batch`.

    Iterate it for a `BatchOutcome` per request, in the order they finish::

        for outcome in client.batch(prompts, journal="run.db", dest_dir="images"):
            ...

    or iterate `events` for every `BatchEvent`. Leaving the loop early stops
    the run (nothing new is sent; a request being sent has its task id
    recorded). A run is iterated once.
    """

    __slots__ = ("_batch", "_client")

    def __init__(self, batch: Batch, client: LoopCaller) -> None:
        self._batch = batch
        self._client = client

    def __repr__(self) -> str:
        return repr(self._batch).replace("<Batch", "<SyncBatch", 1)

    @property
    def requests(self) -> tuple[GenerationRequest, ...]:
        """The job's requests, in order."""
        return self._batch.requests

    @property
    def plan(self) -> BatchPlan | None:
        """What the run does (submits, re-tracks, skips, credits); set once it has started."""
        return self._batch.plan

    def dry_run(self) -> BatchPlan:
        """What the run would do and cost, from the journal if there is one; sends nothing, writes nothing."""
        return self._client._call(self._batch.dry_run)

    def __iter__(self) -> Iterator[BatchOutcome]:
        return self._client._iterate(self._batch.__aiter__)

    def events(self) -> Iterator[BatchEvent]:
        """Every event of the run: progress (submitted, tracked, polled) and outcomes (succeeded, failed)."""
        return self._client._iterate(self._batch.events)

    def close(self) -> None:
        """Stop the run: send nothing new, record what is being sent, stop waiting. Safe to call more than once."""
        self._client._call(self._batch.aclose)

    def __enter__(self) -> SyncBatch:
        self._client._call(self._batch.__aenter__)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
