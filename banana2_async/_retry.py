"""Pure retry decisions: is this failure retried for this endpoint, and after how long.

Nothing here reads a clock, sleeps or sends: the wire layer classifies what
happened into a `FailureKind` or a status code and asks. ``GET /api/status`` is
safe to repeat; ``POST /api/generate`` costs credits and has no idempotency
key, so it is repeated only where it cannot have reached the server or where
the server refused it.
"""

from __future__ import annotations

import email.utils
import math
import random
from typing import Final, Literal

from ._exceptions import (
    APIConnectionError,
    APIStatusError,
    Banana2Error,
    ConfigurationError,
    FailureKind,
    InvalidRequestError,
)

__all__ = [
    "Decision",
    "backoff",
    "outcome_of",
    "retry_after_seconds",
    "status_decision",
    "submit_decision",
]

Decision = Literal["retry", "uncertain", "raise"]

MAX_RETRY_AFTER: Final = 120.0


_NEVER_SENT: Final = frozenset(
    {FailureKind.CONNECT, FailureKind.CONNECT_TIMEOUT, FailureKind.POOL_TIMEOUT, FailureKind.NOT_SENT_IN_TIME}
)
_SUBMIT_REFUSED: Final = frozenset({429, 503})
_TRANSIENT_STATUS: Final = frozenset({408, 429})


def _is_transient_status(status_code: int) -> bool:
    return status_code in _TRANSIENT_STATUS or status_code >= 500


def submit_decision(outcome: FailureKind | int) -> Decision:
    """What to do after ``POST /api/generate`` failed with ``outcome``.

    ``outcome`` is a `FailureKind` or the error status (HTTP or envelope code).
    ``"retry"``: it cannot have been paid for (never sent, or refused with 429
    or 503). ``"uncertain"``: it may have landed and been paid for; the caller
    must be told rather than the request sent again, unless they opted in.
    ``"raise"``: a definite answer (400, 401, 402, ...).
    """
    if isinstance(outcome, FailureKind):
        if outcome in _NEVER_SENT:
            return "retry"
        if outcome is FailureKind.LOCAL:
            return "raise"
    elif outcome in _SUBMIT_REFUSED:
        return "retry"
    elif outcome < 500:
        return "raise"
    return "uncertain"


def status_decision(outcome: FailureKind | int) -> Decision:
    """What to do after ``GET /api/status`` failed: it is safe to repeat on any transient failure."""
    if isinstance(outcome, FailureKind):
        return "raise" if outcome is FailureKind.LOCAL else "retry"
    return "retry" if _is_transient_status(outcome) else "raise"


def backoff(attempt: int, *, rng: random.Random, base: float = 0.5, cap: float = 30.0) -> float:
    """Seconds to wait before retry number ``attempt + 1``: exponential, with jitter.

    Half of the exponential step is fixed and half is drawn, so waits grow
    steadily while retries of many callers spread out.
    """
    # The exponent is bounded so that a long run of failures reaches the cap, not an OverflowError.
    step = min(cap, base * math.pow(2.0, min(max(attempt, 0), 64)))
    return step / 2 + rng.uniform(0.0, step / 2)


def retry_after_seconds(value: str | None, *, now: float, cap: float = MAX_RETRY_AFTER) -> float | None:
    """Seconds asked for by a ``Retry-After`` header, capped at ``cap``.

    Accepts delta-seconds and HTTP dates; ``now`` is the current Unix time.
    Returns ``None`` for a missing or unreadable value.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
            if when.tzinfo is None:
                return None
            seconds = when.timestamp() - now
        except (TypeError, ValueError, IndexError, OverflowError):
            # A date no calendar holds (year 99999999999), or not a date at all.
            return None
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), cap)


def outcome_of(exc: Banana2Error) -> FailureKind | int:
    """The `FailureKind` or status code that a retry decision about ``exc`` is made on."""
    if isinstance(exc, (InvalidRequestError, ConfigurationError)):
        # Nothing another attempt could change: the request cannot be made.
        return FailureKind.LOCAL
    if isinstance(exc, APIStatusError):
        return exc.status_code
    if isinstance(exc, APIConnectionError):
        return exc.kind
    return FailureKind.BAD_RESPONSE
