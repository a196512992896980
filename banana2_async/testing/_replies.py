"""The simulator's answers as HTTP: routes, the documented envelope, and faults turned into replies."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Final

from ._faults import Endpoint, Fault

__all__ = ["Reply", "error", "fault_reply", "ok", "route", "with_extra_fields"]

_JSON_HEADERS: Final = (("content-type", "application/json"),)


@dataclass(frozen=True, slots=True)
class Reply:
    """One answer of the simulator, for a face to deliver.

    ``delay`` is how long to hold it back (real seconds); ``drop`` means close
    the connection instead of answering.
    """

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    delay: float = 0.0
    drop: bool = False


def route(path: str) -> tuple[Endpoint | None, tuple[str, ...]]:
    """The endpoint a path names and the methods it takes; ``None`` for an unknown path."""
    if path == "/api/generate":
        return "generate", ("POST",)
    if path == "/api/status":
        return "status", ("GET",)
    if path.startswith("/results/"):
        return "result", ("GET",)
    return None, ()


def _encode(envelope: Mapping[str, Any]) -> bytes:
    return json.dumps(envelope, separators=(",", ":")).encode("utf-8")


def ok(data: Mapping[str, Any]) -> Reply:
    """A successful answer: the envelope with code 200 around ``data``."""
    return Reply(200, _JSON_HEADERS, _encode({"code": 200, "message": "success", "data": data}))


def error(
    status: int, message: str, *, http_status: int | None = None, headers: tuple[tuple[str, str], ...] = ()
) -> Reply:
    """An error answer: the envelope with ``code`` and ``message``, sent as ``http_status`` (default: the code)."""
    body = _encode({"code": status, "message": message, "data": None})
    return Reply(http_status or status, _JSON_HEADERS + headers, body)


def _seconds(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:g}"


def fault_reply(fault: Fault) -> Reply:
    """The answer a fault gives in place of the real one (a drop gives none)."""
    if fault.kind == "drop":
        return Reply(0, (), b"", drop=True)
    if fault.kind == "rate_limit":
        headers = () if fault.retry_after is None else (("retry-after", _seconds(fault.retry_after)),)
        return error(429, fault.message, headers=headers)
    if fault.kind == "envelope_error":
        return error(fault.status, fault.message, http_status=200)
    return error(fault.status, fault.message)


def with_extra_fields(reply: Reply, fault: Fault) -> Reply:
    """``reply`` with the fault's undocumented fields added to its envelope and ``data``."""
    if reply.drop or not reply.body.startswith(b"{"):
        return reply
    envelope = json.loads(reply.body)
    envelope.update(fault.extra_envelope)
    if isinstance(envelope.get("data"), dict):
        envelope["data"].update(fault.extra_data)
    return replace(reply, body=_encode(envelope))
