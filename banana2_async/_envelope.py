"""The API's envelope, decoded without building a model.

Pure functions over bytes and dicts: which answers are errors (the envelope's
``code`` counts as much as the HTTP status), how a task's status maps to what
the poller does, and the fast paths of a poll. No pydantic here, so the wire
layer loads without the model machinery; `_models` builds the models.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final, Literal

from ._exceptions import APIResponseError, error_for_status

__all__ = [
    "CHECKED_FIELDS",
    "EXCERPT_LIMIT",
    "TaskState",
    "classify_status",
    "decode_envelope",
    "message_text",
    "ok_envelope",
    "plainly_running",
]

TaskState = Literal["success", "failed", "running", "unknown"]

_SUCCESS: Final = frozenset({"SUCCESS", "SUCCEEDED", "COMPLETED"})
_FAILED: Final = frozenset({"FAILED", "FAILURE", "ERROR", "CANCELLED", "CANCELED"})
_RUNNING: Final = frozenset(
    {"IN_PROGRESS", "PENDING", "QUEUED", "PROCESSING", "IN_QUEUE", "RUNNING", "STARTING", "SUBMITTED", "CREATED"}
)
_MESSAGE_LIMIT: Final = 500
EXCERPT_LIMIT: Final = 200


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
    return str(value)[:_MESSAGE_LIMIT]


def _excerpt(content: bytes) -> str:
    return content[:EXCERPT_LIMIT].decode("utf-8", errors="replace")


def _as_code(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def ok_envelope(content: bytes) -> dict[str, Any] | None:
    """The envelope of a 2xx answer that is plainly fine, else ``None``.

    Fine: a JSON object whose ``code`` is absent or below 300 and whose
    ``data`` is an object, exactly what `decode_envelope` lets through for a
    2xx status. It skips that function's error bookkeeping on the common
    path; for ``None``, `decode_envelope` says what is wrong.
    """
    try:
        body: Any = json.loads(content)
    except (ValueError, RecursionError):
        return None
    if type(body) is not dict or not isinstance(body.get("data"), dict):
        return None
    code = body.get("code")
    if code is not None and code != 200:
        parsed = _as_code(code)
        if parsed is not None and parsed >= 300:
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
        body: Any = json.loads(content)
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

    if not isinstance(body, dict):
        if status_code >= 400:
            raise error_for_status(status_code, f"HTTP {status_code}", body=body, request_id=request_id)
        raise APIResponseError(
            "the server's answer is not the documented envelope (a JSON object)",
            status_code=status_code,
            excerpt=_excerpt(content),
        )

    code = _as_code(body.get("code"))
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
        raise error_for_status(error_code, message, body=body, request_id=request_id, retry_after=retry_after)

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
    if isinstance(answered, str) and answered and answered != task_id:
        return False
    for key, value in data.items():
        if value is None or key not in CHECKED_FIELDS:
            continue
        if type(value) is str and key in _TEXT_FIELDS:
            continue
        return False
    return True
