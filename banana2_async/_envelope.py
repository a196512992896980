"""The API's envelope, decoded without building a model.

Pure functions over bytes and dicts: which answers are errors (the envelope's
``code`` counts as much as the HTTP status), how a task's status maps to what
the poller does, and the fast paths of a poll. No pydantic here, so the wire
layer loads without the model machinery; `_models` builds the models.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Final, Literal

from ._exceptions import APIResponseError, error_for_status

__all__ = [
    "CHECKED_FIELDS",
    "EXCERPT_LIMIT",
    "TaskState",
    "classify_status",
    "decode_envelope",
    "load_json",
    "message_text",
    "ok_envelope",
    "plainly_running",
    "readable",
]

TaskState = Literal["success", "failed", "running", "unknown"]

_SUCCESS: Final = frozenset({"SUCCESS", "SUCCEEDED", "COMPLETED"})
_FAILED: Final = frozenset({"FAILED", "FAILURE", "ERROR", "CANCELLED", "CANCELED"})
_RUNNING: Final = frozenset(
    {"IN_PROGRESS", "PENDING", "QUEUED", "PROCESSING", "IN_QUEUE", "RUNNING", "STARTING", "SUBMITTED", "CREATED"}
)
_MESSAGE_LIMIT: Final = 500
EXCERPT_LIMIT: Final = 200
# An error keeps the parsed body of an answer up to this size; a larger one only as an excerpt.
MAX_KEPT_BODY: Final = 4096
# A JSON escape of a surrogate: where one may stand alone, the decoded text is not valid Unicode.
_SURROGATE_ESCAPE: Final = re.compile(rb"\\u[dD][89abcdefABCDEF]")
_LONE_SURROGATE: Final = re.compile("[\ud800-\udfff]")
# Control characters other than tab and newline: shown as they are, a message could drive a terminal.
_CONTROL: Final = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# The envelope's ``code`` when it is there but no status code (``true``, ``"²⁰⁰"``, 5,000 digits, ...).
_GARBLED: Final = -1
_MISSING: Final = object()


def classify_status(status: object) -> TaskState:
    """Map a server status, in any case, to what the poller does with it."""
    if not isinstance(status, str):
        return "unknown"
    upper = status.strip().upper()
    if upper in _RUNNING:
        return "running"
    if upper in _SUCCESS:
        return "success"
    if upper in _FAILED:
        return "failed"
    return "unknown"


def message_text(value: object) -> str | None:
    """A message the server sent, as text cut to a readable length; ``None`` when empty."""
    if value is None or value == "":
        return None
    if isinstance(value, Mapping):
        value = value.get("message") or value.get("error") or json.dumps(value, default=str)
    return readable(str(value)[:_MESSAGE_LIMIT])


def readable(text: str) -> str:
    """``text`` with its control characters (a terminal's escape sequences among them) made U+FFFD."""
    return _CONTROL.sub("\ufffd", text)


def _excerpt(content: bytes) -> str:
    return readable(content[:EXCERPT_LIMIT].decode("utf-8", errors="replace"))


def _as_code(value: object) -> int | None:
    """The envelope's ``code`` as a status code; ``None`` when absent, `_GARBLED` when no status code."""
    if value is _MISSING:
        return None
    if type(value) is int:
        return value if 100 <= value <= 999 else _GARBLED
    if type(value) is float:
        return int(value) if value.is_integer() and 100 <= value <= 999 else _GARBLED
    if isinstance(value, str):
        text = value.strip()
        if len(text) == 3 and text.isascii() and text.isdigit() and text[0] != "0":
            return int(text)
    return _GARBLED


def _valid_text(value: str) -> str:
    return _LONE_SURROGATE.sub("\ufffd", value)


def _without_lone_surrogates(document: Any) -> Any:
    """``document`` with every lone surrogate in its strings (keys too) replaced by U+FFFD.

    Such a string is a valid ``str`` but no UTF-8: it could be neither
    logged, printed, stored nor put in a URL.
    """
    if isinstance(document, str):
        return _valid_text(document)
    root: list[Any] = [document]
    stack: list[tuple[Any, Any]] = [(root, 0)]
    while stack:
        container, key = stack.pop()
        value = container[key]
        if isinstance(value, str):
            container[key] = _valid_text(value)
        elif isinstance(value, list):
            stack.extend((value, index) for index in range(len(value)))
        elif isinstance(value, dict):
            if any(isinstance(name, str) and _LONE_SURROGATE.search(name) for name in value):
                value = container[key] = {_valid_text(name): item for name, item in value.items()}
            stack.extend((value, name) for name in value)
    return root[0]


def load_json(content: bytes) -> Any:
    """``json.loads``, with lone surrogates (a JSON ``"\\ud800"``) made U+FFFD.

    Raises `ValueError` (or `RecursionError`) for a body that is not JSON.
    """
    document = json.loads(content)
    if _SURROGATE_ESCAPE.search(content):
        document = _without_lone_surrogates(document)
    return document


def ok_envelope(content: bytes) -> dict[str, Any] | None:
    """The envelope of a 2xx answer that is plainly fine, else ``None``.

    Fine: a JSON object whose ``code`` is absent or below 300 and whose
    ``data`` is an object, exactly what `decode_envelope` lets through for a
    2xx status. It skips that function's error bookkeeping on the common
    path; for ``None``, `decode_envelope` says what is wrong.
    """
    try:
        body: Any = load_json(content)
    except (ValueError, RecursionError):
        return None
    if type(body) is not dict or not isinstance(body.get("data"), dict):
        return None
    code = body.get("code", _MISSING)
    if code != 200:
        parsed = _as_code(code)
        if parsed is not None and not 100 <= parsed < 300:
            return None
    return body


def decode_envelope(
    status_code: int,
    content: bytes,
    *,
    request_id: str | None = None,
    retry_after: float | None = None,
) -> dict[str, Any]:
    """Check an answer's HTTP status and envelope; return the envelope.

    The envelope's ``code`` counts as much as the HTTP status: HTTP 200 with
    ``"code": 402`` raises `InsufficientCreditsError`. An error status raises
    the matching `APIStatusError`; a body that is not the envelope raises
    `APIResponseError` with an excerpt.
    """
    try:
        body: Any = load_json(content)
    except (ValueError, RecursionError):
        body = None
        if status_code >= 400:
            message = f"HTTP {status_code}: {_excerpt(content)!r}" if content else f"HTTP {status_code}"
            raise error_for_status(status_code, message, request_id=request_id, retry_after=retry_after) from None
        raise APIResponseError(
            f"the server answered HTTP {status_code} with a body that is not JSON",
            status_code=status_code,
            excerpt=_excerpt(content),
        ) from None

    kept = body if len(content) <= MAX_KEPT_BODY else None
    if not isinstance(body, dict):
        if status_code >= 400:
            raise error_for_status(status_code, f"HTTP {status_code}", body=kept, request_id=request_id)
        raise APIResponseError(
            "the server's answer is not the documented envelope (a JSON object)",
            status_code=status_code,
            excerpt=_excerpt(content),
        )

    code = _as_code(body.get("code", _MISSING))
    if code == _GARBLED and status_code < 300:
        raise APIResponseError(
            f"the envelope's code is not a status code: {_excerpt(json.dumps(body.get('code'))[:60].encode())}",
            status_code=status_code,
            excerpt=_excerpt(content),
        )
    error_code = status_code if status_code >= 300 else (code if code is not None and code >= 300 else None)
    if error_code is not None:
        data = body.get("data")
        message = (
            message_text(body.get("message"))
            or message_text(body.get("error"))
            or message_text(body.get("error_message"))
            or (message_text(data.get("error")) if isinstance(data, dict) else None)
            or f"HTTP {error_code}"
        )
        raise error_for_status(error_code, message, body=kept, request_id=request_id, retry_after=retry_after)

    if not isinstance(body.get("data"), dict):
        raise APIResponseError(
            "the server's answer has no 'data' object",
            status_code=status_code,
            excerpt=_excerpt(content),
        )
    return body


# Listed fields a running answer may carry as a string (``response``: one URL) and still validate.
_TEXT_FIELDS: Final = frozenset({"status", "type", "model", "created_at", "response"})
# The fields of `TaskInfo` whose value counts (``task_id`` and ``error_detail`` are filled in by
# `parse_task` anyway); a test pins this set to the model's fields.
CHECKED_FIELDS: Final = frozenset({"status", "type", "model", "consumed_credits", "response", "request", "created_at"})


def plainly_running(data: Mapping[str, Any], task_id: str) -> bool:
    """Whether a status answer's ``data`` is task ``task_id`` in flight, and would parse as it is.

    True when the status is an in-flight one, the answer names no other task,
    and every listed field is ``None`` or a string where a string is valid,
    so `parse_task` would give a running `TaskInfo` of ``task_id`` and
    nothing else. The poller needs nothing more from such an answer, the
    common one, and skips building the model; every other answer takes the
    full path.
    """
    if classify_status(data.get("status")) != "running":
        return False
    answered = data.get("task_id")
    if answered is not None and answered != "" and answered != task_id:
        return False
    for key, value in data.items():
        if value is None or key not in CHECKED_FIELDS:
            continue
        if type(value) is str and key in _TEXT_FIELDS:
            continue
        return False
    return True
