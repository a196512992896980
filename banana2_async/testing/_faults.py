"""What the simulator can get wrong on purpose, where, and how often.

A `Fault` says what goes wrong; `Simulator.inject` turns it into a
`FaultRule` that says on which endpoints and how many times or how often.
Each fault acts at one moment of a request:

- on arrival, instead of handling it (500, 429, a dropped connection, an error
  inside an HTTP 200 envelope);
- when a task is created by ``POST /api/generate`` (the task will fail or
  report odd statuses; or the answer is lost after the task was paid for);
- on the answer, whatever it is (it comes late, or carries unknown fields).

A request meets at most one fault per moment: the first active rule, in the
order the rules were injected, that matches and whose probability draw hits.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

__all__ = ["ENDPOINTS", "Endpoint", "Fault", "FaultKind", "FaultRule", "Moment", "pick_fault"]

Endpoint = Literal["generate", "status", "result"]
ENDPOINTS: Final[tuple[Endpoint, ...]] = ("generate", "status", "result")
Moment = Literal["arrival", "create", "answer"]
FaultKind = Literal[
    "server_error",
    "rate_limit",
    "drop",
    "envelope_error",
    "slow",
    "extra_fields",
    "fail_task",
    "in_flight_statuses",
]

_API: Final[frozenset[Endpoint]] = frozenset({"generate", "status"})
_ALL: Final[frozenset[Endpoint]] = frozenset(ENDPOINTS)
_GENERATE: Final[frozenset[Endpoint]] = frozenset({"generate"})

DEFAULT_EXTRA_ENVELOPE: Final[Mapping[str, Any]] = {"request_id": "sim-extra", "trace": {"region": "sim-1"}}
DEFAULT_EXTRA_DATA: Final[Mapping[str, Any]] = {"progress": 42, "queue_position": 0, "nsfw": False}


@dataclass(frozen=True, slots=True)
class Fault:
    """One thing that goes wrong. Build it with the class methods, e.g. ``Fault.rate_limit(2.0)``."""

    kind: FaultKind
    status: int = 500
    message: str = ""
    after_create: bool = False
    retry_after: float | None = None
    seconds: float = 0.0
    statuses: tuple[str, ...] = ()
    extra_envelope: Mapping[str, Any] = field(default_factory=dict, hash=False)
    extra_data: Mapping[str, Any] = field(default_factory=dict, hash=False)

    @classmethod
    def server_error(cls, status: int = 500, *, after_create: bool = False, message: str = "") -> Fault:
        """Answer with an HTTP 5xx error.

        With ``after_create=True`` (``POST /api/generate`` only) the task is
        created and paid for first: the ambiguous case, where the caller cannot
        know whether its request landed.
        """
        if not 500 <= status <= 599:
            raise ValueError(f"a server error has a 5xx status, not {status}")
        return cls("server_error", status=status, after_create=after_create, message=message or "internal server error")

    @classmethod
    def rate_limit(cls, retry_after: float | None = 1.0) -> Fault:
        """Answer 429; with a ``Retry-After`` header of ``retry_after`` seconds unless it is None."""
        if retry_after is not None and retry_after < 0:
            raise ValueError("retry_after must not be negative")
        return cls("rate_limit", status=429, retry_after=retry_after, message="too many requests")

    @classmethod
    def drop(cls, *, after_create: bool = False) -> Fault:
        """Close the connection without an answer.

        With ``after_create=True`` (``POST /api/generate`` only) the task is
        created and paid for before the connection drops.
        """
        return cls("drop", after_create=after_create)

    @classmethod
    def envelope_error(cls, code: int = 500, message: str = "internal error") -> Fault:
        """Answer HTTP 200 with an error inside the envelope: ``{"code": code, "message": message}``."""
        return cls("envelope_error", status=code, message=message)

    @classmethod
    def slow(cls, seconds: float) -> Fault:
        """Hold the answer back for ``seconds`` (real time), after the request took effect."""
        if seconds < 0:
            raise ValueError("seconds must not be negative")
        return cls("slow", seconds=seconds)

    @classmethod
    def extra_fields(cls, envelope: Mapping[str, Any] | None = None, data: Mapping[str, Any] | None = None) -> Fault:
        """Add undocumented fields to the envelope and to its ``data`` object."""
        return cls(
            "extra_fields",
            extra_envelope=dict(DEFAULT_EXTRA_ENVELOPE if envelope is None else envelope),
            extra_data=dict(DEFAULT_EXTRA_DATA if data is None else data),
        )

    @classmethod
    def fail_task(cls, message: str = "generation failed: content policy violation", status: str = "FAILED") -> Fault:
        """Make the created task end with ``status`` (e.g. ``FAILED``, ``error``) and ``message`` in ``data.error``."""
        return cls("fail_task", message=message, statuses=(status,))

    @classmethod
    def in_flight_statuses(cls, statuses: Iterable[str] = ("QUEUED", "PROCESSING")) -> Fault:
        """Make the created task report ``statuses`` in turn before ``IN_PROGRESS``."""
        chosen = tuple(statuses)
        if not chosen:
            raise ValueError("give at least one status")
        return cls("in_flight_statuses", statuses=chosen)

    @property
    def moment(self) -> Moment:
        """When the fault acts: on ``"arrival"``, at task ``"create"``, or on the ``"answer"``."""
        if self.kind in ("slow", "extra_fields"):
            return "answer"
        if self.kind in ("fail_task", "in_flight_statuses") or self.after_create:
            return "create"
        return "arrival"

    @property
    def endpoints(self) -> frozenset[Endpoint]:
        """The endpoints the fault can act on."""
        if self.moment == "create":
            return _GENERATE
        if self.kind in ("envelope_error", "extra_fields"):
            return _API
        return _ALL


class FaultRule:
    """An injected fault: where it acts, how many more times, and how likely.

    Returned by `Simulator.inject`. ``fired`` counts the requests it hit.
    """

    __slots__ = ("_fired", "_remaining", "endpoints", "fault", "probability")

    def __init__(
        self,
        fault: Fault,
        *,
        endpoints: frozenset[Endpoint],
        times: int | None = None,
        probability: float | None = None,
    ) -> None:
        if times is not None and times < 0:
            raise ValueError("times must not be negative")
        if probability is not None and not 0.0 <= probability <= 1.0:
            raise ValueError("probability must be between 0 and 1")
        self.fault: Fault = fault
        self.endpoints: frozenset[Endpoint] = endpoints
        self.probability: float | None = probability
        self._remaining = times
        self._fired = 0

    def __repr__(self) -> str:
        return (
            f"FaultRule({self.fault.kind!r}, endpoints={sorted(self.endpoints)}, "
            f"remaining={self._remaining}, probability={self.probability}, fired={self._fired})"
        )

    @property
    def fired(self) -> int:
        """How many requests this rule hit."""
        return self._fired

    @property
    def remaining(self) -> int | None:
        """How many more times it may fire; None for no limit."""
        return self._remaining

    @property
    def active(self) -> bool:
        """Whether it may still fire."""
        return self._remaining is None or self._remaining > 0

    def cancel(self) -> None:
        """Stop the rule from firing again."""
        self._remaining = 0

    def _fire(self, endpoint: Endpoint, moment: Moment, rng: random.Random) -> bool:
        if not self.active or endpoint not in self.endpoints or self.fault.moment != moment:
            return False
        # Scripted rules draw no number, so adding one leaves every other draw of a seeded run unchanged.
        if self.probability is not None and rng.random() >= self.probability:
            return False
        if self._remaining is not None:
            self._remaining -= 1
        self._fired += 1
        return True


def pick_fault(rules: Iterable[FaultRule], endpoint: Endpoint, moment: Moment, rng: random.Random) -> Fault | None:
    """The fault a request meets at ``moment``, if any: the first rule that fires."""
    for rule in rules:
        if rule._fire(endpoint, moment, rng):
            return rule.fault
    return None
