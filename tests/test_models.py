"""Request validation, the wire body, tolerant responses and the pure envelope decoding of `_models.py`."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import respx
from pydantic import ValidationError

from banana2_async import (
    APIResponseError,
    APIStatusError,
    AsyncBanana2,
    AuthenticationError,
    BadRequestError,
    Banana2Error,
    GenerationRequest,
    GenerationResult,
    InsufficientCreditsError,
    InternalServerError,
    InvalidRequestError,
    NotFoundError,
    RateLimitError,
    TaskInfo,
)
from banana2_async._envelope import classify_status, decode_envelope, ok_envelope
from banana2_async._models import MAX_IMAGES, MAX_PROMPT_LENGTH, parse_submit, parse_task
from banana2_async._validate import MAX_URL_LENGTH

BASE = "https://banana2api.com"
KEY = "sk-models-test"
URL = "https://example.com/cat.jpg"


def _envelope(data: Any, *, code: Any = 200, message: str = "success") -> bytes:
    return json.dumps({"code": code, "message": message, "data": data}).encode()


# -- requests: every field validated, naming the field ------------------------------------------

INVALID: list[tuple[str, dict[str, Any]]] = [
    ("prompt", {"prompt": ""}),
    ("prompt", {"prompt": "   "}),
    ("prompt", {"prompt": "\n\t "}),
    ("prompt", {"prompt": "x" * (MAX_PROMPT_LENGTH + 1)}),
    ("prompt", {"prompt": 123}),
    ("prompt", {"prompt": None}),
    ("prompt", {"prompt": b"a red fox"}),
    ("prompt", {"prompt": ["a red fox"]}),
    ("prompt", {"prompt": "a red \ud800 fox"}),
    ("prompt", {}),
    ("images", {"prompt": "p", "images": [URL] * (MAX_IMAGES + 1)}),
    ("images", {"prompt": "p", "images": URL}),
    ("images", {"prompt": "p", "images": URL.encode()}),
    ("images", {"prompt": "p", "images": {"url": URL}}),
    ("images", {"prompt": "p", "images": 42}),
    ("images", {"prompt": "p", "images": ["ftp://example.com/cat.jpg"]}),
    ("images", {"prompt": "p", "images": ["file:///etc/passwd"]}),
    ("images", {"prompt": "p", "images": ["javascript:alert(1)"]}),
    ("images", {"prompt": "p", "images": ["example.com/cat.jpg"]}),
    ("images", {"prompt": "p", "images": ["https://"]}),
    ("images", {"prompt": "p", "images": ["http://[::1"]}),
    ("images", {"prompt": "p", "images": ["https://example.com/a cat.jpg"]}),
    ("images", {"prompt": "p", "images": [" https://example.com/cat.jpg"]}),
    ("images", {"prompt": "p", "images": ["https://example.com/cat.jpg\n"]}),
    ("images", {"prompt": "p", "images": ["https://example.com/\x00cat.jpg"]}),
    ("images", {"prompt": "p", "images": ["https://example.com/\x7fcat.jpg"]}),
    ("images", {"prompt": "p", "images": ["https://example.com/\ud800.jpg"]}),
    ("images", {"prompt": "p", "images": ["https://example.com:99999/cat.jpg"]}),
    ("images", {"prompt": "p", "images": ["https://example.com:port/cat.jpg"]}),
    ("images", {"prompt": "p", "images": ["https://example.com/" + "x" * 8200]}),
    ("images", {"prompt": "p", "images": [URL, 7]}),
    ("images", {"prompt": "p", "images": [URL, None]}),
    ("images", {"prompt": "p", "images": []}),
    ("images", {"prompt": "p", "type": "edit"}),
    ("images", {"prompt": "p", "type": "edit", "images": None}),
    ("images", {"prompt": "p", "type": "text-to-image", "images": [URL]}),
    ("type", {"prompt": "p", "type": "inpaint"}),
    ("type", {"prompt": "p", "type": 1}),
    ("aspect_ratio", {"prompt": "p", "aspect_ratio": "1:2"}),
    ("aspect_ratio", {"prompt": "p", "aspect_ratio": "16x9"}),
    ("aspect_ratio", {"prompt": "p", "aspect_ratio": ""}),
    ("aspect_ratio", {"prompt": "p", "aspect_ratio": 1.5}),
    ("resolution", {"prompt": "p", "resolution": "8k"}),
    ("resolution", {"prompt": "p", "resolution": "2048"}),
    ("resolution", {"prompt": "p", "resolution": 2}),
    ("output_format", {"prompt": "p", "output_format": "webp"}),
    ("output_format", {"prompt": "p", "output_format": "gif"}),
    ("output_format", {"prompt": "p", "output_format": True}),
    ("seed", {"prompt": "p", "seed": 1}),
]


@pytest.mark.parametrize(("field", "kwargs"), INVALID)
def test_invalid_request_names_the_field(field: str, kwargs: dict[str, Any]) -> None:
    """Every invalid field raises InvalidRequestError, a ValueError, whose ``field`` and message name it."""
    with pytest.raises(InvalidRequestError) as caught:
        GenerationRequest(**kwargs)
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, Banana2Error)
    assert caught.value.field == field
    assert str(caught.value).startswith(field)
    assert caught.value.__cause__ is None


def test_invalid_request_message_is_short() -> None:
    """An oversized value is not echoed back whole in the error."""
    with pytest.raises(InvalidRequestError) as caught:
        GenerationRequest(prompt="p", images=["ftp://" + "x" * 10_000])
    assert len(str(caught.value)) < 300


@pytest.mark.parametrize(
    ("field", "row"),
    [
        ("prompt", {"prompt": " "}),
        ("resolution", {"prompt": "a fox", "resolution": "9k"}),
        ("images", {"prompt": "a fox", "type": "edit"}),
        ("colour", {"prompt": "a fox", "colour": "red"}),
    ],
)
def test_model_validate_raises_invalid_request_error_naming_the_field(field: str, row: dict[str, Any]) -> None:
    """Validating a mapping or a JSON document gives the same typed error as the constructor."""
    with pytest.raises(InvalidRequestError) as from_mapping:
        GenerationRequest.model_validate(row)
    with pytest.raises(InvalidRequestError) as from_json:
        GenerationRequest.model_validate_json(json.dumps(row))
    assert from_mapping.value.field == from_json.value.field == field


def test_model_validate_accepts_what_the_constructor_accepts() -> None:
    """A valid row validates to the same request as keyword arguments give."""
    row = {"prompt": "a fox", "resolution": "2K", "images": ["https://example.com/a.png"]}
    assert GenerationRequest.model_validate(row) == GenerationRequest(**row)


def test_prompt_of_exactly_the_limit_is_accepted() -> None:
    """A prompt of 5000 characters is allowed."""
    assert len(GenerationRequest(prompt="x" * MAX_PROMPT_LENGTH).prompt) == MAX_PROMPT_LENGTH


def test_an_image_url_of_the_documented_length_is_accepted() -> None:
    """An image URL of up to 8,192 characters (signed URLs are long) is accepted; the cap is documented."""
    url = "https://example.com/" + "x" * (MAX_URL_LENGTH - len("https://example.com/"))
    assert GenerationRequest(prompt="p", images=[url]).images == (url,)


def test_fourteen_images_are_accepted() -> None:
    """Up to 14 http or https image URLs make an edit."""
    images = [f"https://example.com/{n}.png" for n in range(MAX_IMAGES - 1)] + ["http://example.com/x.jpg"]
    request = GenerationRequest(prompt="p", images=images)
    assert request.images == tuple(images)
    assert request.to_wire()["images"] == images


def test_images_may_be_a_tuple() -> None:
    """Any sequence of URLs is taken, sent as a JSON list."""
    assert GenerationRequest(prompt="p", images=(URL,)).to_wire()["images"] == [URL]


def test_type_is_detected_as_edit_when_images_are_given() -> None:
    """Images without a type make an edit (24 credits); the type is left for the server to detect."""
    request = GenerationRequest(prompt="p", images=[URL])
    assert request.task_type == "edit"
    assert request.credits == 24
    assert "type" not in request.to_wire()


def test_type_defaults_to_text_to_image() -> None:
    """No images and no type make a text-to-image task (20 credits)."""
    request = GenerationRequest(prompt="p")
    assert request.task_type == "text-to-image"
    assert request.credits == 20


def test_explicit_type_is_sent_and_normalised() -> None:
    """A type given in any case is sent lower-case."""
    request = GenerationRequest(prompt="p", type=" EDIT ", images=[URL])
    assert request.task_type == "edit"
    assert request.to_wire()["type"] == "edit"
    assert GenerationRequest(prompt="p", type="text-to-image").to_wire()["type"] == "text-to-image"


@pytest.mark.parametrize("ratio", ["1:1", "3:2", "2:3", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9"])
def test_every_documented_aspect_ratio_is_accepted(ratio: str) -> None:
    """Each documented aspect ratio is sent as given."""
    assert GenerationRequest(prompt="p", aspect_ratio=ratio).to_wire()["aspect_ratio"] == ratio


@pytest.mark.parametrize(
    ("given", "sent"), [("1k", "1k"), ("2k", "2k"), ("4k", "4k"), ("2K", "2k"), ("4K", "4k"), (" 1K ", "1k")]
)
def test_resolution_is_accepted_in_any_case_and_sent_lower_case(given: str, sent: str) -> None:
    """``2K`` is accepted and sent as ``2k``."""
    assert GenerationRequest(prompt="p", resolution=given).to_wire()["resolution"] == sent


@pytest.mark.parametrize(("given", "sent"), [("png", "png"), ("jpeg", "jpeg"), ("PNG", "png"), ("jpg", "jpeg")])
def test_output_format_is_one_of_the_documented_set(given: str, sent: str) -> None:
    """png and jpeg (jpg meaning jpeg) are accepted, sent lower-case."""
    assert GenerationRequest(prompt="p", output_format=given).to_wire()["output_format"] == sent


def test_wire_body_carries_only_what_the_caller_set() -> None:
    """Fields left unset are not sent, so the server's defaults stay the server's."""
    assert GenerationRequest(prompt="a fox").to_wire() == {"prompt": "a fox"}
    assert GenerationRequest(prompt="a fox", resolution="4K").to_wire() == {"prompt": "a fox", "resolution": "4k"}


def test_wire_body_of_the_documented_examples() -> None:
    """The API documentation's two example bodies come out exactly."""
    text = GenerationRequest(
        prompt="A futuristic cyberpunk city with neon lights, cinematic style", aspect_ratio="16:9", resolution="2k"
    )
    assert text.to_wire() == {
        "prompt": "A futuristic cyberpunk city with neon lights, cinematic style",
        "aspect_ratio": "16:9",
        "resolution": "2k",
    }
    edit = GenerationRequest(
        type="edit", prompt="Turn the cat into a tiger, keep the background", images=[URL], aspect_ratio="1:1"
    )
    assert edit.to_wire() == {
        "type": "edit",
        "prompt": "Turn the cat into a tiger, keep the background",
        "images": [URL],
        "aspect_ratio": "1:1",
    }


def test_wire_body_is_a_fresh_json_ready_dict() -> None:
    """Mutating one wire body does not change the request or the next body."""
    request = GenerationRequest(prompt="p", images=[URL])
    body = request.to_wire()
    body["images"].append("https://evil.example/x.png")
    assert request.to_wire()["images"] == [URL]
    assert json.loads(json.dumps(request.to_wire())) == request.to_wire()


def test_request_is_frozen() -> None:
    """A validated request cannot be changed afterwards, so it cannot be made invalid."""
    request = GenerationRequest(prompt="p")
    with pytest.raises(ValidationError):
        request.prompt = ""  # type: ignore[misc]


# -- nothing is sent for an invalid request ------------------------------------------------------


@pytest.fixture
async def client() -> AsyncIterator[tuple[AsyncBanana2, respx.MockRouter]]:
    """An entered client whose every request would be answered by respx."""
    with respx.mock(base_url=BASE, assert_all_called=False) as router:
        router.post("/api/generate").respond(json={"code": 200, "data": {"task_id": "t1"}})
        router.get("/api/status").respond(json={"code": 200, "data": {"task_id": "t1", "status": "IN_PROGRESS"}})
        async with AsyncBanana2(KEY, base_url=BASE, poll_interval=60.0) as sdk:
            yield sdk, router


@pytest.mark.anyio
@pytest.mark.parametrize(("field", "kwargs"), [case for case in INVALID if "seed" not in case[1]])
async def test_invalid_submit_sends_nothing(
    client: tuple[AsyncBanana2, respx.MockRouter], field: str, kwargs: dict[str, Any]
) -> None:
    """``client.submit`` with an invalid field raises before any request: zero calls reach the transport."""
    sdk, router = client
    kwargs = dict(kwargs)
    prompt = kwargs.pop("prompt", None)
    with pytest.raises(InvalidRequestError) as caught:
        await sdk.submit(prompt, **kwargs)
    assert caught.value.field == field
    assert router.calls.call_count == 0


@pytest.mark.anyio
async def test_invalid_edit_and_generate_send_nothing(client: tuple[AsyncBanana2, respx.MockRouter]) -> None:
    """``edit`` with no images and ``generate`` with a bad resolution raise before any request."""
    sdk, router = client
    with pytest.raises(InvalidRequestError):
        await sdk.edit("p", images=[])
    with pytest.raises(InvalidRequestError):
        await sdk.generate("p", resolution="8k")  # type: ignore[arg-type]
    assert router.calls.call_count == 0


@pytest.mark.anyio
async def test_submit_sends_only_what_the_caller_set(client: tuple[AsyncBanana2, respx.MockRouter]) -> None:
    """The POST body holds the caller's fields only, resolution normalised, and nothing else."""
    sdk, router = client
    await sdk.submit("a fox", resolution="2K")  # type: ignore[arg-type]
    await sdk.submit("make it night", images=[URL])
    first, second = (json.loads(call.request.content) for call in router.calls)
    assert first == {"prompt": "a fox", "resolution": "2k"}
    assert second == {"prompt": "make it night", "images": [URL]}


# -- statuses ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "state"),
    [
        ("SUCCESS", "success"),
        ("success", "success"),
        ("Succeeded", "success"),
        ("COMPLETED", "success"),
        ("FAILED", "failed"),
        ("failure", "failed"),
        ("Error", "failed"),
        ("CANCELLED", "failed"),
        ("canceled", "failed"),
        ("IN_PROGRESS", "running"),
        ("pending", "running"),
        ("QUEUED", "running"),
        ("Processing", "running"),
        ("IN_QUEUE", "running"),
        (" in_progress ", "running"),
        ("WHATEVER_NEW", "unknown"),
        ("", "unknown"),
        (None, "unknown"),
        (3, "unknown"),
    ],
)
def test_classify_status(status: object, state: str) -> None:
    """Statuses in any case map to success, failed, running or unknown."""
    assert classify_status(status) == state


# -- the envelope --------------------------------------------------------------------------------


def test_success_envelope_is_returned() -> None:
    """A documented success envelope comes back as the parsed object."""
    envelope = decode_envelope(200, _envelope({"task_id": "t"}))
    assert envelope == {"code": 200, "message": "success", "data": {"task_id": "t"}}


def test_envelope_without_code_is_accepted() -> None:
    """The envelope's code may be missing: the HTTP status counts then."""
    assert decode_envelope(200, b'{"data": {"task_id": "t"}}')["data"] == {"task_id": "t"}


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (402, InsufficientCreditsError),
        ("402", InsufficientCreditsError),
        (400, BadRequestError),
        (401, AuthenticationError),
        (404, NotFoundError),
        (429, RateLimitError),
        (500, InternalServerError),
        (503, InternalServerError),
        (418, APIStatusError),
    ],
)
def test_error_code_in_an_http_200_envelope_counts(code: object, error: type[APIStatusError]) -> None:
    """HTTP 200 with an error ``code`` in the body raises that code's error, with the server's message."""
    with pytest.raises(error) as caught:
        decode_envelope(200, json.dumps({"code": code, "message": "not enough credits", "data": None}).encode())
    assert type(caught.value) is error
    assert caught.value.status_code == int(str(code))
    assert caught.value.message == "not enough credits"
    assert caught.value.body == {"code": code, "message": "not enough credits", "data": None}


@pytest.mark.parametrize("code", [201, "200", " 204 ", 200.0, 100])
def test_success_codes_in_a_200_envelope_are_not_errors(code: object) -> None:
    """A code that is a success status, as a number or a string of ASCII digits, leaves a 200 a success."""
    assert decode_envelope(200, _envelope({"task_id": "t"}, code=code))["data"] == {"task_id": "t"}
    assert ok_envelope(_envelope({"task_id": "t"}, code=code)) is not None


@pytest.mark.parametrize(
    "code",
    [True, False, None, 200.5, float("inf"), "abc", "", "٢٠٠", "²⁰⁰", "0200", 99, 1000, -200, [402], {"a": 1}, 10**60],
)
def test_a_code_that_is_no_status_code_is_a_response_error(code: object) -> None:
    """An envelope ``code`` that is there but no status code (any JSON value) is an `APIResponseError`."""
    content = _envelope({"task_id": "t"}, code=code)
    assert ok_envelope(content) is None
    with pytest.raises(APIResponseError, match="not a status code"):
        decode_envelope(200, content)


def test_a_5000_digit_code_is_a_response_error() -> None:
    """A code of 5,000 digits (more than Python turns into an int from text) is an `APIResponseError`."""
    content = b'{"code": ' + b"9" * 5000 + b', "data": {"task_id": "t"}}'
    assert ok_envelope(content) is None
    with pytest.raises(APIResponseError):
        decode_envelope(200, content)
    with pytest.raises(InternalServerError):
        decode_envelope(502, content)


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (402, InsufficientCreditsError),
        (404, NotFoundError),
        (429, RateLimitError),
        (500, InternalServerError),
        (502, InternalServerError),
        (503, InternalServerError),
        (504, InternalServerError),
        (403, APIStatusError),
        (408, APIStatusError),
        (409, APIStatusError),
    ],
)
def test_every_http_status_is_mapped(status: int, error: type[APIStatusError]) -> None:
    """An HTTP error status raises its error class with status_code, even when the body says 200."""
    with pytest.raises(error) as caught:
        decode_envelope(status, _envelope(None, code=200, message="nope"), request_id="req-1")
    assert type(caught.value) is error
    assert caught.value.status_code == status
    assert caught.value.request_id == "req-1"
    assert "req-1" in str(caught.value)


def test_rate_limit_carries_retry_after() -> None:
    """A 429 carries the Retry-After seconds it was given."""
    with pytest.raises(RateLimitError) as caught:
        decode_envelope(429, _envelope(None, code=429, message="slow down"), retry_after=3.0)
    assert caught.value.retry_after == 3.0


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"code": 400, "message": "prompt is required"}, "prompt is required"),
        ({"code": 400, "error": "bad images"}, "bad images"),
        ({"code": 400, "error": {"message": "nested message"}}, "nested message"),
        ({"code": 400, "error_message": "too long"}, "too long"),
        ({"code": 400, "data": {"error": "in data"}}, "in data"),
        ({"code": 400, "message": "", "data": {}}, "HTTP 400"),
        ({"code": 400}, "HTTP 400"),
    ],
)
def test_error_message_is_found_where_the_server_put_it(body: dict[str, Any], message: str) -> None:
    """The error message is taken from message, error, error_message or data.error, else the status."""
    with pytest.raises(BadRequestError) as caught:
        decode_envelope(400, json.dumps(body).encode())
    assert caught.value.message == message


def test_error_message_is_capped() -> None:
    """A huge server message is cut to a few hundred characters."""
    with pytest.raises(BadRequestError) as caught:
        decode_envelope(400, json.dumps({"message": "m" * 100_000}).encode())
    assert len(caught.value.message) <= 500


BAD_BODIES: list[bytes] = [
    b"",
    b"not json at all",
    b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>",
    b"\xc3\x28\xa0\xa1 not utf-8 \xff",
    b'{"code": 200, "message": "caf\xe9", "data": {}}',
    b'{"code": 200, "data": {"task_id": "t"',
    b"[]",
    b"null",
    b'"success"',
    b"42",
    b'{"code": 200, "message": "success"}',
    b'{"code": 200, "message": "success", "data": null}',
    b'{"code": 200, "message": "success", "data": ["t"]}',
    b'{"code": 200, "message": "success", "data": "t"}',
    b"[" * 100_000 + b"]" * 100_000,
    b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
]


@pytest.mark.parametrize("content", BAD_BODIES, ids=lambda content: repr(content[:24]))
def test_a_200_that_is_not_the_envelope_is_an_api_response_error(content: bytes) -> None:
    """Non-JSON, non-UTF-8, HTML, truncated, deeply nested or non-envelope bodies raise APIResponseError."""
    with pytest.raises(APIResponseError) as caught:
        decode_envelope(200, content)
    assert caught.value.status_code == 200
    assert len(caught.value.excerpt) <= 200
    assert caught.value.excerpt == content[:200].decode("utf-8", errors="replace")


def test_excerpt_is_short_for_a_huge_body() -> None:
    """A megabyte of HTML gives an excerpt of at most 200 characters, and a short message."""
    content = b"<html>" + b"x" * 1_000_000
    with pytest.raises(APIResponseError) as caught:
        decode_envelope(200, content)
    assert caught.value.excerpt.startswith("<html>")
    assert len(caught.value.excerpt) == 200
    assert len(str(caught.value)) < 200


@pytest.mark.parametrize("status", [400, 401, 402, 404, 429, 500, 502, 503, 504])
def test_an_error_status_with_a_non_json_body_keeps_its_error_class(status: int) -> None:
    """An HTML error page still raises the status's error, with a short excerpt of the page in its message."""
    content = b"<html><body>" + b"Bad Gateway " * 1000 + b"</body></html>"
    with pytest.raises(APIStatusError) as caught:
        decode_envelope(status, content, request_id="r")
    assert caught.value.status_code == status
    assert "<html><body>Bad Gateway" in caught.value.message
    assert len(caught.value.message) < 300


def test_an_error_status_with_an_empty_body() -> None:
    """An empty error body says which status it was."""
    with pytest.raises(InternalServerError) as caught:
        decode_envelope(503, b"")
    assert caught.value.message == "HTTP 503"


def test_an_error_status_with_a_json_non_object() -> None:
    """A JSON list or string as an error body still raises the status's error."""
    with pytest.raises(NotFoundError) as caught:
        decode_envelope(404, b'["no such task"]')
    assert caught.value.body == ["no such task"]


# -- submit answers ------------------------------------------------------------------------------


def test_parse_submit_keeps_unknown_fields() -> None:
    """The accepted task keeps documented and unknown fields."""
    accepted = parse_submit({"code": 200, "data": {"task_id": "t", "status": "IN_PROGRESS", "queue": 3}})
    assert accepted.task_id == "t"
    assert accepted.status == "IN_PROGRESS"
    assert accepted.model_extra == {"queue": 3}


@pytest.mark.parametrize("data", [{}, {"task_id": ""}, {"task_id": None}, {"task_id": 12}, {"status": "IN_PROGRESS"}])
def test_parse_submit_without_a_task_id(data: dict[str, Any]) -> None:
    """An accepted submit without a usable task id is an APIResponseError."""
    with pytest.raises(APIResponseError) as caught:
        parse_submit({"code": 200, "data": data})
    assert "task_id" in str(caught.value)


def test_parse_submit_with_a_wrongly_typed_field() -> None:
    """A documented field of the wrong type is an APIResponseError, not a pydantic error."""
    with pytest.raises(APIResponseError):
        parse_submit({"code": 200, "data": {"task_id": "t", "status": {"x": 1}}})


# -- status answers ------------------------------------------------------------------------------

DONE: dict[str, Any] = {
    "task_id": "n82abc123def456nb2",
    "status": "SUCCESS",
    "type": "text-to-image",
    "model": "nano-banana-2",
    "consumed_credits": 20,
    "response": ["https://generated-image-url.com/image1.png"],
    "request": {"prompt": "A futuristic cyberpunk city..."},
    "created_at": "2025-03-20T10:00:00Z",
}


def test_parse_task_of_the_documented_success() -> None:
    """The documented success answer gives its images, credits and fields."""
    info = parse_task({"code": 200, "message": "success", "data": DONE}, task_id="n82abc123def456nb2")
    assert info.state == "success"
    assert info.images == ["https://generated-image-url.com/image1.png"]
    assert info.consumed_credits == 20
    assert info.model == "nano-banana-2"
    assert info.request == {"prompt": "A futuristic cyberpunk city..."}
    assert info.error_detail is None
    result = GenerationResult.from_info(info)
    assert result.images == info.images
    assert result.task_id == "n82abc123def456nb2"
    assert result.consumed_credits == 20
    assert result.info is info


def test_parse_task_keeps_unknown_fields() -> None:
    """Fields the documentation does not list are kept in ``model_extra``."""
    info = parse_task({"code": 200, "data": {**DONE, "seed": 7, "progress": 0.5}}, task_id=DONE["task_id"])
    assert info.model_extra == {"seed": 7, "progress": 0.5}


@pytest.mark.parametrize(
    "data",
    [
        {"task_id": "t", "status": "IN_PROGRESS"},
        {"task_id": "t", "status": "IN_PROGRESS", "response": None, "consumed_credits": None, "model": None},
        {"task_id": "t", "status": None},
        {"status": "PENDING"},
        {},
    ],
)
def test_parse_task_while_running(data: dict[str, Any]) -> None:
    """Listed fields may be missing or null while a task runs; the task id falls back to the one asked for."""
    info = parse_task({"code": 200, "data": data}, task_id="t")
    assert info.task_id == "t"
    assert info.images == []
    assert info.consumed_credits is None
    assert info.state in ("running", "unknown")


def test_parse_task_takes_a_single_url_as_a_list() -> None:
    """A ``response`` that is one URL string is a list of one."""
    info = parse_task({"code": 200, "data": {**DONE, "response": "https://x.example/1.png"}}, task_id=DONE["task_id"])
    assert info.images == ["https://x.example/1.png"]


@pytest.mark.parametrize(
    ("envelope", "detail"),
    [
        ({"code": 200, "message": "success", "data": {"status": "FAILED", "error": "nsfw"}}, "nsfw"),
        ({"code": 200, "message": "success", "data": {"status": "FAILED", "error_message": "oom"}}, "oom"),
        ({"code": 200, "message": "success", "data": {"status": "FAILED", "message": "bad seed"}}, "bad seed"),
        ({"code": 200, "error": "envelope error", "data": {"status": "FAILED"}}, "envelope error"),
        ({"code": 200, "error_message": "env msg", "data": {"status": "ERROR"}}, "env msg"),
        ({"code": 200, "message": "moderation", "data": {"status": "failure"}}, "moderation"),
        ({"code": 200, "message": "success", "data": {"status": "FAILED"}}, None),
        ({"code": 200, "message": "OK", "data": {"status": "FAILED"}}, None),
        ({"code": 200, "data": {"status": "FAILED", "error": {"message": "nested"}}}, "nested"),
    ],
)
def test_parse_task_finds_the_failure_message(envelope: dict[str, Any], detail: str | None) -> None:
    """A failure message is looked for in data.error, error_message, message, then the envelope."""
    info = parse_task(envelope, task_id="t")
    assert info.state == "failed"
    assert info.error_detail == detail


@pytest.mark.parametrize(
    "odd",
    [
        {"consumed_credits": "lots"},
        {"consumed_credits": True},
        {"consumed_credits": 1.5},
        {"consumed_credits": [20]},
        {"model": 7},
        {"type": {"kind": "edit"}},
        {"created_at": 1700000000},
        {"request": "a fox"},
    ],
)
def test_a_success_with_an_odd_field_keeps_its_images(odd: dict[str, Any]) -> None:
    """A field beside the result of an impossible type is left out: a finished task is never lost over it."""
    info = parse_task({"code": 200, "data": {**DONE, **odd}}, task_id=DONE["task_id"])
    assert info.state == "success"
    assert info.images == DONE["response"]
    assert getattr(info, next(iter(odd))) is None


def test_credits_given_as_a_whole_number_or_digits_are_kept() -> None:
    """``20``, ``20.0`` and ``"20"`` all mean 20 credits."""
    for credits in (20, 20.0, "20"):
        info = parse_task({"code": 200, "data": {**DONE, "consumed_credits": credits}}, task_id=DONE["task_id"])
        assert info.consumed_credits == 20


def test_control_characters_of_a_server_message_are_not_passed_on() -> None:
    """A failure message with terminal escape sequences is kept without its control characters."""
    info = parse_task({"code": 200, "data": {"status": "FAILED", "error": "bad\x1b[2J\x07 seed\nline"}}, task_id="t")
    assert info.error_detail == "bad\ufffd[2J\ufffd seed\nline"


def test_task_info_is_a_public_tolerant_model() -> None:
    """TaskInfo validates a bare server ``data`` object, extras included."""
    info = TaskInfo.model_validate({"task_id": "t", "status": "QUEUED", "eta": 5})
    assert info.state == "running"
    assert info.model_extra == {"eta": 5}
