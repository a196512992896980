"""Request and response models: validated requests, tolerant answers.

Request models are strict and frozen: every documented rule is checked before
any I/O, with an `InvalidRequestError` naming the field. Response models are
tolerant: unknown fields are kept, and fields may be missing or null while a
task runs.

Each model builds its validator when first used, not at import
(``defer_build``), and the client imports this module on its first request
(see `_envelope` for the decoding that needs no model), so importing the SDK
stays cheap.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Final

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from ._envelope import EXCERPT_LIMIT, TaskState, classify_status, message_text
from ._exceptions import APIResponseError, EmptyResultError, InvalidRequestError
from ._types import ASPECT_RATIOS, OUTPUT_FORMATS, RESOLUTIONS, AspectRatio, OutputFormat, Resolution, TaskType
from ._validate import task_id_problem, url_problem

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "CREDITS",
    "MAX_IMAGES",
    "MAX_PROMPT_LENGTH",
    "GenerationRequest",
    "GenerationResult",
    "SubmitAccepted",
    "TaskInfo",
    "parse_submit",
    "parse_task",
]

logger = logging.getLogger("banana2_async")

MAX_PROMPT_LENGTH: Final = 5000
MAX_IMAGES: Final = 14
CREDITS: Final[Mapping[TaskType, int]] = {"text-to-image": 20, "edit": 24}


def _is_utf8(value: str) -> bool:
    # A lone surrogate is a valid str but no UTF-8: the JSON body could not be encoded.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class GenerationRequest(BaseModel):
    """One generation task, validated. Fields left ``None`` are not sent.

    Construct it with keyword arguments; an invalid value raises
    `InvalidRequestError` naming the field. ``type`` is detected as ``"edit"``
    when ``images`` are given (see `task_type`).
    """

    model_config: ClassVar[ConfigDict] = ConfigDict(frozen=True, strict=True, extra="forbid", defer_build=True)

    prompt: str
    type: TaskType | None = None
    images: tuple[str, ...] | None = None
    aspect_ratio: AspectRatio | None = None
    resolution: Resolution | None = None
    output_format: OutputFormat | None = None

    def __init__(self, **data: Any) -> None:
        with _field_errors():
            super().__init__(**data)

    @classmethod
    def model_validate(cls, *args: Any, **kwargs: Any) -> Self:
        """Validate a mapping (a JSONL row, say); raises `InvalidRequestError` naming the field."""
        with _field_errors():
            return super().model_validate(*args, **kwargs)

    @classmethod
    def model_validate_json(cls, *args: Any, **kwargs: Any) -> Self:
        """Validate a JSON document; raises `InvalidRequestError` naming the field."""
        with _field_errors():
            return super().model_validate_json(*args, **kwargs)

    @field_validator("prompt", mode="before")
    @classmethod
    def _check_prompt(cls, value: object) -> object:
        if not isinstance(value, str):
            raise ValueError("prompt must be a string")
        if not value.strip():
            raise ValueError("prompt must not be blank")
        if len(value) > MAX_PROMPT_LENGTH:
            raise ValueError(f"prompt is {len(value)} characters long; the API takes at most {MAX_PROMPT_LENGTH}")
        if not _is_utf8(value):
            raise ValueError("prompt holds a lone surrogate, which cannot be sent as UTF-8")
        return value

    @field_validator("type", mode="before")
    @classmethod
    def _check_type(cls, value: object) -> object:
        if value is None:
            return None
        if isinstance(value, str) and value.strip().lower() in ("text-to-image", "edit"):
            return value.strip().lower()
        raise ValueError(f"type must be 'text-to-image' or 'edit', not {value!r}")

    @field_validator("images", mode="before")
    @classmethod
    def _check_images(cls, value: object) -> object:
        if value is None:
            return None
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise ValueError("images must be a list of image URLs")
        if not value:
            # Sent as [], the server would detect an edit without images: 1 to 14, or leave it unset.
            raise ValueError("images must hold at least one URL; leave it unset for a text-to-image task")
        if len(value) > MAX_IMAGES:
            raise ValueError(f"images holds {len(value)} URLs; the API takes at most {MAX_IMAGES}")
        for index, url in enumerate(value):
            problem = url_problem(url)
            if problem is not None:
                raise ValueError(f"images[{index}] {problem}: {ascii(url)[:80]}")
        return tuple(value)

    @field_validator("aspect_ratio", mode="before")
    @classmethod
    def _check_aspect_ratio(cls, value: object) -> object:
        return _one_of(value, ASPECT_RATIOS, "aspect_ratio", normalise=str.strip)

    @field_validator("resolution", mode="before")
    @classmethod
    def _check_resolution(cls, value: object) -> object:
        return _one_of(value, RESOLUTIONS, "resolution", normalise=lambda s: s.strip().lower())

    @field_validator("output_format", mode="before")
    @classmethod
    def _check_output_format(cls, value: object) -> object:
        def normalise(text: str) -> str:
            lowered = text.strip().lower()
            return "jpeg" if lowered == "jpg" else lowered

        return _one_of(value, OUTPUT_FORMATS, "output_format", normalise=normalise)

    @model_validator(mode="after")
    def _check_type_and_images(self) -> GenerationRequest:
        if self.type == "edit" and not self.images:
            raise ValueError("images: an edit needs at least one image URL")
        if self.type == "text-to-image" and self.images:
            raise ValueError("images: a text-to-image task takes no images; use type='edit'")
        return self

    @property
    def task_type(self) -> TaskType:
        """The task's type: as given, else ``"edit"`` when images are given."""
        if self.type is not None:
            return self.type
        return "edit" if self.images else "text-to-image"

    @property
    def credits(self) -> int:
        """What the task costs: 20 credits for text-to-image, 24 for an edit."""
        return CREDITS[self.task_type]

    def to_wire(self) -> dict[str, Any]:
        """The JSON body of ``POST /api/generate``: only the fields that were set."""
        body: dict[str, Any] = {"prompt": self.prompt}
        if self.type is not None:
            body["type"] = self.type
        if self.images is not None:
            body["images"] = list(self.images)
        if self.aspect_ratio is not None:
            body["aspect_ratio"] = self.aspect_ratio
        if self.resolution is not None:
            body["resolution"] = self.resolution
        if self.output_format is not None:
            body["output_format"] = self.output_format
        return body


def _one_of(value: object, allowed: tuple[str, ...], field: str, *, normalise: Any) -> object:
    if value is None:
        return None
    if isinstance(value, str):
        candidate = normalise(value)
        if candidate in allowed:
            return candidate
    raise ValueError(f"{field} must be one of {', '.join(allowed)}; got {value!r:.40}")


@contextlib.contextmanager
def _field_errors() -> Iterator[None]:
    """Turn pydantic's `ValidationError` into `InvalidRequestError` naming the field."""
    try:
        yield
    except ValidationError as exc:
        raise _invalid(exc) from None


def _invalid(exc: ValidationError) -> InvalidRequestError:
    first = exc.errors(include_url=False)[0]
    # model_validate runs __init__ inside pydantic, which wraps the error __init__ already made.
    inner = (first.get("ctx") or {}).get("error")
    if isinstance(inner, InvalidRequestError):
        return inner
    location = first.get("loc") or ()
    field = str(location[0]) if location else None
    message = str(first.get("msg", "invalid value"))
    message = message.removeprefix("Value error, ")
    if field is None and ":" in message:
        field = message.split(":", 1)[0]
    if field is not None and not message.startswith(field):
        message = f"{field}: {message}"
    return InvalidRequestError(message, field=field)


class _Tolerant(BaseModel):
    """A response model: unknown fields are kept, so a new API field never breaks an old client."""

    model_config: ClassVar[ConfigDict] = ConfigDict(extra="allow", frozen=True, defer_build=True)


class SubmitAccepted(_Tolerant):
    """The ``data`` of a successful ``POST /api/generate``."""

    task_id: str
    type: str | None = None
    status: str | None = None


class TaskInfo(_Tolerant):
    """The ``data`` of ``GET /api/status``: one task as the server sees it.

    Unknown fields are kept (``model_extra``); listed ones may be ``None``
    while the task runs.
    """

    task_id: str
    status: str | None = None
    type: str | None = None
    model: str | None = None
    consumed_credits: int | None = None
    response: list[str] | None = None
    request: dict[str, Any] | None = None
    created_at: str | None = None
    error_detail: str | None = None

    @field_validator("response", mode="before")
    @classmethod
    def _one_url_is_a_list(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    @field_validator("status", "type", "model", "created_at", mode="before")
    @classmethod
    def _text_or_nothing(cls, value: object) -> object:
        # What the server says of a task beside its result: one of an impossible type is left out,
        # so that a finished task is never lost over it.
        return value if isinstance(value, str) else None

    @field_validator("consumed_credits", mode="before")
    @classmethod
    def _credits_or_nothing(cls, value: object) -> object:
        if type(value) is int:
            return value
        if type(value) is float and value.is_integer() and abs(value) < 2**53:
            return int(value)
        if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit() and len(value) <= 18:
            return int(value)
        return None

    @field_validator("request", mode="before")
    @classmethod
    def _mapping_or_nothing(cls, value: object) -> object:
        return value if isinstance(value, dict) else None

    @property
    def state(self) -> TaskState:
        """``"success"``, ``"failed"``, ``"running"`` or ``"unknown"``."""
        return classify_status(self.status)

    @property
    def images(self) -> list[str]:
        """The result image URLs; empty until the task succeeds."""
        return list(self.response or ())


class GenerationResult(BaseModel):
    """A finished task: its result image URLs, and the task as the server reported it."""

    model_config: ClassVar[ConfigDict] = ConfigDict(frozen=True, defer_build=True)

    task_id: str
    images: list[str]
    consumed_credits: int | None = None
    type: str | None = None
    model: str | None = None
    created_at: str | None = None
    info: TaskInfo

    @classmethod
    def from_info(cls, info: TaskInfo) -> GenerationResult:
        """The result of a task whose status is a success.

        Raises:
            EmptyResultError: The answer holds no usable image URL.
        """
        if not info.images:
            raise EmptyResultError(
                f"task {info.task_id} was reported as {info.status} but with no usable image URL",
                task_id=info.task_id,
                status=str(info.status),
                consumed_credits=info.consumed_credits,
            )
        return cls(
            task_id=info.task_id,
            images=info.images,
            consumed_credits=info.consumed_credits,
            type=info.type,
            model=info.model,
            created_at=info.created_at,
            info=info,
        )


def _usable_urls(response: object, task_id: str) -> list[str]:
    """The http(s) URLs in a status answer's ``response``; anything else in it is dropped, and logged."""
    listed = response if isinstance(response, list) else [response]
    urls = [item for item in listed if isinstance(item, str) and url_problem(item) is None]
    if len(urls) != len(listed):
        logger.warning(
            "task %s: %d of the %d result URLs in the answer are not usable http(s) URLs; they are left out",
            task_id,
            len(listed) - len(urls),
            len(listed),
        )
    return urls


def parse_submit(envelope: dict[str, Any], *, status_code: int = 200) -> SubmitAccepted:
    """The accepted task in a checked ``POST /api/generate`` envelope."""
    data: dict[str, Any] = envelope["data"]
    task_id = data.get("task_id")
    if task_id is None or task_id == "":
        raise APIResponseError(
            "the server accepted the task but sent no task_id",
            status_code=status_code,
            excerpt=json.dumps(data, default=str)[:EXCERPT_LIMIT],
        )
    problem = task_id_problem(task_id)
    if problem is not None:
        # Accepted, maybe charged, and impossible to poll: the caller must hear of it, with the id.
        raise APIResponseError(
            f"the server accepted the task but its task_id {problem}: {ascii(task_id)[:EXCERPT_LIMIT]}",
            status_code=status_code,
            excerpt=ascii(task_id)[:EXCERPT_LIMIT],
        )
    try:
        return SubmitAccepted.model_validate(data)
    except ValidationError as exc:
        raise APIResponseError(
            f"the submit answer does not match the documented shape: {exc.error_count()} problem(s)",
            status_code=status_code,
            excerpt=json.dumps(data, default=str)[:EXCERPT_LIMIT],
        ) from None


def parse_task(envelope: dict[str, Any], *, task_id: str, status_code: int = 200) -> TaskInfo:
    """The task in a checked ``GET /api/status`` envelope, with its failure message if any.

    A failed task's message is looked for in ``data.error``, ``data.error_message``,
    ``data.message``, then the envelope's ``error``, ``error_message`` and ``message``.
    """
    data: dict[str, Any] = envelope["data"]
    fields = dict(data)
    answered = fields.get("task_id")
    if answered is None or answered == "":
        fields["task_id"] = task_id
    elif answered != task_id:
        # A mixed-up proxy or cache: another task's answer must not be taken for this one's.
        raise APIResponseError(
            f"the status answer for task {task_id} is about another task, {ascii(answered)[:64]}",
            status_code=status_code,
        )
    if fields.get("response") is not None:
        fields["response"] = _usable_urls(fields["response"], task_id)
    envelope_message = envelope.get("message")
    if isinstance(envelope_message, str) and envelope_message.strip().lower() in ("success", "ok"):
        envelope_message = None
    fields["error_detail"] = (
        message_text(data.get("error"))
        or message_text(data.get("error_message"))
        or message_text(data.get("message"))
        or message_text(envelope.get("error"))
        or message_text(envelope.get("error_message"))
        or message_text(envelope_message)
    )
    try:
        return TaskInfo.model_validate(fields)
    except ValidationError as exc:
        raise APIResponseError(
            f"the status answer does not match the documented shape: {exc.errors(include_url=False)[0]['msg']}",
            status_code=status_code,
            excerpt=json.dumps(data, default=str)[:EXCERPT_LIMIT],
        ) from None
