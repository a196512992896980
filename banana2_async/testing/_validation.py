"""What ``POST /api/generate`` accepts, read from the API documentation alone.

The simulator judges a body by the documented fields and their exact values,
not by the SDK's request model: that model normalises what users type
(``"2K"`` to ``"2k"``, ``"jpg"`` to ``"jpeg"``), and a simulator built on it
would agree with the client by construction. Nothing here imports the SDK.

A body is refused (400) when, checked in this order:

- it is not UTF-8 JSON, or not a JSON object (``NaN`` and ``Infinity`` are no JSON);
- it names a field the documentation does not list (`FIELDS`);
- ``prompt`` is missing, not a string, blank, over 5000 characters, or holds a
  lone surrogate (a ``\\ud800`` escape), which is no Unicode text;
- ``type`` is given and is not exactly ``text-to-image`` or ``edit``;
- ``images`` is given and is not a list of at most 14 http(s) URLs;
- ``images`` is given with ``type: text-to-image``, or the task is an edit
  (given, or detected from ``images``) without at least one image;
- ``aspect_ratio``, ``resolution`` or ``output_format`` is given and is not
  exactly one of its documented values.

An optional field is left out, not sent as ``null``: ``null`` is a wrong type
like any other. Of two keys with the same name, the last one counts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final, Literal
from urllib.parse import urlsplit

__all__ = [
    "ASPECT_RATIOS",
    "CREDITS",
    "FIELDS",
    "MAX_IMAGES",
    "MAX_PROMPT_LENGTH",
    "OUTPUT_FORMATS",
    "RESOLUTIONS",
    "TASK_TYPES",
    "BadRequest",
    "GenerateBody",
    "TaskType",
    "read_generate_body",
]

TaskType = Literal["text-to-image", "edit"]

FIELDS: Final = ("prompt", "type", "images", "aspect_ratio", "resolution", "output_format")
TASK_TYPES: Final[tuple[TaskType, ...]] = ("text-to-image", "edit")
ASPECT_RATIOS: Final = ("1:1", "3:2", "2:3", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9")
RESOLUTIONS: Final = ("1k", "2k", "4k")
OUTPUT_FORMATS: Final = ("png", "jpeg")
MAX_PROMPT_LENGTH: Final = 5000
MAX_IMAGES: Final = 14
CREDITS: Final[Mapping[TaskType, int]] = {"text-to-image": 20, "edit": 24}

_SHOWN_LENGTH: Final = 40


class BadRequest(ValueError):
    """A body the API answers with 400; ``field`` names what is wrong, ``"body"`` for the body as a whole.

    The message starts with the field: ``"resolution: must be exactly one of 1k, 2k, 4k; got \\"2K\\""``.
    """

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


@dataclass(frozen=True, slots=True)
class GenerateBody:
    """A body ``POST /api/generate`` accepted, and the task it describes.

    ``sent`` holds the fields as they came, in the documentation's order
    (``images`` as a tuple); the other attributes are the task, its type
    detected and its defaults applied (``1:1``, ``1k``, ``png``).
    """

    sent: tuple[tuple[str, Any], ...]
    prompt: str
    type: TaskType
    images: tuple[str, ...]
    aspect_ratio: str
    resolution: str
    output_format: str

    @property
    def credits(self) -> int:
        """What the task costs: 20 credits for text-to-image, 24 for an edit."""
        return CREDITS[self.type]

    def as_sent(self) -> dict[str, Any]:
        """The fields as sent, in the documentation's order: the ``request`` a poll shows."""
        return {name: list(value) if isinstance(value, tuple) else value for name, value in self.sent}


def read_generate_body(body: bytes) -> GenerateBody:
    """The task a ``POST /api/generate`` body describes; `BadRequest` if the documentation refuses it."""
    payload = _json_object(body)
    unknown = sorted(name for name in payload if name not in FIELDS)
    if unknown:
        listed = ", ".join(FIELDS)
        raise BadRequest(_clipped(unknown[0]), f"not a field of POST /api/generate, whose fields are {listed}")
    prompt = _prompt(payload)
    given_type = _exactly(payload, "type", TASK_TYPES)
    images = _images(payload)
    detected_edit = given_type is None and images is not None
    task_type: TaskType = "edit" if given_type == "edit" or detected_edit else "text-to-image"
    if task_type == "text-to-image" and images is not None:
        raise BadRequest("images", "a text-to-image task takes no images; send type 'edit', or leave images out")
    if task_type == "edit" and not images:
        got = "none" if images is None else "an empty list"
        raise BadRequest("images", f"an edit needs 1 to {MAX_IMAGES} image URLs; got {got}")
    aspect_ratio = _exactly(payload, "aspect_ratio", ASPECT_RATIOS)
    resolution = _exactly(payload, "resolution", RESOLUTIONS)
    output_format = _exactly(payload, "output_format", OUTPUT_FORMATS)
    sent = tuple((name, images if name == "images" else payload[name]) for name in FIELDS if name in payload)
    return GenerateBody(
        sent=sent,
        prompt=prompt,
        type=task_type,
        images=images or (),
        aspect_ratio=aspect_ratio or "1:1",
        resolution=resolution or "1k",
        output_format=output_format or "png",
    )


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("body", "not UTF-8") from None
    try:
        # Decimal keeps every number, however long; no field takes a number anyway.
        payload = json.loads(text, parse_int=Decimal, parse_float=Decimal, parse_constant=_no_constant)
    except RecursionError:
        raise BadRequest("body", "nested too deeply") from None
    except ValueError:
        raise BadRequest("body", "not valid JSON") from None
    if not isinstance(payload, dict):
        raise BadRequest("body", f"must be a JSON object with at least 'prompt'; got {_shown(payload)}")
    return payload


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is no JSON")


def _prompt(payload: Mapping[str, Any]) -> str:
    if "prompt" not in payload:
        raise BadRequest("prompt", "required")
    prompt = payload["prompt"]
    if not isinstance(prompt, str):
        raise BadRequest("prompt", f"must be a string; got {_shown(prompt)}")
    if not prompt.strip():
        raise BadRequest("prompt", "must not be blank")
    if len(prompt) > MAX_PROMPT_LENGTH:
        raise BadRequest("prompt", f"at most {MAX_PROMPT_LENGTH} characters; got {len(prompt)}")
    if not _is_unicode(prompt):
        raise BadRequest("prompt", "holds a lone surrogate, which is no Unicode text")
    return prompt


def _images(payload: Mapping[str, Any]) -> tuple[str, ...] | None:
    if "images" not in payload:
        return None
    images = payload["images"]
    if not isinstance(images, list):
        raise BadRequest("images", f"must be a list of image URLs; got {_shown(images)}")
    if len(images) > MAX_IMAGES:
        raise BadRequest("images", f"at most {MAX_IMAGES} image URLs; got {len(images)}")
    for index, url in enumerate(images):
        if not _is_image_url(url):
            raise BadRequest("images", f"item {index} must be an http(s) URL; got {_shown(url)}")
    return tuple(images)


def _exactly(payload: Mapping[str, Any], field: str, allowed: tuple[str, ...]) -> str | None:
    if field not in payload:
        return None
    value = payload[field]
    if isinstance(value, str) and value in allowed:
        return value
    raise BadRequest(field, f"must be exactly one of {', '.join(allowed)}; got {_shown(value)}")


def _is_image_url(value: object) -> bool:
    if not isinstance(value, str) or " " in value or not value.isprintable():
        return False
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _shown(value: object) -> str:
    """``value`` as a message shows it: JSON, clipped; a list or an object by its kind."""
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return _clipped(str(value) if isinstance(value, Decimal) else json.dumps(value))


def _clipped(text: str) -> str:
    return text if len(text) <= _SHOWN_LENGTH else f"{text[: _SHOWN_LENGTH - 3]}..."
