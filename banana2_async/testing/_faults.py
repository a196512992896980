"""What the simulator can get wrong on purpose, where, and how often.

A `Fault` says what goes wrong; `Simulator.inject` turns it into a
`FaultRule` that says on which endpoints and how many times or how often.
Each fault acts at one moment of a request:

- on arrival, instead of handling it (500, 429, a dropped connection, an error
  inside an HTTP 200 envelope, an error that echoes the caller's key, a
  ``Retry-After`` no clock can read);
- when a task is created by ``POST /api/generate`` (the task will fail or
  report odd statuses, or succeed without a usable image; or the answer is
  lost after the task was paid for);
- on the answer, whatever it is (it comes late or drips, inflates to a huge
  size, carries unknown fields, the caller's key or values no client expects).

A request meets at most one fault per moment: the first active rule, in the
order the rules were injected, that matches and whose probability draw hits.
"""

from __future__ import annotations

import importlib.util
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, get_args

__all__ = [
    "BOMB_ENCODINGS",
    "ECHO_FORMS",
    "ECHO_PLACES",
    "ENDPOINTS",
    "MISSING",
    "BombEncoding",
    "EchoForm",
    "EchoPlace",
    "Endpoint",
    "Fault",
    "FaultKind",
    "FaultRule",
    "Moment",
    "pick_fault",
]

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
    "compression_bomb",
    "drip",
    "echo_key",
    "poisoned_code",
    "poisoned_retry_after",
    "poisoned_result_url",
    "poisoned_task_id",
    "empty_success",
]
BombEncoding = Literal["gzip", "deflate", "br", "zstd"]
BOMB_ENCODINGS: Final[tuple[BombEncoding, ...]] = get_args(BombEncoding)
EchoForm = Literal["verbatim", "escaped_slashes", "unicode_escapes", "some_unicode_escapes", "percent_encoded"]
ECHO_FORMS: Final[tuple[EchoForm, ...]] = get_args(EchoForm)
EchoPlace = Literal["error", "header", "field", "failed_task"]
ECHO_PLACES: Final[tuple[EchoPlace, ...]] = get_args(EchoPlace)

_API: Final[frozenset[Endpoint]] = frozenset({"generate", "status"})
_ALL: Final[frozenset[Endpoint]] = frozenset(ENDPOINTS)
_GENERATE: Final[frozenset[Endpoint]] = frozenset({"generate"})

DEFAULT_EXTRA_ENVELOPE: Final[Mapping[str, Any]] = {"request_id": "sim-extra", "trace": {"region": "sim-1"}}
DEFAULT_EXTRA_DATA: Final[Mapping[str, Any]] = {"progress": 42, "queue_position": 0, "nsfw": False}
DEFAULT_BOMB_SIZE: Final = 1 << 30
DEFAULT_POISONED_RETRY_AFTER: Final = "Fri, 31 Dec 99999999999 23:59:59 GMT"

_ANSWER_KINDS: Final = frozenset(
    {"slow", "extra_fields", "compression_bomb", "drip", "poisoned_code", "poisoned_task_id"}
)
_CREATE_KINDS: Final = frozenset({"fail_task", "in_flight_statuses", "poisoned_result_url", "empty_success"})
_API_KINDS: Final = frozenset({"envelope_error", "extra_fields", "poisoned_code"})
_ECHO_MOMENTS: Final[Mapping[EchoPlace, Moment]] = {
    "error": "arrival",
    "header": "answer",
    "field": "answer",
    "failed_task": "create",
}
# The modules that make each encoding; httpx decodes br with either brotli module.
_ENCODERS: Final[Mapping[BombEncoding, tuple[str, ...]]] = {
    "gzip": (),
    "deflate": (),
    "br": ("brotli", "brotlicffi"),
    "zstd": ("zstandard",),
}


class _Missing:
    """The type of `MISSING`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()
"""A field left out of an answer altogether, as opposed to present and ``null``."""


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
    size: int = 0
    encoding: BombEncoding | None = None
    form: EchoForm | None = None
    where: EchoPlace | None = None
    value: Any = field(default=None, hash=False)

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

    @classmethod
    def compression_bomb(cls, size: int = DEFAULT_BOMB_SIZE, *, encoding: BombEncoding = "gzip") -> Fault:
        """Send the answer compressed with ``encoding`` so that it inflates to more than ``size`` bytes.

        The decoded body is ``size`` bytes of spaces (JSON whitespace), then
        the real answer; what travels is small (a GiB of gzip is about 1 MiB,
        of zstd about 32 KiB). ``encoding`` is ``"gzip"``, ``"deflate"``,
        ``"br"`` (needs brotli) or ``"zstd"`` (needs zstandard). The
        compressed padding is built once per size and encoding, and cached.

        Raises:
            ValueError: ``size`` is not a positive integer, or the encoding is unknown.
            ImportError: the module that makes ``encoding`` is not installed.
        """
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive number of bytes, not {size!r}")
        if encoding not in _ENCODERS:
            raise ValueError(f"encoding must be one of {', '.join(BOMB_ENCODINGS)}, not {encoding!r}")
        modules = _ENCODERS[encoding]
        if modules and not any(importlib.util.find_spec(name) for name in modules):
            raise ImportError(f"a {encoding} compression bomb needs {' or '.join(modules)} installed")
        return cls("compression_bomb", size=size, encoding=encoding)

    @classmethod
    def drip(cls, every: float = 0.5, *, size: int = 1) -> Fault:
        """Send the answer's body ``size`` bytes at a time, ``every`` seconds apart (real time).

        The status line and headers come at once; each piece of the body,
        the first included, comes ``every`` seconds after the one before.
        No single read waits long, so only a deadline on the whole request
        ends it. In-process, a pause longer than the request's read timeout
        raises `httpx.ReadTimeout`, as a socket would.
        """
        if not every >= 0:
            raise ValueError("every must not be negative")
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive number of bytes, not {size!r}")
        return cls("drip", seconds=every, size=size)

    @classmethod
    def echo_key(cls, form: EchoForm = "verbatim", *, where: EchoPlace = "error", status: int = 400) -> Fault:
        """Echo the caller's API key, taken from its ``Authorization`` header, back in an answer.

        ``form`` is how the key is written: ``"verbatim"``; ``"escaped_slashes"``
        (JSON's ``\\/`` for every ``/``); ``"unicode_escapes"`` (``\\uXXXX`` for
        every character); ``"some_unicode_escapes"`` (for every other one);
        ``"percent_encoded"``. ``where`` is where it goes:

        - ``"error"``: the answer is an error ``status`` whose message holds the key;
        - ``"header"``: the answer's ``x-request-id`` header holds it;
        - ``"field"``: the answer's ``data`` (or the envelope, when ``data`` is
          not an object) gets an undocumented ``api_key`` field holding it;
        - ``"failed_task"``: the next task fails with the key in ``data.error``.
        """
        if form not in ECHO_FORMS:
            raise ValueError(f"form must be one of {', '.join(ECHO_FORMS)}, not {form!r}")
        if where not in ECHO_PLACES:
            raise ValueError(f"where must be one of {', '.join(ECHO_PLACES)}, not {where!r}")
        if not 400 <= status <= 599:
            raise ValueError(f"an error echoing the key has a 4xx or 5xx status, not {status}")
        return cls("echo_key", status=status, form=form, where=where)

    @classmethod
    def poisoned_code(cls, value: Any) -> Fault:
        """Make the envelope's ``code`` ``value``: any JSON value, an int of any length included.

        The rest of the answer is what it would have been; on
        ``POST /api/generate`` the task is created and paid for all the same.
        """
        return cls("poisoned_code", value=value)

    @classmethod
    def poisoned_retry_after(cls, value: str = DEFAULT_POISONED_RETRY_AFTER, *, status: int = 429) -> Fault:
        """Answer ``status`` (429 by default, or 503) with ``Retry-After: value``, e.g. a date in year 99999999999.

        ``value`` must be printable ASCII: both faces carry it as it is.
        """
        if not (value.isascii() and value.isprintable()):
            raise ValueError("a Retry-After value must be printable ASCII")
        if not 400 <= status <= 599:
            raise ValueError(f"an answer with Retry-After has a 4xx or 5xx status, not {status}")
        return cls("poisoned_retry_after", status=status, value=value, message="try again later")

    @classmethod
    def poisoned_result_url(cls, url: str) -> Fault:
        """Make the next task succeed with ``response: [url]``: a lone surrogate, control characters, anything."""
        return cls("poisoned_result_url", value=[url])

    @classmethod
    def poisoned_task_id(cls, task_id: Any) -> Fault:
        """Make the ``POST /api/generate`` answer name ``task_id`` (any JSON value) instead of the task created.

        The real task is created and paid for all the same.
        """
        return cls("poisoned_task_id", value=task_id)

    @classmethod
    def empty_success(cls, response: Any = MISSING) -> Fault:
        """Make the next task succeed, and charge for it, with ``response`` in place of its image URLs.

        `MISSING` (the default) leaves ``response`` out; any JSON value
        (``None``, ``[]``, ``["ftp://x"]``, ``[""]``, ``[123]``) is sent as it is.
        """
        return cls("empty_success", value=response)

    @property
    def moment(self) -> Moment:
        """When the fault acts: on ``"arrival"``, at task ``"create"``, or on the ``"answer"``."""
        if self.where is not None:
            return _ECHO_MOMENTS[self.where]
        if self.kind in _ANSWER_KINDS:
            return "answer"
        if self.kind in _CREATE_KINDS or self.after_create:
            return "create"
        return "arrival"

    @property
    def endpoints(self) -> frozenset[Endpoint]:
        """The endpoints the fault can act on."""
        if self.moment == "create" or self.kind == "poisoned_task_id":
            return _GENERATE
        if self.kind in _API_KINDS or self.where == "field":
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
