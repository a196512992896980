"""A started bulk run: the loop that keeps ``concurrency`` rows in flight, and the work of each row.

`BatchClient` is all a run uses of its client. `BatchRun` sends, tracks and
settles the rows its plan gives it (`_batch_plan.planned_rows`), records each
step in the journal before the step goes on, and puts a `BatchEvent` on its
`events` queue for each step; what a failure means is decided in
`_batch_outcome`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

import anyio
import anyio.lowlevel

from ._batch_outcome import (
    BatchEvent,
    BatchOutcome,
    Ending,
    EventKind,
    describe,
    download_failure,
    empty_result,
    never_sent,
    stopped_while_retrying,
    submit_failure,
    task_failure,
    uncertain_from_earlier_run,
    unreachable_error,
    usable_images,
)
from ._queue import Queue

if TYPE_CHECKING:
    import httpx

    from ._batch_plan import PlannedRow
    from ._handle import TaskHandle
    from ._journal import Journal
    from ._models import GenerationRequest, GenerationResult
    from ._types import NotGiven

__all__ = ["UNREACHABLE_AFTER", "BatchClient", "BatchRun"]

logger = logging.getLogger("banana2_async")

# Submits in a row that could not be sent at all before a run stops sending.
UNREACHABLE_AFTER: Final = 3


class BatchClient(Protocol):
    """What a bulk run uses of its client: nothing more. `AsyncBanana2.batch` passes the client's own.

    ``base_url`` names the API in messages; ``retries_uncertain_submits``
    says whether the client sends again a submit that may have landed (so a
    submit given up between attempts may have been paid for); ``closed``
    whether the client was closed.
    """

    @property
    def base_url(self) -> httpx.URL: ...

    @property
    def retries_uncertain_submits(self) -> bool: ...

    @property
    def closed(self) -> bool: ...

    def require_open(self) -> None:
        """Raise `RuntimeError` unless the client is open (entered, not closed)."""

    def start_soon(self, function: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        """Run ``function(*args)`` in the client's task group; `RuntimeError` if the client is not open."""

    def on_poll(self, listener: Callable[[str], object]) -> Callable[[], None]:
        """Call ``listener(task_id)`` after each answered poll; return what stops it."""

    async def submit_request(self, request: GenerationRequest, *, wait_timeout: float | NotGiven | None) -> TaskHandle:
        """Send ``request``; its handle (`AsyncBanana2.submit_request`)."""

    def track(self, task_id: str, *, wait_timeout: float | NotGiven | None) -> TaskHandle:
        """Watch a task of an earlier run (`AsyncBanana2.track`)."""

    async def download(self, result: GenerationResult, dest_dir: str | os.PathLike[str]) -> list[Path]:
        """Save the images of ``result`` into ``dest_dir``; the files written (`AsyncBanana2.download`)."""


class BatchRun:
    """One run of a job, started: its rows sent, tracked and settled, at most ``concurrency`` at once.

    `run` runs it, in the client's task group; `stop` ends it early. Each step
    of a row puts a `BatchEvent` on `events`, closed when the run ends, as
    `finished` is set; `fatal` is the error that ended it early (a journal
    that cannot be written). A 402, a refused key, a closed client or
    ``UNREACHABLE_AFTER`` submits in a row that never left stop new submits;
    tasks already paid for are still watched.
    """

    __slots__ = (
        "_client",
        "_concurrency",
        "_dest_dir",
        "_halted",
        "_in_flight",
        "_journal",
        "_requests",
        "_scope",
        "_sending",
        "_stopped",
        "_unreachable",
        "_wait_timeout",
        "events",
        "fatal",
        "finished",
    )

    def __init__(
        self,
        client: BatchClient,
        journal: Journal,
        requests: Sequence[GenerationRequest],
        *,
        concurrency: int,
        wait_timeout: float | NotGiven | None,
        dest_dir: Path | None,
    ) -> None:
        self._client = client
        self._journal = journal
        self._requests = requests
        self._concurrency = concurrency
        self._wait_timeout = wait_timeout
        self._dest_dir = dest_dir
        self.events: Queue[BatchEvent] = Queue()
        self.finished = anyio.Event()
        self.fatal: Exception | None = None
        self._scope = anyio.CancelScope()
        self._stopped = False
        self._in_flight: dict[str, int] = {}
        self._sending: dict[int, anyio.CancelScope] = {}
        self._halted: Exception | None = None
        self._unreachable = 0

    async def run(self, rows: Sequence[PlannedRow]) -> None:
        """Work through ``rows`` in order, then close the journal and `events`."""
        unsubscribe = self._client.on_poll(self._on_polled)
        try:
            with self._scope:
                async with anyio.create_task_group() as workers:
                    slots = anyio.Semaphore(self._concurrency)
                    for row in rows:
                        if row.kind == "uncertain":
                            self._finish(uncertain_from_earlier_run(row.index, row.request, row.error))
                            continue
                        # Tasks of an earlier run are paid for: they are watched whatever stopped new submits.
                        if self._halted is None or row.kind == "track":
                            await slots.acquire()
                            if self._halted is None or row.kind == "track":
                                workers.start_soon(self._work, row, slots)
                                continue
                            slots.release()
                        self._finish(self._unsubmitted(row))
        except Exception as exc:
            logger.exception("a bulk run failed")
            self.fatal = exc
        finally:
            with anyio.CancelScope(shield=True):
                unsubscribe()
                await self._journal.aclose()
            self.finished.set()
            self.events.close()

    async def stop(self) -> None:
        """Send nothing new, record what is being sent, and wait for the run to end; unread events are dropped."""
        self._stopped = True
        self._scope.cancel()
        with anyio.CancelScope(shield=True):
            await self.finished.wait()
        self.events.clear()

    async def _work(self, row: PlannedRow, slots: anyio.Semaphore) -> None:
        try:
            self._finish(await (self._track(row) if row.kind == "track" else self._submit(row)))
        except Exception as exc:
            # Whatever one request's answers hold ends that request only (see `_batch_outcome`);
            # what gets here is a journal that cannot be written, and going on would spend blind.
            self.fatal = exc
            self._scope.cancel()
        finally:
            slots.release()

    def _halt(self, exc: Exception) -> None:
        if self._halted is None:
            logger.warning("bulk run: %s; no new requests are sent, tasks in flight finish", describe(exc))
            self._halted = exc
            # Submits still waiting to be sent (for a slot, the rate gate, a retry) are not sent now.
            for waiting in self._sending.values():
                waiting.cancel()

    async def _submit(self, row: PlannedRow) -> BatchOutcome:
        index, request = row.index, row.request
        if self._halted is not None:
            return self._unsubmitted(row)
        # Cancellation is honoured here, before the row says a POST is under way.
        await anyio.lowlevel.checkpoint()
        if self._client.closed:
            # The client was closed under the run: nothing more can be sent.
            self._halt(RuntimeError("this AsyncBanana2 is closed"))
            return self._unsubmitted(row)
        with anyio.CancelScope(shield=True):
            await self._journal.mark_submitting(index)
        handle: TaskHandle | None = None
        # Cancelled when the run stops sending (`_halt`), as a stopped run cancels the whole submit.
        sending = self._sending[index] = anyio.CancelScope()
        try:
            # Not shielded: a run that is stopped abandons a submit still waiting for the rate gate,
            # a slot or a 429/503 retry. The client awaits the answer of a request it has sent whatever
            # happens to its caller, so a task id the server charged for always comes back here.
            with sending:
                handle = await self._client.submit_request(request, wait_timeout=self._wait_timeout)
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                await self._abandoned(index)
            raise
        except Exception as exc:
            with anyio.CancelScope(shield=True):
                return await self._submit_failed(row, exc)
        finally:
            del self._sending[index]
        if handle is None:
            return await self._stopped_sending(row)
        with anyio.CancelScope(shield=True):
            self._unreachable = 0
            self._in_flight[handle.task_id] = index
            # Before the journal write, so no poll of the task is reported ahead of its submit.
            self._emit(BatchEvent("submitted", index, request, handle.task_id))
            await self._journal.mark_submitted(index, handle.task_id)
        return await self._settle(row, handle)

    async def _stopped_sending(self, row: PlannedRow) -> BatchOutcome:
        """The outcome of a submit given up because the run stopped sending, before its request went out."""
        with anyio.CancelScope(shield=True):
            await self._abandoned(row.index)
        if self._client.retries_uncertain_submits:
            return BatchOutcome(row.index, row.request, "uncertain", error=stopped_while_retrying(row.request))
        return self._unsubmitted(row)

    async def _abandoned(self, index: int) -> None:
        """Record a submit the run gave up on before its request was sent (again)."""
        # Between attempts the client holds no answer in flight. Only a client that retries a submit
        # which may have landed can have been paid for one: that row stays uncertain.
        if self._client.retries_uncertain_submits:
            await self._journal.mark_uncertain(
                index,
                "the run was closed while this request waited to be sent again; an earlier attempt may have landed",
            )
        else:
            await self._journal.mark_unsent(index, "the run was closed before this request was sent")

    async def _submit_failed(self, row: PlannedRow, exc: Exception) -> BatchOutcome:
        if never_sent(exc):
            await self._journal.mark_unsent(row.index, describe(exc))
            self._unreachable += 1
            if self._unreachable >= UNREACHABLE_AFTER:
                self._halt(unreachable_error(exc, self._client.base_url, self._unreachable))
            return BatchOutcome(row.index, row.request, "unsubmitted", error=exc)
        self._unreachable = 0
        closed, halted = self._client.closed, self._halted
        return await self._end(submit_failure(row.index, row.request, exc, closed=closed, halted=halted))

    async def _track(self, row: PlannedRow) -> BatchOutcome:
        assert row.task_id is not None
        try:
            handle = self._client.track(row.task_id, wait_timeout=self._wait_timeout)
        except Exception as exc:
            # A task id this client cannot poll (or a closed client): that row fails, the others go on.
            return await self._task_failed(row, row.task_id, exc)
        self._in_flight[row.task_id] = row.index
        self._emit(BatchEvent("tracked", row.index, row.request, row.task_id))
        return await self._settle(row, handle)

    async def _settle(self, row: PlannedRow, handle: TaskHandle) -> BatchOutcome:
        index, request, task_id = row.index, row.request, handle.task_id
        try:
            result = await handle
        except Exception as exc:
            return await self._task_failed(row, task_id, exc)
        finally:
            self._in_flight.pop(task_id, None)
        if not usable_images(result):
            # A success without an image to show for it is not a success, paid for or not.
            return await self._task_failed(row, task_id, empty_result(task_id, result))
        files: tuple[Path, ...] = ()
        if self._dest_dir is not None:
            try:
                files = tuple(await self._client.download(result, self._dest_dir))
            except Exception as exc:
                return await self._end(download_failure(index, request, task_id, result, exc))
            if not files:
                return await self._end(download_failure(index, request, task_id, result, None))
        consumed = result.consumed_credits
        await self._journal.mark_succeeded(index, result.images, [str(path) for path in files], consumed=consumed)
        return BatchOutcome(index, request, "succeeded", task_id=task_id, result=result, files=files)

    async def _task_failed(self, row: PlannedRow, task_id: str, exc: Exception) -> BatchOutcome:
        closed = self._client.closed
        return await self._end(task_failure(row.index, row.request, task_id, exc, closed=closed))

    async def _end(self, ending: Ending) -> BatchOutcome:
        """Record a row that did not succeed, after stopping new submits if its ending says so."""
        if ending.halt is not None:
            self._halt(ending.halt)
        index, journal = ending.outcome.index, self._journal
        if ending.record == "unsent":
            await journal.mark_unsent(index, ending.reason)
        elif ending.record == "uncertain":
            await journal.mark_uncertain(index, ending.reason)
        else:
            final = ending.record == "failed"
            await journal.mark_failed(index, ending.reason, final=final, images=ending.images, consumed=ending.consumed)
        return ending.outcome

    def _unsubmitted(self, row: PlannedRow) -> BatchOutcome:
        return BatchOutcome(row.index, row.request, "unsubmitted", error=self._halted)

    def _finish(self, outcome: BatchOutcome) -> None:
        kind: EventKind = "succeeded" if outcome.ok else "failed"
        self._emit(BatchEvent(kind, outcome.index, outcome.request, outcome.task_id, outcome))

    def _emit(self, event: BatchEvent) -> None:
        # A stopped run has no one reading: its events reach no one.
        if not self._stopped:
            self.events.put(event)

    def _on_polled(self, task_id: str) -> None:
        index = self._in_flight.get(task_id)
        if index is not None:
            self._emit(BatchEvent("polled", index, self._requests[index], task_id))
