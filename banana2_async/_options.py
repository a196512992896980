"""Every option of a client, a task and a bulk run: declared once, with its default, checked in one place.

`ClientOptions`, `TaskOptions`, `EditOptions` and `BatchOptions` are the
keyword arguments of `AsyncBanana2`, `Banana2`, their task methods and
``batch`` (``**options: Unpack[ClientOptions]``), and what the CLI builds its
client from. `client_settings` checks a client's options before any I/O and
resolves their defaults and environment variables.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, TypedDict

import httpx

from ._exceptions import ConfigurationError, InvalidRequestError
from ._requests import check_base_url
from ._schedule import Interval, RateBudget, parse_interval
from ._types import (
    DEFAULT_BASE_URL,
    DEFAULT_NOT_FOUND_GRACE,
    DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_SUBMIT_TIMEOUT,
    DEFAULT_TIMEOUT,
    DEFAULT_WAIT_TIMEOUT,
)
from ._validate import check_bool, check_non_negative_int, check_positive_int, check_seconds

if TYPE_CHECKING:
    from ._batch_outcome import BatchEvent
    from ._types import AspectRatio, NotGiven, OutputFormat, Resolution, TaskType

__all__ = [
    "CLIENT_DEFAULTS",
    "BatchOptions",
    "ClientOptions",
    "ClientSettings",
    "EditOptions",
    "TaskOptions",
    "client_settings",
    "wait_timeout_of",
]


class ClientOptions(TypedDict, total=False):
    """The options of `AsyncBanana2` and `Banana2`, each with its default (README's "Client options" too)."""

    base_url: str | None
    """The API's address; defaults to ``$BANANA2_BASE_URL``, else ``https://banana2api.com``."""
    poll_interval: float | tuple[float, float]
    """Seconds between two polls of a task: a number, or ``(low, high)`` to draw each from (2-3 s)."""
    learn_first_poll: bool
    """Place a submitted task's first poll by how long tasks of its type and resolution have been taking (on):
    at their median, but no more than one mean ``poll_interval`` after the fastest of the last 32, and at most
    60 s after the submit; every ``poll_interval`` after that. ``False`` polls from the submit on."""
    wait_timeout: float | None
    """Default deadline of a handle in seconds (600); ``None`` for none."""
    http_client: httpx.AsyncClient | None
    """An ``httpx.AsyncClient`` of your own (proxies, HTTP/2), not closed by the SDK; keep its pool at least
    ``max_concurrent_submits + max_concurrent_polls``."""
    transport: httpx.AsyncBaseTransport | None
    """The transport of the SDK's own httpx client (HTTP/2, a mock, a simulator's); closed with the client.
    Not with ``http_client``."""
    timeout: float | httpx.Timeout
    """httpx's timeouts of each request: of connecting, and of each read and write (30 s, 10 s to connect)."""
    request_timeout: float
    """The whole-request deadline (60 s): from sending to the last byte of the answer, however the server
    drips it. A poll or ``status()`` past it raises `APITimeoutError`; a sent submit, `SubmissionUncertainError`."""
    submit_timeout: float
    """The deadline of one ``submit()`` as a whole (600 s), waits for a slot and for 429/503 retries included."""
    max_retries: int
    """How often a request is retried where retrying is safe (3)."""
    max_concurrent_submits: int
    """Submits in flight at once (16); more wait in line."""
    max_concurrent_polls: int
    """Status polls in flight at once (48): the most poll workers, started as polls come due."""
    rate_limit: float | None
    """Requests per second shared by submits and polls, in bursts of up to as many; ``None`` for no limit.
    Under it, the request that waited longest goes first, but polls go in the order their tasks are expected done,
    and submits and ``status()`` calls get at least one grant in three while polls wait. A 429 pauses all either
    way."""
    retry_uncertain_submits: bool
    """Retry a submit that may have been paid for instead of raising `SubmissionUncertainError` (off)."""
    allow_insecure_http: bool
    """Allow a plain ``http://`` base URL to a host other than loopback (off)."""
    not_found_grace: float
    """Seconds after a submit during which a 404 on a poll is taken as the server not having caught up (10)."""
    seed: int | None
    """Seeds the jitter of poll intervals and backoffs, for reproducible runs."""


CLIENT_DEFAULTS: Final[ClientOptions] = {
    "base_url": None,
    "poll_interval": (2.0, 3.0),
    "learn_first_poll": True,
    "wait_timeout": DEFAULT_WAIT_TIMEOUT,
    "http_client": None,
    "transport": None,
    "timeout": DEFAULT_TIMEOUT,
    "request_timeout": DEFAULT_REQUEST_TIMEOUT,
    "submit_timeout": DEFAULT_SUBMIT_TIMEOUT,
    "max_retries": 3,
    "max_concurrent_submits": 16,
    "max_concurrent_polls": 48,
    "rate_limit": None,
    "retry_uncertain_submits": False,
    "allow_insecure_http": False,
    "not_found_grace": DEFAULT_NOT_FOUND_GRACE,
    "seed": None,
}


class EditOptions(TypedDict, total=False):
    """The options of an edit (`AsyncBanana2.edit`): what a task takes but its type and images."""

    aspect_ratio: AspectRatio | None
    resolution: Resolution | None
    output_format: OutputFormat | None
    wait_timeout: float | NotGiven | None


class TaskOptions(EditOptions, total=False):
    """The options of a task (`AsyncBanana2.submit`, `AsyncBanana2.generate`); left out, they are not sent."""

    type: TaskType | None
    images: Sequence[str] | None


class BatchOptions(TypedDict, total=False):
    """The options of a bulk run (`AsyncBanana2.batch`)."""

    concurrency: int
    """Tasks in flight at once, from submit until downloaded (8)."""
    journal: str | os.PathLike[str] | None
    """A sqlite file recording the run; the same job run again with it resumes without paying twice."""
    max_credits: int | None
    """Refuse to start (`BudgetExceededError`) if the run would cost more."""
    resubmit_uncertain: bool
    """Send again the rows of an earlier run whose submit may have been paid for without an answer."""
    dest_dir: str | os.PathLike[str] | None
    """Download each result there (see `AsyncBanana2.download`)."""
    on_event: Callable[[BatchEvent], object] | None
    """Called with every `BatchEvent` (submitted, tracked, polled, succeeded, failed) while the run is iterated."""
    wait_timeout: float | NotGiven | None
    """Deadline of each task; the client's default if not given."""
    keys: Sequence[str | None] | None
    """Each request's own id in the job (a row's ``id``), so that a job may grow; ``None`` (or a ``None`` key)
    identifies a request by its content."""
    retry_failed: bool
    """Send again the rows of an earlier run whose task failed on the server (or succeeded without images);
    this costs credits."""


@dataclass(frozen=True)
class ClientSettings:
    """A client's options, checked, with their defaults and environment variables resolved."""

    api_key: str = field(repr=False)
    base_url: httpx.URL
    interval: Interval
    learn_first_poll: bool
    wait_timeout: float | None
    http_client: httpx.AsyncClient | None
    transport: httpx.AsyncBaseTransport | None
    timeout: httpx.Timeout
    request_timeout: float
    submit_timeout: float
    max_retries: int
    max_concurrent_submits: int
    max_concurrent_polls: int
    budget: RateBudget
    retry_uncertain_submits: bool
    not_found_grace: float
    rng: random.Random


def client_settings(api_key: str | None, options: Mapping[str, object]) -> ClientSettings:
    """Check a client's options and resolve them; nothing is sent.

    Raises:
        TypeError: An option that does not exist.
        ConfigurationError: No API key, or an unsafe or invalid base URL.
        InvalidRequestError: An option is out of range or of the wrong type.
    """
    unknown = sorted(set(options) - set(CLIENT_DEFAULTS))
    if unknown:
        raise TypeError(f"unexpected option(s) {', '.join(map(repr, unknown))}; see ClientOptions")
    given: dict[str, object] = {**CLIENT_DEFAULTS, **options}
    key = api_key if api_key is not None else os.environ.get("BANANA2_API_KEY")
    if not key or not key.strip():
        raise ConfigurationError("no API key: pass api_key=... or set the BANANA2_API_KEY environment variable")
    key = key.strip()
    if any(char.isspace() for char in key) or not key.isprintable():
        raise ConfigurationError("the API key contains whitespace or unprintable characters")
    if not key.isascii():
        # httpx would fail on the header with a bare UnicodeEncodeError at the first request.
        raise ConfigurationError("the API key contains non-ASCII characters")
    base_url = given["base_url"]
    url = check_base_url(
        str(base_url or os.environ.get("BANANA2_BASE_URL") or DEFAULT_BASE_URL),
        allow_insecure_http=check_bool(given["allow_insecure_http"], "allow_insecure_http"),
    )
    try:
        interval = parse_interval(given["poll_interval"])  # type: ignore[arg-type]
    except ValueError as exc:
        raise InvalidRequestError(str(exc), field="poll_interval") from None
    try:
        budget = RateBudget(given["rate_limit"])  # type: ignore[arg-type]
    except ValueError as exc:
        raise InvalidRequestError(str(exc), field="rate_limit") from None
    wait_timeout = given["wait_timeout"]
    try:
        rng = random.Random(given["seed"])  # type: ignore[arg-type]
    except TypeError:
        raise InvalidRequestError("seed must be an integer, a string or None", field="seed") from None
    return ClientSettings(
        api_key=key,
        base_url=url,
        interval=interval,
        learn_first_poll=check_bool(given["learn_first_poll"], "learn_first_poll"),
        wait_timeout=None if wait_timeout is None else check_seconds(wait_timeout, "wait_timeout"),
        http_client=given["http_client"],  # type: ignore[arg-type]
        transport=given["transport"],  # type: ignore[arg-type]
        timeout=_httpx_timeout(given["timeout"]),
        request_timeout=check_seconds(given["request_timeout"], "request_timeout"),
        submit_timeout=check_seconds(given["submit_timeout"], "submit_timeout"),
        max_retries=check_non_negative_int(given["max_retries"], "max_retries"),
        max_concurrent_submits=check_positive_int(given["max_concurrent_submits"], "max_concurrent_submits"),
        max_concurrent_polls=check_positive_int(given["max_concurrent_polls"], "max_concurrent_polls"),
        budget=budget,
        retry_uncertain_submits=check_bool(given["retry_uncertain_submits"], "retry_uncertain_submits"),
        not_found_grace=check_seconds(given["not_found_grace"], "not_found_grace", zero=True),
        rng=rng,
    )


def _httpx_timeout(value: object) -> httpx.Timeout:
    """``timeout`` as an ``httpx.Timeout``, each of its parts checked."""
    if isinstance(value, httpx.Timeout):
        for part, seconds in value.as_dict().items():
            if seconds is not None:
                check_seconds(seconds, f"timeout.{part}")
        return value
    return httpx.Timeout(check_seconds(value, "timeout"))


def wait_timeout_of(value: float | NotGiven | None, default: float | None) -> float | None:
    """A task's deadline in seconds: ``value`` checked, ``default`` when not given, ``None`` for none."""
    from ._types import NotGiven

    if isinstance(value, NotGiven):
        return default
    if value is None:
        return None
    return check_seconds(value, "wait_timeout")
