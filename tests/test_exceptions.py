"""The error tree of `_exceptions.py`: its shape, its attributes, and the status code mapping."""

from __future__ import annotations

import re

import pytest

import banana2_async
from banana2_async import (
    APIConnectionError,
    APIResponseError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    Banana2Error,
    BudgetExceededError,
    ClientClosedError,
    ConfigurationError,
    DownloadError,
    GenerationRequest,
    InsufficientCreditsError,
    InternalServerError,
    InvalidRequestError,
    JournalError,
    NotFoundError,
    RateLimitError,
    ResultExpiredError,
    SubmissionUncertainError,
    TaskError,
    TaskFailedError,
    TaskTimeoutError,
    _exceptions,
)
from banana2_async._exceptions import error_for_status

TREE: list[tuple[type[BaseException], type[BaseException]]] = [
    (ConfigurationError, Banana2Error),
    (InvalidRequestError, Banana2Error),
    (InvalidRequestError, ValueError),
    (APIConnectionError, Banana2Error),
    (APITimeoutError, APIConnectionError),
    (SubmissionUncertainError, Banana2Error),
    (APIResponseError, Banana2Error),
    (APIStatusError, Banana2Error),
    (BadRequestError, APIStatusError),
    (AuthenticationError, APIStatusError),
    (InsufficientCreditsError, APIStatusError),
    (NotFoundError, APIStatusError),
    (RateLimitError, APIStatusError),
    (InternalServerError, APIStatusError),
    (TaskError, Banana2Error),
    (TaskFailedError, TaskError),
    (TaskTimeoutError, TaskError),
    (ClientClosedError, TaskError),
    (BudgetExceededError, InvalidRequestError),
    (JournalError, Banana2Error),
    (DownloadError, Banana2Error),
    (ResultExpiredError, DownloadError),
    (Banana2Error, Exception),
]


@pytest.mark.parametrize(("child", "parent"), TREE, ids=lambda cls: cls.__name__)
def test_error_tree(child: type[BaseException], parent: type[BaseException]) -> None:
    """Each error derives from its parent in the documented tree."""
    assert issubclass(child, parent)


def _error_classes() -> set[type[BaseException]]:
    return {
        obj
        for name in _exceptions.__all__
        if isinstance(obj := getattr(_exceptions, name), type) and issubclass(obj, BaseException)
    }


def test_the_tree_has_one_root_and_no_stray_branches() -> None:
    """Every error class derives from Banana2Error through exactly one error parent."""
    classes = _error_classes()
    assert {child for child, _ in TREE} <= classes
    for cls in classes - {Banana2Error}:
        assert issubclass(cls, Banana2Error), cls
        error_bases = [base for base in cls.__bases__ if issubclass(base, Banana2Error)]
        assert len(error_bases) == 1, cls


def test_the_module_docstring_draws_every_error() -> None:
    """The tree drawn in the docstring names every error class."""
    doc = _exceptions.__doc__ or ""
    for cls in _error_classes():
        assert re.search(rf"(─ |^    ){cls.__name__}\b", doc, re.MULTILINE), cls


def test_every_error_is_exported() -> None:
    """Every error class is importable from ``banana2_async``."""
    for child, _ in TREE:
        assert getattr(banana2_async, child.__name__) is child


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (402, InsufficientCreditsError),
        (404, NotFoundError),
        (429, RateLimitError),
        (500, InternalServerError),
        (501, InternalServerError),
        (502, InternalServerError),
        (503, InternalServerError),
        (504, InternalServerError),
        (599, InternalServerError),
        (403, APIStatusError),
        (408, APIStatusError),
        (409, APIStatusError),
        (422, APIStatusError),
        (302, APIStatusError),
    ],
)
def test_error_for_status(status: int, error: type[APIStatusError]) -> None:
    """Each status code maps to its class; others fall back to APIStatusError (InternalServerError for 5xx)."""
    exc = error_for_status(status, "msg", body={"code": status}, request_id="rid")
    assert type(exc) is error
    assert exc.status_code == status
    assert exc.message == "msg"
    assert exc.body == {"code": status}
    assert exc.request_id == "rid"


def test_rate_limit_error_carries_retry_after() -> None:
    """429 carries the server's Retry-After hint in seconds, or None."""
    exc = error_for_status(429, "slow down", retry_after=2.5)
    assert isinstance(exc, RateLimitError)
    assert exc.retry_after == 2.5
    assert RateLimitError("slow down").retry_after is None
    assert RateLimitError("slow down").status_code == 429


@pytest.mark.parametrize("status", [408, 429, 500, 503])
def test_status_errors_carry_retry_after(status: int) -> None:
    """A status error keeps the server's Retry-After, so a 503's wait is honoured like a 429's."""
    assert error_for_status(status, "busy", retry_after=4.0).retry_after == 4.0
    assert error_for_status(status, "busy").retry_after is None


def test_status_error_str_names_status_and_request_id() -> None:
    """str() of a status error is ``status: message``, with the request id when there is one."""
    assert str(NotFoundError("no such task", status_code=404)) == "404: no such task"
    assert str(NotFoundError("no such task", status_code=404, request_id="abc")) == "404: no such task (request id abc)"


def test_invalid_request_error_names_its_field() -> None:
    """InvalidRequestError keeps the message and the field; it is caught as a ValueError."""
    with pytest.raises(ValueError, match="too long") as caught:
        raise InvalidRequestError("prompt is too long", field="prompt")
    assert isinstance(caught.value, InvalidRequestError)
    assert caught.value.field == "prompt"
    assert caught.value.message == "prompt is too long"


def test_connection_error_says_how_and_where() -> None:
    """APIConnectionError keeps its kind, method and path; a timeout is a connection error."""
    exc = APITimeoutError("timed out", kind="read-timeout", method="GET", path="/api/status")
    assert (exc.kind, exc.method, exc.path) == ("read-timeout", "GET", "/api/status")
    assert isinstance(exc, APIConnectionError)
    assert APIConnectionError("x").kind == "network"


def test_submission_uncertain_error_carries_the_request() -> None:
    """SubmissionUncertainError carries the request that may have been paid for, to submit it again knowingly."""
    request = GenerationRequest(prompt="a fox", resolution="2k")
    exc = SubmissionUncertainError("maybe paid", request=request, status_code=502)
    assert exc.request is request
    assert exc.status_code == 502
    assert str(exc) == "maybe paid"


def test_api_response_error_carries_an_excerpt() -> None:
    """APIResponseError keeps the status and an excerpt of the body."""
    exc = APIResponseError("not json", status_code=200, excerpt="<html>")
    assert (exc.status_code, exc.excerpt, str(exc)) == (200, "<html>", "not json")


def test_task_errors_name_their_task() -> None:
    """Task errors carry the task id; a failure keeps the server's status; a timeout says the task may finish."""
    failed = TaskFailedError("nsfw content", task_id="t1", status="FAILURE")
    assert (failed.task_id, failed.status, str(failed)) == ("t1", "FAILURE", "nsfw content")
    assert TaskFailedError("x", task_id="t").status == "FAILED"
    timeout = TaskTimeoutError("t2")
    assert timeout.task_id == "t2"
    assert "t2" in str(timeout)
    closed = ClientClosedError("t3")
    assert closed.task_id == "t3"
    assert "t3" in str(closed)


def test_bulk_and_download_errors_keep_their_details() -> None:
    """The errors of bulk runs and downloads keep what a caller needs to act on them."""
    budget = _exceptions.BudgetExceededError("too dear", credits=480, max_credits=400)
    assert isinstance(budget, InvalidRequestError)
    assert (budget.field, budget.credits, budget.max_credits) == ("max_credits", 480, 400)
    journal = _exceptions.JournalError("corrupt", path="/tmp/run.sqlite", reason="corrupt")
    assert (journal.path, journal.reason, journal.message) == ("/tmp/run.sqlite", "corrupt", "corrupt")
    expired = _exceptions.ResultExpiredError("gone", url="https://cdn.example/1.png", task_id="t", status_code=410)
    assert isinstance(expired, _exceptions.DownloadError)
    assert (expired.url, expired.task_id, expired.status_code) == ("https://cdn.example/1.png", "t", 410)
