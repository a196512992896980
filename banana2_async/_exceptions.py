"""The errors raised by banana2_async.

Every error derives from one root::

    Banana2Error
    ├── ConfigurationError            no API key, plain http to a non-loopback host, ...
    ├── InvalidRequestError(ValueError)  bad arguments, raised before any I/O
    │   └── BudgetExceededError       a bulk run would cost more than max_credits
    ├── APIConnectionError            the server could not be reached
    │   └── APITimeoutError
    ├── SubmissionUncertainError      the POST may have landed and been paid for
    ├── APIResponseError              a body that is not the documented envelope
    ├── APIStatusError                status_code, message, body, request id if any
    │   ├── BadRequestError           400
    │   ├── AuthenticationError       401
    │   ├── InsufficientCreditsError  402
    │   ├── NotFoundError             404
    │   ├── RateLimitError            429 (retry_after)
    │   └── InternalServerError       5xx
    ├── TaskError                     task_id
    │   ├── TaskFailedError           the server says the task failed
    │   │   └── EmptyResultError      "success" with no usable image URL
    │   ├── TaskTimeoutError          our deadline passed; the task may still finish
    │   └── ClientClosedError         the client closed while the task was pending
    ├── JournalError                  a bulk run's journal is corrupt, in use, or of another job
    └── DownloadError                 a result image could not be downloaded
        └── ResultExpiredError        403/404/410: the result URL expired or is gone

No error carries the API key: requests are described by method and path only.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from ._models import GenerationRequest

__all__ = [
    "APIConnectionError",
    "APIResponseError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "Banana2Error",
    "BudgetExceededError",
    "ClientClosedError",
    "ConfigurationError",
    "DownloadError",
    "EmptyResultError",
    "FailureKind",
    "InsufficientCreditsError",
    "InternalServerError",
    "InvalidRequestError",
    "JournalError",
    "NotFoundError",
    "RateLimitError",
    "ResultExpiredError",
    "SubmissionUncertainError",
    "TaskError",
    "TaskFailedError",
    "TaskTimeoutError",
    "error_for_status",
]


class Banana2Error(Exception):
    """The root of every error raised by banana2_async."""


class ConfigurationError(Banana2Error):
    """The client is configured in a way that cannot work or is unsafe."""


class InvalidRequestError(Banana2Error, ValueError):
    """An argument is invalid; raised before any request is sent.

    ``field`` names the offending argument (``"prompt"``, ``"images"``, ...).
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class FailureKind(str, enum.Enum):
    """How a request failed before an answer came back (`APIConnectionError.kind`).

    A ``str`` enum: ``exc.kind == "connect"`` holds too.
    """

    CONNECT = "connect"
    """No connection was made: the request was never sent."""
    CONNECT_TIMEOUT = "connect-timeout"
    """Connecting took too long: the request was never sent."""
    POOL_TIMEOUT = "pool-timeout"
    """No pooled connection was free in time: the request was never sent."""
    NOT_SENT_IN_TIME = "not-sent-in-time"
    """The call's own deadline passed while it waited to send (a rate-limit pause, say): it was never sent."""
    LOCAL = "local"
    """The request could not be formed or sent at all (a protocol error on our side)."""
    READ_TIMEOUT = "read-timeout"
    """The request went out and no answer came in time."""
    WRITE_TIMEOUT = "write-timeout"
    """Sending stalled part-way."""
    NETWORK = "network"
    """The connection broke during the exchange (reset, dropped, closed early)."""
    DEADLINE = "deadline"
    """The whole exchange took longer than its deadline (a server dripping its answer): it may have landed."""
    BAD_RESPONSE = "bad-response"
    """An answer came that is not the documented envelope (never an `APIConnectionError`'s kind)."""

    def __str__(self) -> str:
        return self.value


_KINDS: Final = frozenset(kind.value for kind in FailureKind)


class APIConnectionError(Banana2Error):
    """The server could not be reached, or the connection broke.

    ``kind`` says how: ``"connect"``, ``"connect-timeout"``, ``"pool-timeout"`` and
    ``"not-sent-in-time"`` (a submit's own deadline passed while it waited)
    mean the request was never sent; ``"read-timeout"``, ``"write-timeout"``,
    ``"network"`` and ``"deadline"`` (the whole-request deadline passed) mean it
    may have reached the server; ``"local"`` means it could not be formed.
    """

    def __init__(
        self, message: str, *, kind: FailureKind | str = FailureKind.NETWORK, method: str = "", path: str = ""
    ) -> None:
        super().__init__(message)
        self.message = message
        # A kind this version does not know counts as the connection having broken: it may have landed.
        self.kind: FailureKind = FailureKind(kind) if kind in _KINDS else FailureKind.NETWORK
        self.method = method
        self.path = path


class APITimeoutError(APIConnectionError):
    """The request timed out."""


class SubmissionUncertainError(Banana2Error):
    """A ``POST /api/generate`` may have reached the server, and been paid for.

    The API has no idempotency key, so the request is not sent again silently:
    ``request`` is the request that may have landed. Check your account, or
    submit it again knowingly.
    """

    def __init__(self, message: str, *, request: GenerationRequest, status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.request = request
        self.status_code = status_code


class APIResponseError(Banana2Error):
    """The server answered with a body that is not the documented envelope.

    ``excerpt`` holds the start of the body, for diagnosis.
    """

    def __init__(self, message: str, *, status_code: int | None = None, excerpt: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.excerpt = excerpt


class APIStatusError(Banana2Error):
    """The server answered with an error status (HTTP, or the envelope's ``code``).

    ``retry_after`` is the server's ``Retry-After`` in seconds (a 429 or 503 may send one), if any.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        body: Any = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.body = body
        self.request_id = request_id
        self.retry_after = retry_after

    def __str__(self) -> str:
        suffix = f" (request id {self.request_id})" if self.request_id else ""
        return f"{self.status_code}: {self.message}{suffix}"


class BadRequestError(APIStatusError):
    """400: a parameter is missing or invalid."""


class AuthenticationError(APIStatusError):
    """401: the API key is missing or invalid."""


class InsufficientCreditsError(APIStatusError):
    """402: the account has too few credits."""


class NotFoundError(APIStatusError):
    """404: the task does not exist."""


class RateLimitError(APIStatusError):
    """429: too many requests. ``retry_after`` is the server's hint in seconds, if any."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int = 429,
        body: Any = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status_code=status_code, body=body, request_id=request_id, retry_after=retry_after)


class InternalServerError(APIStatusError):
    """5xx: the server failed."""


class TaskError(Banana2Error):
    """A task did not produce a result. ``task_id`` names it."""

    def __init__(self, message: str, *, task_id: str) -> None:
        super().__init__(message)
        self.message = message
        self.task_id = task_id


class TaskFailedError(TaskError):
    """The server reports the task as failed; ``status`` is the status it gave."""

    def __init__(self, message: str, *, task_id: str, status: str = "FAILED") -> None:
        super().__init__(message, task_id=task_id)
        self.status = status


class EmptyResultError(TaskFailedError):
    """The server reported success but gave no usable image URL.

    ``response`` was missing, null, empty, or held no http(s) URL. The task
    may have been charged for all the same: ``consumed_credits`` is what the
    server reported, if anything.
    """

    def __init__(
        self, message: str, *, task_id: str, status: str = "SUCCESS", consumed_credits: int | None = None
    ) -> None:
        super().__init__(message, task_id=task_id, status=status)
        self.consumed_credits = consumed_credits


class TaskTimeoutError(TaskError):
    """The handle's deadline passed. The task may still finish: ``client.track(task_id)``."""

    def __init__(self, task_id: str) -> None:
        super().__init__(f"task {task_id} did not finish before its deadline", task_id=task_id)


class ClientClosedError(TaskError):
    """The client was closed while the task was still pending."""

    def __init__(self, task_id: str) -> None:
        super().__init__(f"the client closed while task {task_id} was pending", task_id=task_id)


class BudgetExceededError(InvalidRequestError):
    """A bulk run would cost more than its ``max_credits``; it was refused before any request.

    ``credits`` is what the run would cost, ``max_credits`` the limit it was given.
    """

    def __init__(self, message: str, *, credits: int, max_credits: int) -> None:
        super().__init__(message, field="max_credits")
        self.credits = credits
        self.max_credits = max_credits


class JournalError(Banana2Error):
    """A bulk run's journal cannot be used; it is left as it is, never overwritten.

    ``reason`` says why: ``"corrupt"`` (not a readable journal), ``"other-job"``
    (written for a different list of requests), ``"in-use"`` (another run holds
    it) or ``"io"`` (it could not be read or written). ``path`` is the file.
    """

    def __init__(self, message: str, *, path: str, reason: str) -> None:
        super().__init__(message)
        self.message = message
        self.path = path
        self.reason = reason


class DownloadError(Banana2Error):
    """A result image could not be downloaded; no partial file is left behind.

    ``url`` is the image's address without its query string (which may hold
    a signature), ``task_id`` its task, ``status_code`` the HTTP status if one
    came back.
    """

    def __init__(self, message: str, *, url: str, task_id: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.url = url
        self.task_id = task_id
        self.status_code = status_code


class ResultExpiredError(DownloadError):
    """The result host answered 403, 404 or 410: the URL expired or the image is gone.

    Result URLs may be short-lived; ``client.status(task_id)`` may give fresh ones.
    """


_STATUS_ERRORS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    402: InsufficientCreditsError,
    404: NotFoundError,
    429: RateLimitError,
}


def error_for_status(
    status_code: int,
    message: str,
    *,
    body: Any = None,
    request_id: str | None = None,
    retry_after: float | None = None,
) -> APIStatusError:
    """Build the `APIStatusError` subclass that matches ``status_code``."""
    if status_code == 429:
        return RateLimitError(message, body=body, request_id=request_id, retry_after=retry_after)
    cls = _STATUS_ERRORS.get(status_code)
    if cls is None:
        cls = InternalServerError if status_code >= 500 else APIStatusError
    return cls(message, status_code=status_code, body=body, request_id=request_id, retry_after=retry_after)
