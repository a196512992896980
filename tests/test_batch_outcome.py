"""How a row of a bulk run ends, by the error its submit or task ended with: a table, with no event loop."""

from __future__ import annotations

import pytest

from banana2_async import (
    APIConnectionError,
    AuthenticationError,
    BadRequestError,
    ClientClosedError,
    EmptyResultError,
    FailureKind,
    GenerationRequest,
    InsufficientCreditsError,
    InternalServerError,
    InvalidRequestError,
    NotFoundError,
    SubmissionUncertainError,
    TaskError,
    TaskFailedError,
    TaskTimeoutError,
)
from banana2_async._batch_outcome import describe, never_sent, submit_failure, task_failure

REQUEST = GenerationRequest(prompt="a cat")


@pytest.mark.parametrize(
    ("error", "closed", "status", "record", "halts"),
    [
        (SubmissionUncertainError("lost", request=REQUEST), False, "uncertain", "uncertain", False),
        (BadRequestError("no", status_code=400), False, "failed", "failed", False),
        (InsufficientCreditsError("broke", status_code=402), False, "unsubmitted", "unsent", True),
        (AuthenticationError("who", status_code=401), False, "unsubmitted", "unsent", True),
        (InternalServerError("oops", status_code=500), False, "failed", "unsent", False),
        (RuntimeError("this AsyncBanana2 is closed"), True, "unsubmitted", "unsent", True),
        (RuntimeError("surprise"), False, "uncertain", "uncertain", False),
        (ValueError("surprise"), True, "uncertain", "uncertain", False),
    ],
)
def test_what_a_failed_submit_means(error: Exception, closed: bool, status: str, record: str, halts: bool) -> None:
    """Each error of a sent submit ends its row with one status and journal record; some stop new submits."""
    ending = submit_failure(3, REQUEST, error, closed=closed, halted=None)
    assert (ending.outcome.index, ending.outcome.status, ending.record) == (3, status, record)
    assert ending.halt is (error if halts else None)
    assert ending.reason == describe(ending.outcome.error or error)


def test_an_error_that_is_not_the_sdks_may_have_been_paid_for() -> None:
    """A submit that raised something foreign is uncertain, the foreign error kept as the cause."""
    error = KeyError("boom")
    ending = submit_failure(0, REQUEST, error, closed=False, halted=None)
    assert isinstance(ending.outcome.error, SubmissionUncertainError)
    assert ending.outcome.error.__cause__ is error


def test_a_closed_client_reports_why_the_run_stopped_first() -> None:
    """A row refused by a closed client after the run stopped sending carries the reason it stopped."""
    earlier = InsufficientCreditsError("broke", status_code=402)
    ending = submit_failure(0, REQUEST, RuntimeError("closed"), closed=True, halted=earlier)
    assert ending.outcome.error is earlier
    assert ending.reason == "RuntimeError: closed"


@pytest.mark.parametrize(
    ("kind", "sent"),
    [
        (FailureKind.CONNECT, False),
        (FailureKind.CONNECT_TIMEOUT, False),
        (FailureKind.POOL_TIMEOUT, False),
        (FailureKind.NOT_SENT_IN_TIME, False),
        (FailureKind.READ_TIMEOUT, True),
        (FailureKind.NETWORK, True),
    ],
)
def test_which_connection_errors_mean_a_submit_never_left(kind: FailureKind, sent: bool) -> None:
    """Only a connection that was never made, or a deadline passed before sending, means nothing was sent."""
    assert never_sent(APIConnectionError("x", kind=kind)) is not sent


def test_other_errors_do_not_say_a_submit_never_left() -> None:
    """An error that is not a connection's says nothing of whether the request left."""
    assert not never_sent(InternalServerError("oops", status_code=500))


@pytest.mark.parametrize(
    ("error", "closed", "record", "kind", "halts"),
    [
        (TaskFailedError("no", task_id="t"), False, "failed", TaskFailedError, False),
        (NotFoundError("gone", status_code=404), False, "failed", NotFoundError, False),
        (InvalidRequestError("bad id", field="task_id"), False, "failed", InvalidRequestError, False),
        (TaskTimeoutError("t"), False, "unsettled", TaskTimeoutError, False),
        (ClientClosedError("t"), True, "unsettled", ClientClosedError, False),
        (AuthenticationError("who", status_code=401), False, "unsettled", AuthenticationError, True),
        (RuntimeError("this AsyncBanana2 is closed"), True, "unsettled", ClientClosedError, False),
        (RuntimeError("surprise"), False, "unsettled", TaskError, False),
    ],
)
def test_what_a_failed_task_means(
    error: Exception, closed: bool, record: str, kind: type[Exception], halts: bool
) -> None:
    """A task that failed for good ends its row; one that may still finish is tracked again by a later run."""
    ending = task_failure(2, REQUEST, "t", error, closed=closed)
    assert (ending.outcome.status, ending.outcome.task_id, ending.record) == ("failed", "t", record)
    assert type(ending.outcome.error) is kind
    assert ending.halt is (error if halts else None)


def test_an_empty_success_keeps_the_credits_it_consumed() -> None:
    """A success without images fails its row for good, recording the credits the server reported."""
    ending = task_failure(0, REQUEST, "t", EmptyResultError("empty", task_id="t", consumed_credits=20), closed=False)
    assert (ending.record, ending.consumed) == ("failed", 20)


def test_a_long_error_is_cut_for_the_journal() -> None:
    """The journal keeps an error's class and the start of a long message, marked as cut."""
    text = describe(ValueError("x" * 5000))
    assert text.startswith("ValueError: xxx")
    assert len(text) == 2000
    assert text.endswith("…")
