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
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Final, Generic, Literal, TypeVar

import anyio
import anyio.lowlevel

from ._exceptions import (
    APIConnectionError,
    AuthenticationError,
    BadRequestError,
    Banana2Error,
    BudgetExceededError,
    ClientClosedError,
    DownloadError,
    EmptyResultError,
    FailureKind,
    InsufficientCreditsError,
    InvalidRequestError,
    NotFoundError,
    SubmissionUncertainError,
    TaskError,
    TaskFailedError,
)
from ._handle import TaskHandle
from ._journal import Journal, JournalRow, job_keys, read_journal, split_error
from ._models import GenerationRequest, GenerationResult
from ._types import DEFAULT_BATCH_CONCURRENCY, NOT_GIVEN, NotGiven

if TYPE_CHECKING:
    from ._client import AsyncBanana2

__all__ = [
    "DEFAULT_CONCURRENCY",
    "UNREACHABLE_AFTER",
    "Batch",
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

logger = logging.getLogger("banana2_async")

T = TypeVar("T")

DEFAULT_CONCURRENCY: Final = DEFAULT_BATCH_CONCURRENCY

OutcomeStatus = Literal["succeeded", "failed", "uncertain", "unsubmitted"]
EventKind = Literal["submitted", "tracked", "polled", "succeeded", "failed"]
_Kind = Literal["submit", "track", "uncertain", "succeeded", "failed"]

# A server's message can be of any length; the journal keeps enough of it to say what happened.
_MAX_REASON: Final = 2000
_HTTP_SCHEMES: Final = ("http://", "https://")
# Submits in a row that could not be sent at all before a run stops sending.
UNREACHABLE_AFTER: Final = 3
_NEVER_SENT: Final = frozenset(
    {FailureKind.CONNECT, FailureKind.CONNECT_TIMEOUT, FailureKind.POOL_TIMEOUT, FailureKind.NOT_SENT_IN_TIME}
)
# What a task that failed on the server leaves in the journal; `retry_failed` sends such rows again.
_FAILED_ON_THE_SERVER: Final = frozenset({TaskFailedError.__name__, EmptyResultError.__name__})


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """How one request of a bulk run ended.

    ``status`` is ``"succeeded"`` (``result`` set, ``files`` written when the
    run downloads), ``"failed"`` (``error`` says why; ``result`` is set when
    only the download failed), ``"uncertain"`` (the ``POST`` may have been
    paid for without an answer: `SubmissionUncertainError`) or
    ``"unsubmitted"`` (not sent, or refused unpaid: the run stopped on a 402,
    a refused key, or a server it could not reach). ``index`` is the
    request's position in the job.
    """

    index: int
    request: GenerationRequest
    status: OutcomeStatus
    task_id: str | None = None
    result: GenerationResult | None = None
    error: Exception | None = None
    files: tuple[Path, ...] = ()

    @property
    def ok(self) -> bool:
        """Whether the request succeeded."""
        return self.status == "succeeded"


@dataclass(frozen=True, slots=True)
class BatchEvent:
    """Progress of a bulk run, for a UI.

    ``kind`` is ``"submitted"`` (a task id came back), ``"tracked"`` (a task
    of an earlier run is watched again), ``"polled"`` (the server answered a
    poll of the task), ``"succeeded"`` or ``"failed"`` (the request's
    ``outcome`` is final; uncertain and unsubmitted requests count as failed).
    """

    kind: EventKind
    index: int
    request: GenerationRequest
    task_id: str | None = None
    outcome: BatchOutcome | None = None


@dataclass(frozen=True, slots=True)
class BatchPlan:
    """What a run will do, known before it starts.

    ``submit`` requests will be sent for ``credits`` credits; ``track`` tasks
    of an earlier run are watched again (already paid for); ``uncertain``
    rows are reported and not sent; ``succeeded`` and ``failed`` rows
    finished in an earlier run and are skipped. ``job_credits`` is what every
    request of the job costs together. ``retry`` rows failed on the server in
    an earlier run and are sent again (``retry_failed=True``; counted in
    ``submit`` and ``credits``); without it, ``retryable`` of the ``failed``
    rows would be. ``retry_credits`` is what those rows cost.
    """

    total: int
    submit: int
    track: int
    uncertain: int
    succeeded: int
    failed: int
    credits: int
    job_credits: int
    retry: int = 0
    retryable: int = 0
    retry_credits: int = 0


@dataclass(frozen=True, slots=True)
class _Item:
    kind: _Kind
    index: int
    request: GenerationRequest
    task_id: str | None = None
    error: str | None = None


def as_requests(requests: Iterable[GenerationRequest | str]) -> tuple[GenerationRequest, ...]:
    """Requests given as `GenerationRequest` objects or bare prompts, validated.

    Raises:
        InvalidRequestError: an item is neither, or a prompt is invalid; the message names its index.
    """
    prepared: list[GenerationRequest] = []
    for index, item in enumerate(requests):
        if isinstance(item, GenerationRequest):
            prepared.append(item)
            continue
        if not isinstance(item, str):
            raise InvalidRequestError(
                f"requests[{index}] must be a GenerationRequest or a prompt string, not {type(item).__name__}",
                field="requests",
            )
        try:
            prepared.append(GenerationRequest(prompt=item))
        except InvalidRequestError as exc:
            raise InvalidRequestError(f"requests[{index}]: {exc.message}", field=exc.field) from None
    return tuple(prepared)


def failed_on_the_server(row: JournalRow) -> bool:
    """Whether a row ended with its task failed on the server (or a success without images): a retry pays again."""
    return row.state == "failed" and row.task_id is not None and split_error(row.error)[0] in _FAILED_ON_THE_SERVER


def row_kind(row: JournalRow | None, *, resubmit_uncertain: bool = False, retry_failed: bool = False) -> str:
    """What a run does with a row of its journal (``None``: new): ``"submit"``, ``"track"`` (its task),
    ``"uncertain"`` (reported, not sent), or ``"succeeded"`` / ``"failed"`` (finished earlier, skipped)."""
    return _kind_of(row, resubmit_uncertain, retry_failed)


def _kind_of(row: JournalRow | None, resubmit_uncertain: bool, retry_failed: bool) -> _Kind:
    if row is None or row.state == "pending":
        return "submit"
    if row.state == "submitting":
        return "submit" if resubmit_uncertain else "uncertain"
    if row.state == "submitted":
        return "track" if row.task_id else "uncertain"
    if row.state == "failed" and retry_failed and failed_on_the_server(row):
        return "submit"
    return "succeeded" if row.state == "succeeded" else "failed"


def _items(
    requests: Sequence[GenerationRequest],
    rows: Sequence[JournalRow] | None,
    resubmit_uncertain: bool,
    retry_failed: bool,
) -> list[_Item]:
    """Every request with what this run does with it: uncertain reports first, then tracks, then submits."""
    items = [
        _Item(
            _kind_of(rows[index] if rows else None, resubmit_uncertain, retry_failed),
            index,
            request,
            rows[index].task_id if rows else None,
            rows[index].error if rows else None,
        )
        for index, request in enumerate(requests)
    ]
    order = {"uncertain": 0, "track": 1, "submit": 2}
    return sorted((item for item in items if item.kind in order), key=lambda item: order[item.kind])


def plan_batch(
    requests: Sequence[GenerationRequest],
    rows: Sequence[JournalRow] | None = None,
    *,
    resubmit_uncertain: bool = False,
    retry_failed: bool = False,
) -> BatchPlan:
    """What a run of ``requests`` will do, given the rows of its journal (``None``: a fresh job)."""
    counts = dict.fromkeys(("submit", "track", "uncertain", "succeeded", "failed"), 0)
    credits = retry = retryable = retry_credits = 0
    for index, request in enumerate(requests):
        row = rows[index] if rows else None
        kind = _kind_of(row, resubmit_uncertain, retry_failed)
        counts[kind] += 1
        if kind == "submit":
            credits += request.credits
        if row is not None and failed_on_the_server(row):
            retry_credits += request.credits
            if kind == "submit":
                retry += 1
            else:
                retryable += 1
    return BatchPlan(
        total=len(requests),
        submit=counts["submit"],
        track=counts["track"],
        uncertain=counts["uncertain"],
        succeeded=counts["succeeded"],
        failed=counts["failed"],
        credits=credits,
        job_credits=sum(request.credits for request in requests),
        retry=retry,
        retryable=retryable,
        retry_credits=retry_credits,
    )


def _describe(exc: BaseException) -> str:
    """An error as the journal and the log keep it: its class and message, cut to a readable length."""
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 1] + "…"


def _usable_images(result: GenerationResult) -> list[str]:
    return [url for url in result.images if isinstance(url, str) and url[:8].lower().startswith(_HTTP_SCHEMES)]


def _download_error(task_id: str, exc: Exception) -> DownloadError:
    error = DownloadError(f"the images of task {task_id} could not be saved: {_describe(exc)}", url="", task_id=task_id)
    error.__cause__ = exc
    return error


def _outcome_of(event: BatchEvent) -> BatchOutcome | None:
    return event.outcome


def _itself(event: BatchEvent) -> BatchEvent:
    return event


class Batch:
    """A bulk run of many requests through one client; made by `AsyncBanana2.batch`.

    Iterate it for a `BatchOutcome` per request, in the order they finish::

        async for outcome in client.batch(requests, journal="run.db"):
            ...

    or iterate ``batch.events()`` for every `BatchEvent` (progress and
    outcomes). The run starts with the loop (or ``async with``) and runs in
    the client's task group; leaving the loop early does not stop it by
    itself. To stop early, use ``async with batch:`` around the loop, or call
    `aclose`: no new request is sent, a request being sent has its task id
    recorded, and the journal is closed. A batch runs once.

    ``Batch(client, requests, ...)`` takes the options of `AsyncBanana2.batch`
    and two more: ``keys``, an id (or ``None``) per request that the journal
    knows the row by, so that a row whose request changes is known as the
    same row (by default a row is known by its request); and
    ``retry_failed``, to send again (and pay again for) the rows of an
    earlier run whose task failed on the server or succeeded without images.
    """

    __slots__ = (
        "_client",
        "_closed",
        "_concurrency",
        "_dest_dir",
        "_exhausted",
        "_fatal",
        "_finished",
        "_halted",
        "_in_flight",
        "_iterating",
        "_journal",
        "_journal_path",
        "_keys",
        "_max_credits",
        "_on_event",
        "_pending",
        "_requests",
        "_resubmit_uncertain",
        "_retry_failed",
        "_scope",
        "_sending",
        "_started",
        "_unreachable",
        "_wait_timeout",
        "_wakeup",
        "plan",
    )

    def __init__(
        self,
        client: AsyncBanana2,
        requests: Iterable[GenerationRequest | str],
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        journal: str | os.PathLike[str] | None = None,
        max_credits: int | None = None,
        resubmit_uncertain: bool = False,
        dest_dir: str | os.PathLike[str] | None = None,
        on_event: Callable[[BatchEvent], object] | None = None,
        wait_timeout: float | NotGiven | None = NOT_GIVEN,
        keys: Sequence[str | None] | None = None,
        retry_failed: bool = False,
    ) -> None:
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise InvalidRequestError(
                f"concurrency must be a positive integer, got {concurrency!r}", field="concurrency"
            )
        if max_credits is not None and (
            isinstance(max_credits, bool) or not isinstance(max_credits, int) or max_credits < 0
        ):
            raise InvalidRequestError(
                f"max_credits must be a non-negative integer or None, got {max_credits!r}", field="max_credits"
            )
        self._client = client
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
        self._journal = Journal.memory()
        self._in_flight: dict[str, int] = {}
        self._sending: dict[int, anyio.CancelScope] = {}
        self._halted: Exception | None = None
        self._unreachable = 0
        self._fatal: Exception | None = None
        self._started = False
        self._closed = False
        self._iterating = False
        self._exhausted = False
        self._finished: anyio.Event | None = None
        self._scope: anyio.CancelScope | None = None
        # Events wait here for the consumer; a plain queue, so an abandoned run leaves no stream to close.
        self._pending: deque[BatchEvent] = deque()
        self._wakeup: anyio.Event | None = None

    def __repr__(self) -> str:
        if not self._started:
            state = "new"
        elif self._finished is not None and not self._finished.is_set():
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

    def _checked(self, plan: BatchPlan) -> BatchPlan:
        if self._max_credits is not None and plan.credits > self._max_credits:
            raise BudgetExceededError(
                f"this run would cost {plan.credits} credits for {plan.submit} task(s), more than "
                f"max_credits={self._max_credits}; nothing was sent",
                credits=plan.credits,
                max_credits=self._max_credits,
            )
        return plan

    # -- running --------------------------------------------------------------------------------

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
        self._client._require_open()
        task_group = self._client._task_group
        assert task_group is not None
        # Refused before a journal file is created for a run that will not happen.
        self._checked(await self.dry_run())
        rows: list[JournalRow] | None = None
        if self._journal_path is not None:
            self._journal, rows = await Journal.open(self._journal_path, self._requests, self._keys)
        try:
            # The journal is held now: this plan is the one the run follows.
            self.plan = self._checked(self._plan(rows))
        except BudgetExceededError:
            await self._journal.aclose()
            raise
        self._finished = anyio.Event()
        self._scope = anyio.CancelScope()
        self._client.poller.add_poll_listener(self._on_polled)
        items = _items(self._requests, rows, self._resubmit_uncertain, self._retry_failed)
        task_group.start_soon(self._run, items)

    async def _run(self, items: list[_Item]) -> None:
        scope, finished = self._scope, self._finished
        assert scope is not None
        assert finished is not None
        try:
            with scope:
                async with anyio.create_task_group() as workers:
                    slots = anyio.Semaphore(self._concurrency)
                    for item in items:
                        if item.kind == "uncertain":
                            self._report_uncertain(item)
                            continue
                        # Tasks of an earlier run are paid for: they are watched whatever stopped new submits.
                        if self._halted is None or item.kind == "track":
                            await slots.acquire()
                            if self._halted is None or item.kind == "track":
                                workers.start_soon(self._work, item, slots)
                                continue
                            slots.release()
                        self._finish(self._unsubmitted(item))
        except Exception as exc:
            logger.exception("a bulk run failed")
            self._fatal = exc
        finally:
            with anyio.CancelScope(shield=True):
                self._client.poller.remove_poll_listener(self._on_polled)
                await self._journal.aclose()
            finished.set()
            self._wake()

    async def _work(self, item: _Item, slots: anyio.Semaphore) -> None:
        try:
            outcome = await (self._track(item) if item.kind == "track" else self._submit(item))
            self._finish(outcome)
        except Exception as exc:
            # Whatever one request's answers hold ends that request only (see `_submit` and `_settle`);
            # what gets here is a journal that cannot be written, and going on would spend blind.
            self._fatal = exc
            assert self._scope is not None
            self._scope.cancel()
        finally:
            slots.release()

    def _halt(self, exc: Exception) -> None:
        if self._halted is None:
            logger.warning("bulk run: %s; no new requests are sent, tasks in flight finish", _describe(exc))
            self._halted = exc
            # Submits still waiting to be sent (for a slot, the rate gate, a retry) are not sent now.
            for waiting in self._sending.values():
                waiting.cancel()

    async def _submit(self, item: _Item) -> BatchOutcome:
        index, request = item.index, item.request
        if self._halted is not None:
            return self._unsubmitted(item)
        # Cancellation is honoured here, before the row says a POST is under way.
        await anyio.lowlevel.checkpoint()
        try:
            self._client._require_open()
        except RuntimeError as exc:
            # The client was closed under the run: nothing more can be sent.
            self._halt(exc)
            return self._unsubmitted(item)
        with anyio.CancelScope(shield=True):
            await self._journal.mark_submitting(index)
        handle: TaskHandle | None = None
        # Cancelled when the run stops sending (`_halt`), as a closed run cancels the whole submit.
        sending = self._sending[index] = anyio.CancelScope()
        try:
            # Not shielded: a run that is closed abandons a submit still waiting for the rate gate,
            # a slot or a 429/503 retry. The wire awaits the answer of a request it has sent whatever
            # happens to its caller, so a task id the server charged for always comes back here.
            with sending:
                handle = await self._client.submit_request(request, wait_timeout=self._wait_timeout)
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                await self._abandoned(index)
            raise
        except Exception as exc:
            with anyio.CancelScope(shield=True):
                return await self._submit_failed(item, exc)
        finally:
            del self._sending[index]
        if handle is None:
            return await self._stopped_sending(item)
        with anyio.CancelScope(shield=True):
            self._unreachable = 0
            self._in_flight[handle.task_id] = index
            # Before the journal write, so no poll of the task is reported ahead of its submit.
            self._emit(BatchEvent("submitted", index, request, handle.task_id))
            await self._journal.mark_submitted(index, handle.task_id)
        return await self._settle(item, handle)

    async def _stopped_sending(self, item: _Item) -> BatchOutcome:
        """The outcome of a submit given up because the run stopped sending, before its request went out."""
        with anyio.CancelScope(shield=True):
            await self._abandoned(item.index)
        if self._client._retry_uncertain_submits:
            error = SubmissionUncertainError(
                "the run stopped sending while this request waited to be sent again; an earlier attempt may have "
                "landed and been paid for, so it is not sent again unless resubmit_uncertain=True",
                request=item.request,
            )
            return BatchOutcome(item.index, item.request, "uncertain", error=error)
        return self._unsubmitted(item)

    async def _abandoned(self, index: int) -> None:
        """Record a submit the run gave up on before its request was sent (again)."""
        # Between attempts the wire holds no answer in flight. Only a client that retries a submit
        # which may have landed can have been paid for one: that row stays uncertain.
        if self._client._retry_uncertain_submits:
            await self._journal.mark_uncertain(
                index,
                "the run was closed while this request waited to be sent again; an earlier attempt may have landed",
            )
        else:
            await self._journal.mark_unsent(index, "the run was closed before this request was sent")

    async def _submit_failed(self, item: _Item, exc: Exception) -> BatchOutcome:
        index, request = item.index, item.request
        if isinstance(exc, APIConnectionError) and exc.kind in _NEVER_SENT:
            await self._journal.mark_unsent(index, _describe(exc))
            self._unreachable += 1
            if self._unreachable >= UNREACHABLE_AFTER:
                self._halt(self._unreachable_error(exc))
            return BatchOutcome(index, request, "unsubmitted", error=exc)
        self._unreachable = 0
        if isinstance(exc, SubmissionUncertainError):
            await self._journal.mark_uncertain(index, _describe(exc))
            return BatchOutcome(index, request, "uncertain", error=exc)
        if isinstance(exc, BadRequestError):
            # The server rejects the request itself: sending it again would fail the same way.
            await self._journal.mark_failed(index, _describe(exc), final=True)
            return BatchOutcome(index, request, "failed", error=exc)
        if isinstance(exc, (InsufficientCreditsError, AuthenticationError)):
            # Refused before any task was made: not paid for, and sent by the next run.
            self._halt(exc)
            await self._journal.mark_unsent(index, _describe(exc))
            return BatchOutcome(index, request, "unsubmitted", error=exc)
        if isinstance(exc, RuntimeError) and self._client._closed:
            # The client was closed under the run before this request went out.
            self._halt(exc)
            await self._journal.mark_unsent(index, _describe(exc))
            return self._unsubmitted(item)
        if isinstance(exc, Banana2Error):
            # Any other error of a submit means it was refused or never sent: not paid for.
            await self._journal.mark_unsent(index, _describe(exc))
            return BatchOutcome(index, request, "failed", error=exc)
        # Not an error of the SDK's own: nothing says the request was not sent, or not paid for.
        logger.warning(
            "bulk run: request %d failed unexpectedly (%s); it may have been paid for", index, _describe(exc)
        )
        uncertain = SubmissionUncertainError(
            f"POST /api/generate failed unexpectedly ({_describe(exc)}); it may have reached the server and "
            "been paid for, so it is not sent again",
            request=request,
        )
        uncertain.__cause__ = exc
        await self._journal.mark_uncertain(index, _describe(uncertain))
        return BatchOutcome(index, request, "uncertain", error=uncertain)

    def _unreachable_error(self, last: APIConnectionError) -> APIConnectionError:
        error = APIConnectionError(
            f"could not reach {self._client.base_url}: {self._unreachable} submits in a row were never sent "
            f"({last.kind}); no more are sent in this run",
            kind=last.kind,
            method=last.method,
            path=last.path,
        )
        error.__cause__ = last
        return error

    async def _track(self, item: _Item) -> BatchOutcome:
        assert item.task_id is not None
        try:
            handle = self._client.track(item.task_id, wait_timeout=self._wait_timeout)
        except Exception as exc:
            # A task id this client cannot poll (or a closed client): that row fails, the others go on.
            return await self._task_failed(item, item.task_id, exc)
        self._in_flight[item.task_id] = item.index
        self._emit(BatchEvent("tracked", item.index, item.request, item.task_id))
        return await self._settle(item, handle)

    async def _settle(self, item: _Item, handle: TaskHandle) -> BatchOutcome:
        index, request, task_id = item.index, item.request, handle.task_id
        try:
            result = await handle
        except Exception as exc:
            return await self._task_failed(item, task_id, exc)
        finally:
            self._in_flight.pop(task_id, None)
        if not _usable_images(result):
            # A success without an image to show for it is not a success, paid for or not.
            empty = EmptyResultError(
                f"task {task_id} reported success but gave no usable image URL",
                task_id=task_id,
                consumed_credits=result.consumed_credits,
            )
            return await self._task_failed(item, task_id, empty)
        consumed = result.consumed_credits
        files: tuple[Path, ...] = ()
        if self._dest_dir is not None:
            try:
                files = tuple(await self._client.download(result, self._dest_dir))
            except Exception as exc:
                error = exc if isinstance(exc, Banana2Error) else _download_error(task_id, exc)
                await self._journal.mark_failed(
                    index, _describe(error), final=False, images=result.images, consumed=consumed
                )
                return BatchOutcome(index, request, "failed", task_id=task_id, result=result, error=error)
            if not files:
                error = DownloadError(f"no image of task {task_id} was written", url="", task_id=task_id)
                await self._journal.mark_failed(
                    index, _describe(error), final=False, images=result.images, consumed=consumed
                )
                return BatchOutcome(index, request, "failed", task_id=task_id, result=result, error=error)
        await self._journal.mark_succeeded(index, result.images, [str(path) for path in files], consumed=consumed)
        return BatchOutcome(index, request, "succeeded", task_id=task_id, result=result, files=files)

    async def _task_failed(self, item: _Item, task_id: str, exc: Exception) -> BatchOutcome:
        """Record the end of a task that did not succeed, and whether a later run tracks it again."""
        error: Banana2Error
        if isinstance(exc, (TaskFailedError, NotFoundError, InvalidRequestError)):
            # The server says the task failed or does not know it, or its id cannot be polled:
            # tracking it again changes nothing.
            error, final = exc, True
        elif isinstance(exc, Banana2Error):
            # Our deadline, a closed client, a refused key: the task may still finish; a later run tracks it.
            if isinstance(exc, AuthenticationError):
                self._halt(exc)
            error, final = exc, False
        elif isinstance(exc, RuntimeError) and self._client._closed:
            error, final = ClientClosedError(task_id), False
        else:
            logger.warning("bulk run: task %s could not be watched (%s)", task_id, _describe(exc))
            error, final = TaskError(f"task {task_id} could not be watched: {_describe(exc)}", task_id=task_id), False
            error.__cause__ = exc
        consumed = error.consumed_credits if isinstance(error, EmptyResultError) else None
        await self._journal.mark_failed(item.index, _describe(error), final=final, consumed=consumed)
        return BatchOutcome(item.index, item.request, "failed", task_id=task_id, error=error)

    def _unsubmitted(self, item: _Item) -> BatchOutcome:
        return BatchOutcome(item.index, item.request, "unsubmitted", error=self._halted)

    def _report_uncertain(self, item: _Item) -> None:
        error = SubmissionUncertainError(
            "an earlier run sent this request without recording an answer "
            f"({item.error or 'the run stopped while sending it'}); it may have been paid for, "
            "so it is not sent again unless resubmit_uncertain=True",
            request=item.request,
        )
        self._finish(BatchOutcome(item.index, item.request, "uncertain", error=error))

    def _finish(self, outcome: BatchOutcome) -> None:
        kind: EventKind = "succeeded" if outcome.ok else "failed"
        self._emit(BatchEvent(kind, outcome.index, outcome.request, outcome.task_id, outcome))

    def _emit(self, event: BatchEvent) -> None:
        # After aclose no one reads: the event has no one to reach.
        if not self._closed:
            self._pending.append(event)
            self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    def _on_polled(self, task_id: str) -> None:
        index = self._in_flight.get(task_id)
        if index is not None:
            self._emit(BatchEvent("polled", index, self._requests[index], task_id))

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
        finished = self._finished
        assert finished is not None
        while True:
            while not self._pending:
                if finished.is_set() or self._closed:
                    self._exhausted = True
                    await self.aclose()
                    fatal, self._fatal = self._fatal, None
                    if fatal is not None:
                        raise fatal
                    raise StopAsyncIteration
                self._wakeup = anyio.Event()
                await self._wakeup.wait()
            event = self._pending.popleft()
            if self._on_event is not None:
                try:
                    self._on_event(event)
                except BaseException:
                    await self.aclose()
                    raise
            picked = pick(event)
            if picked is not None:
                return picked

    async def aclose(self) -> None:
        """Stop the run: send nothing new, record what is being sent, stop waiting.

        Safe to call more than once; ``async with`` calls it on the way out.
        """
        self._closed = True
        if self._scope is not None:
            self._scope.cancel()
        if self._finished is not None:
            with anyio.CancelScope(shield=True):
                await self._finished.wait()
        self._pending.clear()

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
