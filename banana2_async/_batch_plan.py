"""What a bulk run will do, known before it starts: each row's fate, the cost, the budget. Pure: no I/O.

A row of the job is sent (``"submit"``), its task of an earlier run watched
again (``"track"``), reported and not sent (``"uncertain"``: its ``POST`` may
have been paid for without an answer), or skipped (``"succeeded"``,
``"failed"``: finished in an earlier run), by what its journal row says and
the run's options (`row_kind`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from ._exceptions import BudgetExceededError, EmptyResultError, InvalidRequestError, TaskFailedError
from ._job import JournalRow
from ._journal import split_error
from ._models import GenerationRequest

__all__ = [
    "BatchPlan",
    "PlannedRow",
    "RowKind",
    "as_requests",
    "check_budget",
    "failed_on_the_server",
    "plan_batch",
    "planned_rows",
    "row_kind",
]

RowKind = Literal["submit", "track", "uncertain", "succeeded", "failed"]

# What a task that failed on the server leaves in the journal; `retry_failed` sends such rows again.
_FAILED_ON_THE_SERVER: Final = frozenset({TaskFailedError.__name__, EmptyResultError.__name__})
# The order a run takes its rows in: reports first, then the tasks already paid for, then new submits.
_RUN_ORDER: Final = {"uncertain": 0, "track": 1, "submit": 2}


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
class PlannedRow:
    """A row of the job and what the run does with it; ``task_id`` and ``error`` are its journal's."""

    kind: RowKind
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


def _kind_of(row: JournalRow | None, resubmit_uncertain: bool, retry_failed: bool) -> RowKind:
    if row is None or row.state == "pending":
        return "submit"
    if row.state == "submitting":
        return "submit" if resubmit_uncertain else "uncertain"
    if row.state == "submitted":
        return "track" if row.task_id else "uncertain"
    if row.state == "failed" and retry_failed and failed_on_the_server(row):
        return "submit"
    return "succeeded" if row.state == "succeeded" else "failed"


def planned_rows(
    requests: Sequence[GenerationRequest],
    rows: Sequence[JournalRow] | None,
    *,
    resubmit_uncertain: bool,
    retry_failed: bool,
) -> list[PlannedRow]:
    """The rows a run works on, in the order it takes them: uncertain reports first, then tracks, then submits."""
    planned = [
        PlannedRow(
            _kind_of(rows[index] if rows else None, resubmit_uncertain, retry_failed),
            index,
            request,
            rows[index].task_id if rows else None,
            rows[index].error if rows else None,
        )
        for index, request in enumerate(requests)
    ]
    return sorted((row for row in planned if row.kind in _RUN_ORDER), key=lambda row: _RUN_ORDER[row.kind])


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


def check_budget(plan: BatchPlan, max_credits: int | None) -> BatchPlan:
    """``plan``, if it costs at most ``max_credits`` (``None``: no limit).

    Raises:
        BudgetExceededError: the run would cost more; nothing was sent.
    """
    if max_credits is not None and plan.credits > max_credits:
        raise BudgetExceededError(
            f"this run would cost {plan.credits} credits for {plan.submit} task(s), more than "
            f"max_credits={max_credits}; nothing was sent",
            credits=plan.credits,
            max_credits=max_credits,
        )
    return plan
