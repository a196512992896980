"""How each row of a bulk run ends, and what its errors mean. Pure: no I/O.

A row that did not succeed ends as an `Ending`: its `BatchOutcome`, how its
journal row records it, and the error that stops the run sending, if any.
`submit_failure` and `task_failure` decide that from the error a submit or a
task ended with; the run (`_batch_run`) writes the journal and halts.

Whatever a request's answers hold ends that request only. An error that is
not the SDK's own says nothing about what reached the server: a submit that
ends with one may have been paid for, and is reported as uncertain.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal, TypeGuard

from ._exceptions import (
    APIConnectionError,
    AuthenticationError,
    BadRequestError,
    Banana2Error,
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
from ._models import GenerationRequest, GenerationResult

if TYPE_CHECKING:
    import httpx

__all__ = [
    "BatchEvent",
    "BatchOutcome",
    "Ending",
    "EventKind",
    "OutcomeStatus",
    "Record",
    "describe",
    "download_failure",
    "empty_result",
    "never_sent",
    "stopped_while_retrying",
    "submit_failure",
    "task_failure",
    "uncertain_from_earlier_run",
    "unreachable_error",
    "usable_images",
]

logger = logging.getLogger("banana2_async")

OutcomeStatus = Literal["succeeded", "failed", "uncertain", "unsubmitted"]
EventKind = Literal["submitted", "tracked", "polled", "succeeded", "failed"]
Record = Literal["unsent", "uncertain", "failed", "unsettled"]
"""How the journal records a row that did not succeed: certainly not paid for (sent by the next run), maybe
paid for (reported by the next run), failed for good, or with a task a later run tracks again."""

# A server's message can be of any length; the journal keeps enough of it to say what happened.
_MAX_REASON: Final = 2000
_HTTP_SCHEMES: Final = ("http://", "https://")
_NEVER_SENT: Final = frozenset(
    {FailureKind.CONNECT, FailureKind.CONNECT_TIMEOUT, FailureKind.POOL_TIMEOUT, FailureKind.NOT_SENT_IN_TIME}
)


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
class Ending:
    """How a row ends that did not succeed: its outcome, what its journal row records, what stops the run."""

    outcome: BatchOutcome
    record: Record
    reason: str
    """The error as the journal keeps it (`describe`)."""
    halt: Exception | None = None
    """Why the run sends nothing more from now on, when this ending says so."""
    images: tuple[str, ...] = ()
    consumed: int | None = None


def describe(exc: BaseException) -> str:
    """An error as the journal and the log keep it: its class and message, cut to a readable length."""
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 1] + "…"


def usable_images(result: GenerationResult) -> list[str]:
    """The result's image URLs that can be downloaded (http or https)."""
    return [url for url in result.images if isinstance(url, str) and url[:8].lower().startswith(_HTTP_SCHEMES)]


def never_sent(exc: Exception) -> TypeGuard[APIConnectionError]:
    """Whether a submit's error says its request never left: no connection, or no slot in time."""
    return isinstance(exc, APIConnectionError) and exc.kind in _NEVER_SENT


def _ending(outcome: BatchOutcome, record: Record, halt: Exception | None = None) -> Ending:
    assert outcome.error is not None
    return Ending(outcome, record, describe(outcome.error), halt)


def submit_failure(
    index: int, request: GenerationRequest, exc: Exception, *, closed: bool, halted: Exception | None
) -> Ending:
    """How a row ends whose submit raised ``exc`` (one that was sent, or may have been; see `never_sent`).

    ``closed`` says whether the client is closed; ``halted`` is why the run stopped sending, if it has.
    """
    if isinstance(exc, SubmissionUncertainError):
        return _ending(BatchOutcome(index, request, "uncertain", error=exc), "uncertain")
    if isinstance(exc, BadRequestError):
        # The server rejects the request itself: sending it again would fail the same way.
        return _ending(BatchOutcome(index, request, "failed", error=exc), "failed")
    if isinstance(exc, (InsufficientCreditsError, AuthenticationError)):
        # Refused before any task was made: not paid for, and sent by the next run.
        return _ending(BatchOutcome(index, request, "unsubmitted", error=exc), "unsent", halt=exc)
    if isinstance(exc, RuntimeError) and closed:
        # The client was closed under the run before this request went out.
        outcome = BatchOutcome(index, request, "unsubmitted", error=halted or exc)
        return Ending(outcome, "unsent", describe(exc), halt=exc)
    if isinstance(exc, Banana2Error):
        # Any other error of a submit means it was refused or never sent: not paid for.
        return _ending(BatchOutcome(index, request, "failed", error=exc), "unsent")
    logger.warning("bulk run: request %d failed unexpectedly (%s); it may have been paid for", index, describe(exc))
    uncertain = SubmissionUncertainError(
        f"POST /api/generate failed unexpectedly ({describe(exc)}); it may have reached the server and "
        "been paid for, so it is not sent again",
        request=request,
    )
    uncertain.__cause__ = exc
    return _ending(BatchOutcome(index, request, "uncertain", error=uncertain), "uncertain")


def task_failure(index: int, request: GenerationRequest, task_id: str, exc: Exception, *, closed: bool) -> Ending:
    """How a row ends whose task ``task_id`` did not succeed, and whether a later run tracks the task again.

    ``closed`` says whether the client is closed.
    """
    error: Banana2Error
    record: Record
    halt: Exception | None = None
    if isinstance(exc, (TaskFailedError, NotFoundError, InvalidRequestError)):
        # The server says the task failed or does not know it, or its id cannot be polled:
        # tracking it again changes nothing.
        error, record = exc, "failed"
    elif isinstance(exc, Banana2Error):
        # Our deadline, a closed client, a refused key: the task may still finish; a later run tracks it.
        error, record = exc, "unsettled"
        if isinstance(exc, AuthenticationError):
            halt = exc
    elif isinstance(exc, RuntimeError) and closed:
        error, record = ClientClosedError(task_id), "unsettled"
    else:
        logger.warning("bulk run: task %s could not be watched (%s)", task_id, describe(exc))
        error = TaskError(f"task {task_id} could not be watched: {describe(exc)}", task_id=task_id)
        error.__cause__ = exc
        record = "unsettled"
    consumed = error.consumed_credits if isinstance(error, EmptyResultError) else None
    outcome = BatchOutcome(index, request, "failed", task_id=task_id, error=error)
    return Ending(outcome, record, describe(error), halt=halt, consumed=consumed)


def empty_result(task_id: str, result: GenerationResult) -> EmptyResultError:
    """The error of a task that succeeded without an image to show for it (see `usable_images`)."""
    return EmptyResultError(
        f"task {task_id} reported success but gave no usable image URL",
        task_id=task_id,
        consumed_credits=result.consumed_credits,
    )


def download_failure(
    index: int, request: GenerationRequest, task_id: str, result: GenerationResult, exc: Exception | None
) -> Ending:
    """How a row ends whose images could not be saved (``exc``), or none was written (``None``).

    The task was paid for and has its result: a later run tracks it again and downloads anew.
    """
    error: Exception
    if exc is None:
        error = DownloadError(f"no image of task {task_id} was written", url="", task_id=task_id)
    elif isinstance(exc, Banana2Error):
        error = exc
    else:
        error = DownloadError(
            f"the images of task {task_id} could not be saved: {describe(exc)}", url="", task_id=task_id
        )
        error.__cause__ = exc
    outcome = BatchOutcome(index, request, "failed", task_id=task_id, result=result, error=error)
    return Ending(outcome, "unsettled", describe(error), images=tuple(result.images), consumed=result.consumed_credits)


def unreachable_error(last: APIConnectionError, base_url: httpx.URL, count: int) -> APIConnectionError:
    """Why a run stops sending after ``count`` submits in a row that never left, ``last`` the latest."""
    error = APIConnectionError(
        f"could not reach {base_url}: {count} submits in a row were never sent ({last.kind}); "
        "no more are sent in this run",
        kind=last.kind,
        method=last.method,
        path=last.path,
    )
    error.__cause__ = last
    return error


def stopped_while_retrying(request: GenerationRequest) -> SubmissionUncertainError:
    """The error of a submit given up between attempts, an earlier of which may have been paid for."""
    return SubmissionUncertainError(
        "the run stopped sending while this request waited to be sent again; an earlier attempt may have "
        "landed and been paid for, so it is not sent again unless resubmit_uncertain=True",
        request=request,
    )


def uncertain_from_earlier_run(index: int, request: GenerationRequest, error: str | None) -> BatchOutcome:
    """The outcome of a row an earlier run sent without recording an answer (its journal's ``error``)."""
    uncertain = SubmissionUncertainError(
        "an earlier run sent this request without recording an answer "
        f"({error or 'the run stopped while sending it'}); it may have been paid for, "
        "so it is not sent again unless resubmit_uncertain=True",
        request=request,
    )
    return BatchOutcome(index, request, "uncertain", error=uncertain)
