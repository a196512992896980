"""Checks of arguments and of server-chosen values, shared by every layer.

Each ``*_problem`` function says what is wrong with a value in a few words,
or ``None`` when it is fine; callers raise the error their context calls for
(`InvalidRequestError` for an argument, before any I/O; `APIResponseError`
for an answer). The ``check_*`` functions raise `InvalidRequestError`
naming the field. Pure: no I/O, no pydantic.
"""

from __future__ import annotations

import math
import re
from typing import Final
from urllib.parse import urlsplit

from ._exceptions import InvalidRequestError

__all__ = [
    "MAX_TASK_ID_LENGTH",
    "MAX_URL_LENGTH",
    "check_bool",
    "check_non_negative_int",
    "check_positive_int",
    "check_seconds",
    "check_task_id",
    "task_id_problem",
    "url_problem",
]

MAX_TASK_ID_LENGTH: Final = 512
"""The longest task id the SDK sends or accepts; the API's ids are a few dozen characters."""
MAX_URL_LENGTH: Final = 8192
"""The longest image URL the SDK sends or accepts; signed URLs run to a couple of thousand."""

# Whitespace and control characters never stand in a URL as they are (they must be percent-encoded).
_NOT_IN_URL: Final = re.compile(r"[\s\x00-\x1f\x7f-\x9f\ufffd]")


def _shown(value: object) -> str:
    """``value`` as an error message shows it: a short repr, whatever it is."""
    try:
        return repr(value)[:40]
    except ValueError:
        # An int too long for repr (Python limits int-to-text conversion).
        return "a number too long to show"


def task_id_problem(value: object) -> str | None:
    """What makes ``value`` unusable as a task id (it must go into a status URL), or ``None``."""
    if not isinstance(value, str):
        return f"is not a string but {type(value).__name__}"
    if not value.strip():
        return "is empty"
    if len(value) > MAX_TASK_ID_LENGTH:
        return f"is {len(value)} characters long; at most {MAX_TASK_ID_LENGTH} are accepted"
    if not value.isprintable() or "\ufffd" in value:
        # Lone surrogates are not printable; U+FFFD is what the SDK reads them as from an answer.
        return "holds control characters or text that is not valid Unicode"
    return None


def url_problem(value: object) -> str | None:
    """What makes ``value`` no usable http(s) URL, or ``None``."""
    if not isinstance(value, str):
        return f"is not a string but {type(value).__name__}"
    if len(value) > MAX_URL_LENGTH:
        return f"is {len(value)} characters long; at most {MAX_URL_LENGTH} are accepted"
    if _NOT_IN_URL.search(value) or not value.isprintable():
        return "holds whitespace, control characters or text that is not valid Unicode"
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in ("http", "https"):
        return "is not an http(s) URL"
    if not parts.hostname:
        return "has no host"
    return None


def check_task_id(value: object) -> str:
    """``value`` if it is a usable task id; else `InvalidRequestError` for ``task_id``."""
    problem = task_id_problem(value)
    if problem is not None:
        raise InvalidRequestError(f"task_id {problem}", field="task_id")
    assert isinstance(value, str)
    return value


def check_bool(value: object, field: str) -> bool:
    """``value`` if it is ``True`` or ``False``; else `InvalidRequestError`."""
    if not isinstance(value, bool):
        raise InvalidRequestError(f"{field} must be True or False, got {_shown(value)}", field=field)
    return value


def check_positive_int(value: object, field: str) -> int:
    """``value`` if it is an int of 1 or more (not a bool); else `InvalidRequestError`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequestError(f"{field} must be a positive integer, got {_shown(value)}", field=field)
    return value


def check_non_negative_int(value: object, field: str) -> int:
    """``value`` if it is an int of 0 or more (not a bool); else `InvalidRequestError`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidRequestError(f"{field} must be 0 or more, got {_shown(value)}", field=field)
    return value


def check_seconds(value: object, field: str, *, zero: bool = False) -> float:
    """``value`` as a finite number of seconds, above 0 (or 0 too, with ``zero``); else `InvalidRequestError`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequestError(f"{field} must be a number of seconds, got {_shown(value)}", field=field)
    try:
        seconds = float(value)
    except OverflowError:
        seconds = math.inf
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not zero):
        bound = "0 or more" if zero else "above 0"
        message = f"{field} must be a finite number of seconds {bound}, got {_shown(value)}"
        raise InvalidRequestError(message, field=field)
    return seconds
