"""The pure retry decisions of `_retry.py`, tested as plain synchronous code: no event loop, no clock."""

from __future__ import annotations

import email.utils
import random

import pytest

from banana2_async import (
    APIConnectionError,
    APIResponseError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    Banana2Error,
    ConfigurationError,
    FailureKind,
    InsufficientCreditsError,
    InternalServerError,
    InvalidRequestError,
    NotFoundError,
    RateLimitError,
)
from banana2_async._retry import (
    MAX_RETRY_AFTER,
    Decision,
    backoff,
    outcome_of,
    retry_after_seconds,
    status_decision,
    submit_decision,
)

NOW = 1_700_000_000.0

# -- POST /api/generate: never pay twice ----------------------------------------------------------

SUBMIT_DECISIONS: list[tuple[FailureKind | int, Decision]] = [
    (FailureKind.CONNECT, "retry"),
    (FailureKind.CONNECT_TIMEOUT, "retry"),
    (FailureKind.POOL_TIMEOUT, "retry"),
    (FailureKind.LOCAL, "raise"),
    (FailureKind.READ_TIMEOUT, "uncertain"),
    (FailureKind.WRITE_TIMEOUT, "uncertain"),
    (FailureKind.NETWORK, "uncertain"),
    (FailureKind.BAD_RESPONSE, "uncertain"),
    (FailureKind.DEADLINE, "uncertain"),
    (FailureKind.NOT_SENT_IN_TIME, "retry"),
    (400, "raise"),
    (401, "raise"),
    (402, "raise"),
    (403, "raise"),
    (404, "raise"),
    (408, "raise"),
    (409, "raise"),
    (422, "raise"),
    (429, "retry"),
    (500, "uncertain"),
    (501, "uncertain"),
    (502, "uncertain"),
    (503, "retry"),
    (504, "uncertain"),
    (599, "uncertain"),
]


def test_every_failure_kind_has_a_submit_decision() -> None:
    """The submit table above names every `FailureKind`, so a new kind cannot slip through undecided."""
    assert {outcome for outcome, _ in SUBMIT_DECISIONS if isinstance(outcome, FailureKind)} == set(FailureKind)


@pytest.mark.parametrize(("outcome", "expected"), SUBMIT_DECISIONS)
def test_submit_decision(outcome: FailureKind | int, expected: Decision) -> None:
    """A submit is retried only if never sent or refused (429, 503); a maybe-landed one is uncertain."""
    assert submit_decision(outcome) == expected


STATUS_DECISIONS: list[tuple[FailureKind | int, Decision]] = [
    (FailureKind.CONNECT, "retry"),
    (FailureKind.CONNECT_TIMEOUT, "retry"),
    (FailureKind.POOL_TIMEOUT, "retry"),
    (FailureKind.LOCAL, "raise"),
    (FailureKind.READ_TIMEOUT, "retry"),
    (FailureKind.WRITE_TIMEOUT, "retry"),
    (FailureKind.NETWORK, "retry"),
    (FailureKind.BAD_RESPONSE, "retry"),
    (FailureKind.DEADLINE, "retry"),
    (FailureKind.NOT_SENT_IN_TIME, "retry"),
    (400, "raise"),
    (401, "raise"),
    (402, "raise"),
    (404, "raise"),
    (408, "retry"),
    (409, "raise"),
    (429, "retry"),
    (500, "retry"),
    (502, "retry"),
    (503, "retry"),
    (504, "retry"),
    (599, "retry"),
]


def test_every_failure_kind_has_a_status_decision() -> None:
    """The status table above names every `FailureKind`."""
    assert {outcome for outcome, _ in STATUS_DECISIONS if isinstance(outcome, FailureKind)} == set(FailureKind)


@pytest.mark.parametrize(("outcome", "expected"), STATUS_DECISIONS)
def test_status_decision(outcome: FailureKind | int, expected: Decision) -> None:
    """A status poll is retried on every transient failure (network, timeouts, 408, 429, 5xx), never on 4xx."""
    assert status_decision(outcome) == expected


# -- outcome_of -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (APIConnectionError("x", kind="connect"), FailureKind.CONNECT),
        (APITimeoutError("x", kind="connect-timeout"), FailureKind.CONNECT_TIMEOUT),
        (APITimeoutError("x", kind="pool-timeout"), FailureKind.POOL_TIMEOUT),
        (APITimeoutError("x", kind="read-timeout"), FailureKind.READ_TIMEOUT),
        (APITimeoutError("x", kind="write-timeout"), FailureKind.WRITE_TIMEOUT),
        (APIConnectionError("x", kind="network"), FailureKind.NETWORK),
        (APIConnectionError("x", kind="local"), FailureKind.LOCAL),
        (APIConnectionError("x", kind="something new"), FailureKind.NETWORK),
        (APIResponseError("x", status_code=200), FailureKind.BAD_RESPONSE),
        (BadRequestError("x", status_code=400), 400),
        (AuthenticationError("x", status_code=401), 401),
        (InsufficientCreditsError("x", status_code=402), 402),
        (NotFoundError("x", status_code=404), 404),
        (RateLimitError("x", retry_after=1.0), 429),
        (InternalServerError("x", status_code=502), 502),
    ],
)
def test_outcome_of(exc: Banana2Error, expected: FailureKind | int) -> None:
    """An error is reduced to the `FailureKind` or status a decision is made on; an unknown kind counts as network."""
    assert outcome_of(exc) == expected


def test_outcome_of_an_unknown_error_is_a_bad_response() -> None:
    """An error of no wire kind is treated as a bad answer: uncertain for a submit, retried for a poll."""
    assert outcome_of(APIResponseError("x")) is FailureKind.BAD_RESPONSE
    assert outcome_of(Banana2Error("x")) is FailureKind.BAD_RESPONSE


@pytest.mark.parametrize("exc", [ConfigurationError("x"), InvalidRequestError("task_id is empty", field="task_id")])
def test_a_request_that_cannot_be_made_is_not_retried(exc: Banana2Error) -> None:
    """A request that cannot be made (a task id no URL can hold, say) is raised at once, never retried."""
    assert outcome_of(exc) is FailureKind.LOCAL
    assert status_decision(outcome_of(exc)) == "raise"
    assert submit_decision(outcome_of(exc)) == "raise"


# -- backoff --------------------------------------------------------------------------------------


@pytest.mark.parametrize("attempt", range(8))
def test_backoff_stays_within_its_jitter_bounds(attempt: int) -> None:
    """Attempt n waits between half and all of min(cap, base * 2**n)."""
    rng = random.Random(1234)
    step = min(30.0, 0.5 * 2**attempt)
    for _ in range(500):
        delay = backoff(attempt, rng=rng)
        assert step / 2 <= delay <= step


def test_backoff_grows_exponentially_until_the_cap() -> None:
    """Each attempt's smallest possible wait is the previous one's largest, until the cap is reached."""
    rng = random.Random(7)
    lows = [min(backoff(n, rng=rng) for _ in range(200)) for n in range(10)]
    highs = [max(backoff(n, rng=rng) for _ in range(200)) for n in range(10)]
    for n in range(1, 6):
        assert lows[n] >= highs[n - 1] * 0.99
    assert highs[-1] <= 30.0
    assert lows[-1] >= 15.0


def test_backoff_is_jittered() -> None:
    """Two draws for the same attempt differ: many callers' retries spread out."""
    rng = random.Random(99)
    assert len({backoff(3, rng=rng) for _ in range(50)}) > 40


def test_backoff_is_reproducible_with_a_seeded_random() -> None:
    """The same seed gives the same waits."""
    first = [backoff(n, rng=random.Random(5)) for n in range(6)]
    second = [backoff(n, rng=random.Random(5)) for n in range(6)]
    assert first == second


def test_backoff_honours_base_and_cap() -> None:
    """``base`` scales the first step and ``cap`` bounds every step."""
    rng = random.Random(3)
    assert 1.0 <= backoff(0, rng=rng, base=2.0, cap=100.0) <= 2.0
    assert 2.5 <= backoff(10, rng=rng, base=2.0, cap=5.0) <= 5.0


def test_backoff_of_a_negative_attempt_is_the_first_step() -> None:
    """A negative attempt number is taken as the first attempt."""
    assert 0.25 <= backoff(-3, rng=random.Random(0)) <= 0.5


@pytest.mark.parametrize("attempt", [64, 1024, 1075, 10**6])
def test_backoff_of_a_huge_attempt_is_capped_not_an_overflow(attempt: int) -> None:
    """After very many failures (a long rate-limit spell) the wait is the cap, not an OverflowError."""
    assert 15.0 <= backoff(attempt, rng=random.Random(0)) <= 30.0


# -- Retry-After ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("0", 0.0),
        ("5", 5.0),
        ("1.5", 1.5),
        ("  7 ", 7.0),
        ("-3", 0.0),
        ("120", 120.0),
        ("121", MAX_RETRY_AFTER),
        ("86400", MAX_RETRY_AFTER),
        ("1e9", MAX_RETRY_AFTER),
        ("inf", MAX_RETRY_AFTER),
        ("9" * 5000, MAX_RETRY_AFTER),
        ("-" + "9" * 5000, 0.0),
    ],
)
def test_retry_after_in_seconds(header: str, expected: float) -> None:
    """Retry-After as delta-seconds, floored at 0 and capped."""
    assert retry_after_seconds(header, now=NOW) == expected


def test_retry_after_as_an_http_date() -> None:
    """Retry-After as an HTTP date is the seconds from ``now`` to it."""
    header = email.utils.formatdate(NOW + 42, usegmt=True)
    assert retry_after_seconds(header, now=NOW) == pytest.approx(42.0)


def test_retry_after_as_an_http_date_in_the_past_is_zero() -> None:
    """A date already past means: retry now."""
    header = email.utils.formatdate(NOW - 600, usegmt=True)
    assert retry_after_seconds(header, now=NOW) == 0.0


def test_retry_after_as_a_far_http_date_is_capped() -> None:
    """A date hours away is capped like delta-seconds."""
    header = email.utils.formatdate(NOW + 7200, usegmt=True)
    assert retry_after_seconds(header, now=NOW) == MAX_RETRY_AFTER


def test_retry_after_cap_is_configurable() -> None:
    """``cap`` bounds the wait."""
    assert retry_after_seconds("50", now=NOW, cap=10.0) == 10.0


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "   ",
        "soon",
        "nan",
        "5 seconds",
        "Wed, 32 Foo 2015 99:99:99 GMT",
        "Wed, 21 Oct 2015 07:28:00 -0000",
        "\x00\x01",
        "Mon, 01 Jan 99999999999 00:00:00 GMT",
        "Fri, 31 Dec 9999999 23:59:59 GMT",
        "Thu, 01 Jan 1970 00:00:00 +99999999",
        "Sun, 06 Dec 2026 99999999999:00:00 GMT",
    ],
)
def test_retry_after_garbage_is_none(header: str | None) -> None:
    """A missing, unreadable or zone-less Retry-After gives ``None``: the caller backs off instead."""
    assert retry_after_seconds(header, now=NOW) is None
