"""Bulk runs: many requests through one client, bounded, budgeted, journaled, observable.

A `Batch` keeps at most ``concurrency`` tasks in flight (from the ``POST``
until the result is downloaded), the client's shared poller watching them
all, and yields a `BatchOutcome` for every request in the order they finish.
What a run will cost is known before it starts, and a run over its
``max_credits`` is refused before any request is sent.

With a journal (see `_journal`), a run survives a crash or an empty balance:
run the same job again and finished rows are skipped, known task ids are
tracked instead of paid for again, and rows whose ``POST`` may have landed
without an answer are reported as uncertain rather than sent again, unless
``resubmit_uncertain=True``. Rows whose task failed on the server are sent
again (and paid for again) only with ``retry_failed=True``. The job may grow
between runs: rows are known by their keys (see `_job`), and rows added to
it are sent by the next run.

A 402 (or a refused key) stops new submits; tasks in flight still finish, and
every request not sent is reported as ``"unsubmitted"``. So do a few submits
in a row that could not reach the server at all (nothing was sent): a run
against an address that does not answer stops early instead of trying every
row.

This module is the face of a run, `Batch`; the rest has a module per job:
`_batch_plan` (what a run will do and cost), `_batch_run` (the loop, the work
of each row, and `BatchClient`, all a run uses of its client) and
`_batch_outcome` (how each row ends).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Generic, TypeVar

from ._batch_outcome import BatchEvent, BatchOutcome, EventKind, OutcomeStatus
from ._batch_plan import (
    BatchPlan,
    as_requests,
    check_budget,
    failed_on_the_server,
    plan_batch,
    planned_rows,
    row_kind,
)
from ._batch_run import UNREACHABLE_AFTER, BatchClient, BatchRun
from ._journal import Journal, JournalRow, job_keys, read_journal
from ._models import GenerationRequest
from ._queue import EndOfQueue
from ._types import DEFAULT_BATCH_CONCURRENCY, NOT_GIVEN, NotGiven
from ._validate import check_non_negative_int, check_positive_int

__all__ = [
    "UNREACHABLE_AFTER",
    "Batch",
    "BatchClient",
    "BatchEvent",
    "BatchOutcome",
    "BatchPlan",
    "EventKind",
    "OutcomeStatus",
    "as_requests",
    "failed_on_the_server",
    "plan_batch",
    "row_kind",
]

T = TypeVar("T")


def _outcome_of(event: BatchEvent) -> BatchOutcome | None:
    return event.outcome


def _itself(event: BatchEvent) -> BatchEvent:
    return event


def _seam_of(client: BatchClient) -> BatchClient:
    """``client``, refused if it is no `BatchClient` (an `AsyncBanana2` itself is not one)."""
    if not hasattr(client, "require_open"):
        raise TypeError("make a bulk run with client.batch(requests, ...), not Batch(client, ...)")
    return client


class Batch:
    """A bulk run of many requests through one client; ``client.batch(requests, ...)`` makes one.

    Iterate it for a `BatchOutcome` per request, in the order they finish::

        async for outcome in client.batch(requests, journal="run.db"):
            ...

    or iterate ``batch.events()`` for every `BatchEvent` (progress and
    outcomes). The run starts with the loop (or ``async with``) and runs in
    the client's task group; leaving the loop early does not stop it by
    itself. To stop early, use ``async with batch:`` around the loop, or call
    `aclose`: no new request is sent, a request being sent has its task id
    recorded, and the journal is closed. A batch runs once.

    `AsyncBanana2.batch` is the way to make one; it documents the options.
    ``Batch(client, requests, ...)`` takes the same, its ``client`` being all
    the run uses of its client (a ``BatchClient``, see `_batch_run`), which
    ``client.batch`` passes.
    """

    __slots__ = (
        "_client",
        "_closed",
        "_concurrency",
        "_dest_dir",
        "_exhausted",
        "_iterating",
        "_journal_path",
        "_keys",
        "_max_credits",
        "_on_event",
        "_requests",
        "_resubmit_uncertain",
        "_retry_failed",
        "_run",
        "_started",
        "_wait_timeout",
        "plan",
    )

    def __init__(
        self,
        client: BatchClient,
        requests: Iterable[GenerationRequest | str],
        *,
        concurrency: int = DEFAULT_BATCH_CONCURRENCY,
        journal: str | os.PathLike[str] | None = None,
        max_credits: int | None = None,
        resubmit_uncertain: bool = False,
        dest_dir: str | os.PathLike[str] | None = None,
        on_event: Callable[[BatchEvent], object] | None = None,
        wait_timeout: float | NotGiven | None = NOT_GIVEN,
        keys: Sequence[str | None] | None = None,
        retry_failed: bool = False,
    ) -> None:
        check_positive_int(concurrency, "concurrency")
        if max_credits is not None:
            check_non_negative_int(max_credits, "max_credits")
        self._client = _seam_of(client)
        self._requests = as_requests(requests)
        self._keys = job_keys(self._requests, keys)
        self._retry_failed = retry_failed
        self._concurrency = concurrency
        self._journal_path = None if journal is None else Path(journal)
        self._max_credits = max_credits
        self._resubmit_uncertain = resubmit_uncertain
        self._dest_dir = None if dest_dir is None else Path(dest_dir)
        self._on_event = on_event
        self._wait_timeout = wait_timeout
        self.plan: BatchPlan | None = None
        """What the run does; set once it has started."""
        self._run: BatchRun | None = None
        self._started = False
        self._closed = False
        self._iterating = False
        self._exhausted = False

    def __repr__(self) -> str:
        if not self._started:
            state = "new"
        elif self._run is not None and not self._run.finished.is_set():
            state = "running"
        else:
            state = "closed" if self._closed else "done"
        return f"<Batch of {len(self._requests)} requests, {state}>"

    @property
    def requests(self) -> tuple[GenerationRequest, ...]:
        """The job's requests, in order."""
        return self._requests

    async def dry_run(self) -> BatchPlan:
        """What the run would do and cost, from the journal if there is one; sends nothing, writes nothing.

        Does not check ``max_credits``: compare ``plan.credits`` yourself, or
        let the run refuse to start.

        Raises:
            JournalError: the journal is not one of this job, is corrupt, or is in use.
        """
        rows = None
        if self._journal_path is not None:
            rows = await read_journal(self._journal_path, self._requests, self._keys)
        return self._plan(rows)

    def _plan(self, rows: Sequence[JournalRow] | None) -> BatchPlan:
        return plan_batch(
            self._requests, rows, resubmit_uncertain=self._resubmit_uncertain, retry_failed=self._retry_failed
        )

    # -- starting -------------------------------------------------------------------------------

    async def _start(self) -> None:
        if self._closed:
            raise RuntimeError("this Batch is closed")
        if self._started:
            return
        self._started = True
        try:
            await self._launch()
        except BaseException:
            # A run refused at the start (budget, journal, closed client) is over: it cannot start again.
            self._closed = True
            raise

    async def _launch(self) -> None:
        client = self._client
        # A client that is not open refuses the run before its journal is read or created.
        client.require_open()
        # Refused before a journal file is created for a run that will not happen.
        check_budget(await self.dry_run(), self._max_credits)
        journal, rows = Journal.memory(), None
        if self._journal_path is not None:
            journal, rows = await Journal.open(self._journal_path, self._requests, self._keys)
        run = BatchRun(
            client,
            journal,
            self._requests,
            concurrency=self._concurrency,
            wait_timeout=self._wait_timeout,
            dest_dir=self._dest_dir,
        )
        try:
            # The journal is held now: this plan is the one the run follows.
            self.plan = check_budget(self._plan(rows), self._max_credits)
            rows_to_work = planned_rows(
                self._requests, rows, resubmit_uncertain=self._resubmit_uncertain, retry_failed=self._retry_failed
            )
            client.start_soon(run.run, rows_to_work)
        except BaseException:
            await journal.aclose()
            raise
        self._run = run

    # -- iterating ------------------------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[BatchOutcome]:
        return self._iterator(_outcome_of)

    def events(self) -> AsyncIterator[BatchEvent]:
        """Every event of the run: progress (submitted, tracked, polled) and outcomes (succeeded, failed)."""
        return self._iterator(_itself)

    def _iterator(self, pick: Callable[[BatchEvent], T | None]) -> _Drain[T]:
        if self._iterating:
            raise RuntimeError("a Batch is iterated once")
        self._iterating = True
        return _Drain(self, pick)

    async def _next(self, pick: Callable[[BatchEvent], T | None]) -> T:
        """The next event ``pick`` keeps; starts the run on first use."""
        if self._exhausted:
            raise StopAsyncIteration
        await self._start()
        run = self._run
        assert run is not None
        # Once the run is closed, the events already queued are the last.
        while run.events or not self._closed:
            try:
                event = await run.events.get()
            except EndOfQueue:
                break
            if self._on_event is not None:
                try:
                    self._on_event(event)
                except BaseException:
                    await self.aclose()
                    raise
            picked = pick(event)
            if picked is not None:
                return picked
        self._exhausted = True
        await self.aclose()
        fatal, run.fatal = run.fatal, None
        if fatal is not None:
            raise fatal
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Stop the run: send nothing new, record what is being sent, stop waiting.

        Safe to call more than once; ``async with`` calls it on the way out.
        """
        self._closed = True
        if self._run is not None:
            await self._run.stop()

    async def __aenter__(self) -> Batch:
        await self._start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()


class _Drain(Generic[T]):
    """An iterator over a batch's events, keeping those ``pick`` maps to something."""

    __slots__ = ("_batch", "_pick")

    def __init__(self, batch: Batch, pick: Callable[[BatchEvent], T | None]) -> None:
        self._batch = batch
        self._pick = pick

    def __aiter__(self) -> _Drain[T]:
        return self

    async def __anext__(self) -> T:
        return await self._batch._next(self._pick)
