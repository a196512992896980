"""What the poller does with each answer to a poll: one pure function, and the decisions it returns.

`decide_poll` reads one poll's outcome (a task's status, "plainly still
running", or an error of the tree) and returns one of six decisions; the
poller only applies them. No clock, no I/O: the moments it needs are
arguments, and the table in ``docs/concepts/poller.md`` is a parametrised
test of this function, run without an event loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Union

from ._exceptions import (
    APIStatusError,
    AuthenticationError,
    Banana2Error,
    EmptyResultError,
    NotFoundError,
    RateLimitError,
    TaskFailedError,
)
from ._retry import outcome_of, status_decision

if TYPE_CHECKING:
    from ._models import GenerationResult, TaskInfo

__all__ = [
    "POLL_AGAIN",
    "BackOff",
    "Fail",
    "FailEveryTask",
    "PauseEverything",
    "PollAgain",
    "PollDecision",
    "Settle",
    "decide_poll",
]


@dataclass(frozen=True)
class Settle:
    """The task succeeded: settle its handles with ``result``."""

    result: GenerationResult


@dataclass(frozen=True)
class Fail:
    """The task is over without a result: settle its handles with ``error``."""

    error: Banana2Error


@dataclass(frozen=True)
class FailEveryTask:
    """The key was refused: every pending task of the client fails with ``error``."""

    error: AuthenticationError


@dataclass(frozen=True)
class PollAgain:
    """An answer that says the task runs: poll it again one interval on.

    ``unknown_status`` is a status the SDK does not know (to be logged once), if it was one.
    """

    unknown_status: str | None = None


@dataclass(frozen=True)
class BackOff:
    """A failure another poll may not meet: back this task off (at least ``retry_after`` seconds)."""

    error: Banana2Error
    retry_after: float | None = None


@dataclass(frozen=True)
class PauseEverything:
    """429: hold every request of the client back; ``retry_after`` is the server's hint, if any."""

    error: RateLimitError
    retry_after: float | None = None


PollDecision = Union[Settle, Fail, FailEveryTask, PollAgain, BackOff, PauseEverything]  # noqa: UP007 - Python 3.10

POLL_AGAIN: Final = PollAgain()


def decide_poll(
    answer: TaskInfo | Banana2Error | None,
    *,
    task_id: str,
    sent_at: float,
    registered_at: float,
    not_found_grace: float,
) -> PollDecision:
    """What to do after one poll of ``task_id``.

    Args:
        answer: The task as the server reported it, ``None`` for an answer
            that plainly says it still runs, or the error the poll raised.
        sent_at: When the poll was sent.
        registered_at: When the task was submitted; ``-inf`` for a task that
            was tracked, which the server has already, and so gets no grace.
        not_found_grace: Seconds after a submit during which a 404 is taken
            as the server not having caught up yet.
    """
    if answer is None:
        return POLL_AGAIN
    if isinstance(answer, Banana2Error):
        return _after_error(answer, young=sent_at - registered_at < not_found_grace)
    state = answer.state
    if state == "success":
        from ._models import GenerationResult

        try:
            return Settle(GenerationResult.from_info(answer))
        except EmptyResultError as exc:
            return Fail(exc)
    if state == "failed":
        status = str(answer.status)
        message = answer.error_detail or f"task {task_id} ended with status {status}"
        return Fail(TaskFailedError(message, task_id=task_id, status=status))
    if state == "unknown":
        return PollAgain(unknown_status=str(answer.status))
    return POLL_AGAIN


def _after_error(error: Banana2Error, *, young: bool) -> PollDecision:
    if isinstance(error, AuthenticationError):
        return FailEveryTask(error)
    if isinstance(error, RateLimitError):
        return PauseEverything(error, error.retry_after)
    retry_after = error.retry_after if isinstance(error, APIStatusError) else None
    if isinstance(error, NotFoundError) and young:
        return BackOff(error, retry_after)
    if status_decision(outcome_of(error)) == "raise":
        return Fail(error)
    return BackOff(error, retry_after)
