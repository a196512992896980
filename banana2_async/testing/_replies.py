"""The simulator's answers as HTTP: routes, the documented envelope, and faults turned into replies."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Final

from ._faults import Endpoint, Fault
from ._hostile import BOMB_PIECE, MARKER, echo_text, inflating_body, json_text

__all__ = ["Reply", "answer_fault", "compression_bomb", "error", "fault_reply", "ok", "route", "with_extra_fields"]

_JSON_HEADERS: Final = (("content-type", "application/json"),)


@dataclass(frozen=True, slots=True)
class Reply:
    """One answer of the simulator, for a face to deliver.

    ``delay`` is how long to hold it back (real seconds); ``drop`` means close
    the connection instead of answering. With ``chunk`` set, the body goes out
    in pieces of that many bytes, each ``every`` seconds after the one before
    (the first one too); otherwise in one piece.
    """

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    delay: float = 0.0
    drop: bool = False
    chunk: int = 0
    every: float = 0.0


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


def fault_reply(fault: Fault, key: str = "") -> Reply:
    """The answer a fault gives in place of the real one (a drop gives none); ``key`` is the caller's API key."""
    if fault.kind == "drop":
        return Reply(0, (), b"", drop=True)
    if fault.kind == "rate_limit":
        headers = () if fault.retry_after is None else (("retry-after", _seconds(fault.retry_after)),)
        return error(429, fault.message, headers=headers)
    if fault.kind == "poisoned_retry_after":
        return error(fault.status, fault.message, headers=(("retry-after", str(fault.value)),))
    if fault.kind == "envelope_error":
        return error(fault.status, fault.message, http_status=200)
    if fault.kind == "echo_key" and fault.form is not None:
        reply = error(fault.status, f"invalid request for the API key {MARKER}")
        return replace(reply, body=_fill(reply.body, echo_text(key, fault.form, in_json=True)))
    return error(fault.status, fault.message)


def _fill(body: bytes, text: str) -> bytes:
    return body.replace(MARKER.encode(), text.encode("utf-8"))


def answer_fault(reply: Reply, fault: Fault, key: str = "") -> Reply:
    """``reply`` as an answer fault changes it; ``key`` is the caller's API key.

    A compression bomb is not applied here: it may need a rendered image,
    and building one costs time (see `compression_bomb`).
    """
    if fault.kind == "slow":
        return replace(reply, delay=fault.seconds)
    if fault.kind == "drip":
        return replace(reply, chunk=fault.size, every=fault.seconds)
    if fault.kind == "extra_fields":
        return with_extra_fields(reply, fault)
    if fault.where == "header" and fault.form is not None:
        request_id = f"req-{echo_text(key, fault.form, in_json=False)}"
        kept = tuple(header for header in reply.headers if header[0] != "x-request-id")
        return replace(reply, headers=(*kept, ("x-request-id", request_id)))
    envelope = _envelope(reply)
    if envelope is None:
        return reply
    if fault.kind == "poisoned_code":
        envelope["code"] = MARKER
        return replace(reply, body=_encode(envelope).replace(f'"{MARKER}"'.encode(), json_text(fault.value).encode()))
    data = envelope.get("data")
    if fault.kind == "poisoned_task_id" and isinstance(data, dict) and "task_id" in data:
        data["task_id"] = fault.value
        return replace(reply, body=_encode(envelope))
    if fault.where == "field" and fault.form is not None:
        (data if isinstance(data, dict) else envelope)["api_key"] = MARKER
        return replace(reply, body=_fill(_encode(envelope), echo_text(key, fault.form, in_json=True)))
    return reply


def compression_bomb(reply: Reply, fault: Fault) -> Reply:
    """``reply`` with its body compressed behind a huge padding, to be sent in socket-sized pieces."""
    if reply.drop or fault.encoding is None:
        return reply
    kept = tuple(header for header in reply.headers if header[0] not in ("content-encoding", "content-length"))
    return replace(
        reply,
        headers=(*kept, ("content-encoding", fault.encoding)),
        body=inflating_body(reply.body, fault.encoding, fault.size),
        chunk=BOMB_PIECE,
        every=0.0,
    )


def _envelope(reply: Reply) -> dict[str, Any] | None:
    if reply.drop or not reply.body.startswith(b"{"):
        return None
    envelope = json.loads(reply.body)
    return envelope if isinstance(envelope, dict) else None


def with_extra_fields(reply: Reply, fault: Fault) -> Reply:
    """``reply`` with the fault's undocumented fields added to its envelope and ``data``."""
    envelope = _envelope(reply)
    if envelope is None:
        return reply
    envelope.update(fault.extra_envelope)
    if isinstance(envelope.get("data"), dict):
        envelope["data"].update(fault.extra_data)
    return replace(reply, body=_encode(envelope))
