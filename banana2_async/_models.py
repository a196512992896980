"""Request and response models, and the pure decoding of the API's envelope.

Request models are strict and frozen: every documented rule is checked before
any I/O, with an `InvalidRequestError` naming the field. Response models are
tolerant: unknown fields are kept, and fields may be missing or null while a
task runs.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from ._exceptions import APIResponseError, InvalidRequestError, error_for_status
from ._types import ASPECT_RATIOS, OUTPUT_FORMATS, RESOLUTIONS, AspectRatio, OutputFormat, Resolution, TaskType

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
    "TaskState",
    "classify_status",
    "decode_envelope",
    "ok_envelope",
    "parse_submit",
    "parse_task",
    "plainly_running",
]

MAX_PROMPT_LENGTH: Final = 5000
MAX_IMAGES: Final = 14
CREDITS: Final[Mapping[TaskType, int]] = {"text-to-image": 20, "edit": 24}

TaskState = Literal["success", "failed", "running", "unknown"]

_SUCCESS: Final = frozenset({"SUCCESS", "SUCCEEDED", "COMPLETED"})
_FAILED: Final = frozenset({"FAILED", "FAILURE", "ERROR", "CANCELLED", "CANCELED"})
_RUNNING: Final = frozenset(
    {"IN_PROGRESS", "PENDING", "QUEUED", "PROCESSING", "IN_QUEUE", "RUNNING", "STARTING", "SUBMITTED", "CREATED"}
)
_MESSAGE_LIMIT: Final = 500
_EXCERPT_LIMIT: Final = 200


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


def _is_utf8(value: str) -> bool:
    # A lone surrogate is a valid str but no UTF-8: the JSON body could not be encoded.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _is_http_url(value: str) -> bool:
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and _is_utf8(value)


class GenerationRequest(BaseModel):
    """One generation task, validated. Fields left ``None`` are not sent.

    Construct it with keyword arguments; an invalid value raises
    `InvalidRequestError` naming the field. ``type`` is detected as ``"edit"``
    when ``images`` are given (see `task_type`).
    """

    model_config: ClassVar[ConfigDict] = ConfigDict(frozen=True, strict=True, extra="forbid")

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
            if not isinstance(url, str) or not _is_http_url(url):
                raise ValueError(f"images[{index}] is not an http(s) URL: {url!r:.80}")
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

    model_config: ClassVar[ConfigDict] = ConfigDict(extra="allow", frozen=True)


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

    model_config: ClassVar[ConfigDict] = ConfigDict(frozen=True)

    task_id: str
    images: list[str]
    consumed_credits: int | None = None
    type: str | None = None
    model: str | None = None
    created_at: str | None = None
    info: TaskInfo

    @classmethod
    def from_info(cls, info: TaskInfo) -> GenerationResult:
        """The result of a task whose status is a success."""
        return cls(
            task_id=info.task_id,
            images=info.images,
            consumed_credits=info.consumed_credits,
            type=info.type,
            model=info.model,
            created_at=info.created_at,
            info=info,
        )


def _text(value: object) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, Mapping):
        value = value.get("message") or value.get("error") or json.dumps(value, default=str)
    return str(value)[:_MESSAGE_LIMIT]


def _excerpt(content: bytes) -> str:
    return content[:_EXCERPT_LIMIT].decode("utf-8", errors="replace")


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
            _text(body.get("message"))
            or _text(body.get("error"))
            or _text(body.get("error_message"))
            or (_text(data.get("error")) if isinstance(data, dict) else None)
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


def parse_submit(envelope: dict[str, Any], *, status_code: int = 200) -> SubmitAccepted:
    """The accepted task in a checked ``POST /api/generate`` envelope."""
    data: dict[str, Any] = envelope["data"]
    task_id = data.get("task_id")
    if not isinstance(task_id, str) or not task_id:
        raise APIResponseError(
            "the server accepted the task but sent no task_id",
            status_code=status_code,
            excerpt=json.dumps(data, default=str)[:_EXCERPT_LIMIT],
        )
    try:
        return SubmitAccepted.model_validate(data)
    except ValidationError as exc:
        raise APIResponseError(
            f"the submit answer does not match the documented shape: {exc.error_count()} problem(s)",
            status_code=status_code,
            excerpt=json.dumps(data, default=str)[:_EXCERPT_LIMIT],
        ) from None


def parse_task(envelope: dict[str, Any], *, task_id: str, status_code: int = 200) -> TaskInfo:
    """The task in a checked ``GET /api/status`` envelope, with its failure message if any.

    A failed task's message is looked for in ``data.error``, ``data.error_message``,
    ``data.message``, then the envelope's ``error``, ``error_message`` and ``message``.
    """
    data: dict[str, Any] = envelope["data"]
    fields = dict(data)
    if not isinstance(fields.get("task_id"), str) or not fields["task_id"]:
        fields["task_id"] = task_id
    envelope_message = envelope.get("message")
    if isinstance(envelope_message, str) and envelope_message.strip().lower() in ("success", "ok"):
        envelope_message = None
    fields["error_detail"] = (
        _text(data.get("error"))
        or _text(data.get("error_message"))
        or _text(data.get("message"))
        or _text(envelope.get("error"))
        or _text(envelope.get("error_message"))
        or _text(envelope_message)
    )
    try:
        return TaskInfo.model_validate(fields)
    except ValidationError as exc:
        raise APIResponseError(
            f"the status answer does not match the documented shape: {exc.errors(include_url=False)[0]['msg']}",
            status_code=status_code,
            excerpt=json.dumps(data, default=str)[:_EXCERPT_LIMIT],
        ) from None


# Listed fields a running answer may carry as a string (``response``: one URL) and still validate.
_TEXT_FIELDS: Final = frozenset({"status", "type", "model", "created_at", "response"})
# Listed fields whose value counts; ``task_id`` and ``error_detail`` are filled in by `parse_task` anyway.
_CHECKED_FIELDS: Final = frozenset(TaskInfo.model_fields) - {"task_id", "error_detail"}


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
        if value is None or key not in _CHECKED_FIELDS:
            continue
        if type(value) is str and key in _TEXT_FIELDS:
            continue
        return False
    return True
