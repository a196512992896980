"""`decide_poll`: the table of docs/concepts/poller.md, as a pure function tested without an event loop."""

from __future__ import annotations

import math
from typing import Any

import pytest

from banana2_async import (
    APIConnectionError,
    APIResponseError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    EmptyResultError,
    FailureKind,
    InternalServerError,
    InvalidRequestError,
    NotFoundError,
    RateLimitError,
    TaskFailedError,
    TaskInfo,
)
from banana2_async._decisions import (
    POLL_AGAIN,
    BackOff,
    Fail,
    FailEveryTask,
    PauseEverything,
    PollAgain,
    Settle,
    decide_poll,
)

URL = "https://cdn.example/1.png"
GRACE = 10.0


def _info(status: str | None, **fields: Any) -> TaskInfo:
    return TaskInfo.model_validate({"task_id": "t1", "status": status, **fields})


def _decide(answer: object, *, sent_at: float = 100.0, registered_at: float = 95.0) -> object:
    return decide_poll(
        answer,  # type: ignore[arg-type]
        task_id="t1",
        sent_at=sent_at,
        registered_at=registered_at,
        not_found_grace=GRACE,
    )


@pytest.mark.parametrize("status", ["SUCCESS", "success", "SUCCEEDED", "COMPLETED"])
def test_a_success_settles_every_handle_with_the_result(status: str) -> None:
    """SUCCESS (any spelling the family uses): every handle resolves with a `GenerationResult`."""
    decision = _decide(_info(status, response=[URL], consumed_credits=20))
    assert isinstance(decision, Settle)
    assert decision.result.images == [URL]


@pytest.mark.parametrize("response", [None, []])
def test_a_success_without_a_usable_image_fails_the_task(response: object) -> None:
    """SUCCESS without a usable image URL fails the task with `EmptyResultError`."""
    decision = _decide(_info("SUCCESS", response=response, consumed_credits=20))
    assert isinstance(decision, Fail)
    assert isinstance(decision.error, EmptyResultError)
    assert decision.error.consumed_credits == 20


@pytest.mark.parametrize("status", ["FAILED", "FAILURE", "ERROR", "CANCELLED", "CANCELED", "failed"])
def test_a_failure_status_fails_the_task_with_the_servers_message(status: str) -> None:
    """FAILED, FAILURE, ERROR, CANCELLED, CANCELED (any case): `TaskFailedError` with the server's message."""
    decision = _decide(_info(status, error_detail="nsfw"))
    assert isinstance(decision, Fail)
    assert isinstance(decision.error, TaskFailedError)
    assert decision.error.message == "nsfw"
    assert decision.error.status == status


@pytest.mark.parametrize("status", ["IN_PROGRESS", "PENDING", "QUEUED", "PROCESSING", "in_queue"])
def test_an_in_flight_status_polls_again(status: str) -> None:
    """IN_PROGRESS, PENDING, QUEUED, ...: polled again one interval on."""
    assert _decide(_info(status)) == POLL_AGAIN


def test_an_answer_plainly_running_polls_again() -> None:
    """The common answer, read without a model (``None``): polled again."""
    assert _decide(None) == POLL_AGAIN


@pytest.mark.parametrize("status", ["WEIRD", "", None])
def test_an_unknown_status_polls_again_and_is_named_for_the_log(status: str | None) -> None:
    """A status the SDK does not know: polled again, and named so it is logged once."""
    decision = _decide(_info(status))
    assert isinstance(decision, PollAgain)
    assert decision.unknown_status == str(status)


@pytest.mark.parametrize(
    "error",
    [
        APITimeoutError("slow", kind=FailureKind.READ_TIMEOUT),
        APITimeoutError("dripped", kind=FailureKind.DEADLINE),
        APIConnectionError("refused", kind=FailureKind.CONNECT),
        APIConnectionError("dropped", kind=FailureKind.NETWORK),
        InternalServerError("502", status_code=502),
        InternalServerError("503", status_code=503, retry_after=7.0),
        APIResponseError("garbled"),
        APIResponseError("the status answer for task t1 is about another task"),
        InternalServerError("408", status_code=408),
    ],
    ids=lambda error: str(error)[:20],
)
def test_a_transient_failure_backs_this_task_off(error: Exception) -> None:
    """A timeout, a connection error, 408, 5xx, a garbled body or another task's answer: this task backs off."""
    decision = _decide(error)
    assert isinstance(decision, BackOff)
    assert decision.error is error
    assert decision.retry_after == getattr(error, "retry_after", None)


@pytest.mark.parametrize("retry_after", [None, 12.0])
def test_a_429_pauses_every_request(retry_after: float | None) -> None:
    """429: every request of the client pauses, for the Retry-After if the server gave one."""
    error = RateLimitError("slow down", retry_after=retry_after)
    assert _decide(error) == PauseEverything(error, retry_after)


def test_a_401_fails_every_task() -> None:
    """401: every pending handle fails; the key is gone."""
    error = AuthenticationError("bad key", status_code=401)
    assert _decide(error) == FailEveryTask(error)


def test_a_404_right_after_a_submit_backs_off() -> None:
    """404 within `not_found_grace` of a submit: the server may not have caught up; back off."""
    error = NotFoundError("no such task", status_code=404)
    assert isinstance(_decide(error, sent_at=100.0, registered_at=100.0 - GRACE + 1), BackOff)


def test_a_404_after_the_grace_fails_the_task() -> None:
    """404 once `not_found_grace` has passed since the submit: `NotFoundError` for that task."""
    error = NotFoundError("no such task", status_code=404)
    assert _decide(error, sent_at=100.0, registered_at=100.0 - GRACE) == Fail(error)


def test_a_404_of_a_tracked_task_fails_at_once() -> None:
    """A tracked task is one the server has: a 404 fails it at once, no grace."""
    error = NotFoundError("no such task", status_code=404)
    assert _decide(error, sent_at=100.0, registered_at=-math.inf) == Fail(error)


@pytest.mark.parametrize(
    "error",
    [
        BadRequestError("bad", status_code=400),
        InvalidRequestError("task_id cannot be put in a URL", field="task_id"),
    ],
)
def test_a_definite_refusal_fails_the_task(error: Exception) -> None:
    """400, or a task id no URL can hold: that task fails; polling again would change nothing."""
    assert _decide(error) == Fail(error)  # type: ignore[arg-type]
