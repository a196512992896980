"""The simulator judges POST /api/generate by the API documentation's exact rules, not by the SDK's model."""

from __future__ import annotations

import ast
import json
import math
import struct
from pathlib import Path
from typing import Any, Final

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import banana2_async.testing
from banana2_async.testing import DEFAULT_CREDITS, Simulator

KEY: Final = "sk-sim-test"
AUTH: Final = {"Authorization": f"Bearer {KEY}"}
URL: Final = "https://example.com/cat.jpg"

# The documentation's table, written out again here so the tests do not share the simulator's constants.
DOCUMENTED: Final[dict[str, tuple[str, ...]]] = {
    "type": ("text-to-image", "edit"),
    "aspect_ratio": ("1:1", "3:2", "2:3", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9"),
    "resolution": ("1k", "2k", "4k"),
    "output_format": ("png", "jpeg"),
}
FIELDS: Final = ("prompt", "type", "images", "aspect_ratio", "resolution", "output_format")


def _post(sim: Simulator, body: object | bytes) -> tuple[int, dict[str, Any]]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    reply = sim.handle("POST", "/api/generate", headers=AUTH, body=raw)
    envelope: dict[str, Any] = json.loads(reply.body)
    return reply.status, envelope


def _refused(sim: Simulator, body: object | bytes, field: str) -> str:
    status, envelope = _post(sim, body)
    assert (status, envelope["code"], envelope["data"]) == (400, 400, None), envelope
    message = str(envelope["message"])
    assert message.startswith(f"{field}: "), message
    assert sim.stats.tasks_created == 0
    assert sim.credits() == DEFAULT_CREDITS
    return message


def _accepted(sim: Simulator, body: dict[str, Any]) -> str:
    status, envelope = _post(sim, body)
    assert status == 200, envelope
    task_id = envelope["data"]["task_id"]
    assert isinstance(task_id, str)
    return task_id


@pytest.fixture
def sim() -> Simulator:
    """A seeded simulator with the default account."""
    return Simulator(seed=1)


@pytest.mark.parametrize(
    ("field", "value"), [(field, value) for field, values in DOCUMENTED.items() for value in values]
)
def test_every_documented_value_is_accepted_and_kept_as_sent(sim: Simulator, field: str, value: str) -> None:
    """Each documented value of each field answers 200; the task's request holds it as sent."""
    body: dict[str, Any] = {"prompt": "a fox", field: value}
    if value == "edit":
        body["images"] = [URL]
    assert sim.task(_accepted(sim, body)).request == body


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("type", "EDIT"),
        ("type", "Edit"),
        ("type", " edit"),
        ("type", "text_to_image"),
        ("type", "Text-To-Image"),
        ("type", ""),
        ("aspect_ratio", " 16:9 "),
        ("aspect_ratio", "16:9\n"),
        ("aspect_ratio", "16/9"),
        ("aspect_ratio", "16 : 9"),
        ("aspect_ratio", "1\uff1a1"),
        ("aspect_ratio", "32:18"),
        ("resolution", "2K"),
        ("resolution", " 1k"),
        ("resolution", "1k "),
        ("resolution", "4K"),
        ("resolution", "1024"),
        ("output_format", "jpg"),
        ("output_format", "JPG"),
        ("output_format", "JPEG"),
        ("output_format", "PNG"),
        ("output_format", ".png"),
        ("output_format", "image/png"),
    ],
)
def test_undocumented_spellings_are_refused_naming_the_field(sim: Simulator, field: str, value: str) -> None:
    """A spelling the documentation does not list, however close, answers 400 naming the field; nothing is charged."""
    body: dict[str, Any] = {"prompt": "a fox", field: value}
    if field == "type":
        body["images"] = [URL]
    assert json.dumps(value)[:30] in _refused(sim, body, field)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        *(
            (field, value)
            for field in FIELDS
            if field != "images"
            for value in (None, 1, 1.5, True, ["1k"], {"a": "1k"})
        ),
        *(("images", value) for value in (None, 1, True, URL, {"a": URL})),
    ],
    ids=repr,
)
def test_wrong_types_are_refused_naming_the_field(sim: Simulator, field: str, value: object) -> None:
    """null, a number, a boolean, a list or an object where a string (for images, a list) belongs answers 400."""
    _refused(sim, {"prompt": "a fox", field: value}, field)


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"aspect_ratio": "1:1"}, "required"),
        ({"prompt": ""}, "blank"),
        ({"prompt": " \t\n\u3000"}, "blank"),
        ({"prompt": "x" * 5001}, "5000"),
        ({"prompt": "a\ud800b"}, "surrogate"),
    ],
)
def test_prompt_rules(sim: Simulator, body: dict[str, Any], problem: str) -> None:
    """prompt is required, not blank, at most 5000 characters and Unicode text; each answers 400 saying why."""
    assert problem in _refused(sim, body, "prompt")


def test_a_prompt_of_5000_characters_is_accepted(sim: Simulator) -> None:
    """5000 characters, counted as characters (not bytes), is the longest prompt accepted."""
    for prompt in ("x" * 5000, "\u732b" * 5000, "\U0001f98a" * 5000):
        _accepted(sim, {"prompt": prompt})


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"images": URL}, "list"),
        ({"images": [URL] * 15}, "at most 14"),
        ({"images": []}, "empty"),
        ({"type": "edit"}, "needs 1 to 14"),
        ({"type": "edit", "images": []}, "needs 1 to 14"),
        ({"type": "text-to-image", "images": [URL]}, "text-to-image"),
        ({"images": [URL, 42]}, "item 1"),
        ({"images": [None]}, "item 0"),
        ({"images": ["cat.jpg"]}, "item 0"),
        ({"images": ["ftp://example.com/cat.jpg"]}, "item 0"),
        ({"images": ["https:///cat.jpg"]}, "item 0"),
        ({"images": ["https://example.com/a cat.jpg"]}, "item 0"),
        ({"images": ["https://example.com:99999/cat.jpg"]}, "item 0"),
        ({"images": ["https://example.com/\ud800.jpg"]}, "item 0"),
    ],
)
def test_images_rules(sim: Simulator, body: dict[str, Any], problem: str) -> None:
    """images is a list of 1 to 14 http(s) URLs, only for an edit, and an edit needs it; each answers 400 saying why."""
    assert problem in _refused(sim, {"prompt": "a fox", **body}, "images")


def test_images_make_an_edit_of_up_to_14_urls(sim: Simulator) -> None:
    """Images without a type make an edit, charged 24; 14 URLs, http or https, are accepted and kept as sent."""
    urls = [f"http{'s' * (i % 2)}://cdn{i}.example.com:8443/{i}.png?size=big" for i in range(14)]
    task = sim.task(_accepted(sim, {"prompt": "a fox", "images": urls}))
    assert (task.type, task.credits, task.request) == ("edit", 24, {"prompt": "a fox", "images": urls})


@pytest.mark.parametrize("name", ["n", "Prompt", "negative_prompt", "seed", "", "type "])
def test_fields_the_documentation_does_not_list_are_refused(sim: Simulator, name: str) -> None:
    """A field the documentation does not list answers 400 naming it, even next to a valid body."""
    assert "not a field" in _refused(sim, {"prompt": "a fox", name: "x"}, name)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{",
        b"null",
        b"[]",
        b'[{"prompt": "a fox"}]',
        b'"a fox"',
        b"42",
        b'{"prompt": "a fox", "resolution": NaN}',
        b'{"prompt": Infinity}',
        b'\xef\xbb\xbf{"prompt": "a fox"}',
        '{"prompt": "a fox"}'.encode("utf-16"),
        b'{"prompt": "caf\xe9"}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    ],
    ids=lambda raw: repr(raw[:24]),
)
def test_bodies_that_are_not_a_json_object_are_refused(sim: Simulator, raw: bytes) -> None:
    """A body that is not a UTF-8 JSON object (no NaN, no BOM, not nested past reason) answers 400 naming the body."""
    _refused(sim, raw, "body")


def test_numbers_of_any_length_are_refused_as_wrong_types(sim: Simulator) -> None:
    """A 5000-digit number or 1e999 where a string belongs answers 400 naming the field, not the body."""
    _refused(sim, b'{"prompt": ' + b"9" * 5000 + b"}", "prompt")
    _refused(sim, b'{"prompt": "a fox", "resolution": 1e999}', "resolution")


def test_a_minimal_body_gets_the_documented_defaults() -> None:
    """{"prompt"} alone makes a text-to-image task of 20 credits, 1:1, 1k, png; its request is the body as sent."""
    sim = Simulator(speed=math.inf)
    status, envelope = _post(sim, {"prompt": "a fox"})
    assert (status, envelope["data"]["type"], envelope["data"]["status"]) == (200, "text-to-image", "IN_PROGRESS")
    task = sim.task(envelope["data"]["task_id"])
    assert (task.type, task.credits, task.request) == ("text-to-image", 20, {"prompt": "a fox"})
    assert sim.credits() == DEFAULT_CREDITS - 20
    image = sim.handle("GET", f"/results/{task.task_id}/0.png")
    assert (image.status, image.body[:8]) == (200, b"\x89PNG\r\n\x1a\n")
    assert struct.unpack(">II", image.body[16:24]) == (1024, 1024)


def test_the_simulator_does_not_use_the_sdks_request_model() -> None:
    """No module of banana2_async.testing imports the SDK's request model or its value sets."""
    package = Path(banana2_async.testing.__file__).parent
    for module in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                assert name not in ("banana2_async._models", "banana2_async._types"), module.name


# -- for random bodies, the simulator accepts exactly what the documentation allows ------------------

_NOT_STRINGS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
_GOOD_URLS: Final = (URL, "http://127.0.0.1:8000/a.png", "https://[::1]/b.jpg", "HTTPS://Example.com/x?y=1#z")
_BAD_URLS: Final = (
    "",
    "cat.jpg",
    "ftp://example.com/a.png",
    "http://",
    "//example.com/a",
    "http://[::1",
    "https://a b",
)


def _spellings(field: str) -> st.SearchStrategy[object]:
    values = DOCUMENTED[field]
    return st.one_of(
        st.sampled_from(values),
        st.sampled_from(values).map(str.upper),
        st.sampled_from(values).map(lambda value: f" {value}"),
        st.sampled_from(["jpg", "8k", "16/9", "EDIT", "", "1K"]),
        _NOT_STRINGS,
    )


_ANY_VALUE: Final[dict[str, st.SearchStrategy[object]]] = {
    "prompt": st.one_of(
        st.text(max_size=12), st.sampled_from(["", "  ", "\t\n", "x" * 5000, "x" * 5001, "a\udc80"]), _NOT_STRINGS
    ),
    "type": _spellings("type"),
    "images": st.one_of(
        st.lists(st.sampled_from(_GOOD_URLS), max_size=16),
        st.lists(st.sampled_from(_GOOD_URLS + _BAD_URLS), min_size=1, max_size=3),
        st.sampled_from(_GOOD_URLS),
        _NOT_STRINGS,
    ),
    "aspect_ratio": _spellings("aspect_ratio"),
    "resolution": _spellings("resolution"),
    "output_format": _spellings("output_format"),
    "n": st.integers(),
    "Prompt": st.text(max_size=3),
}


@st.composite
def _bodies(draw: st.DrawFn) -> dict[str, Any]:
    """A valid body, half the time with one field then removed, added or given any value."""
    body: dict[str, Any] = {"prompt": draw(st.text(min_size=1, max_size=12).filter(str.strip))}
    if draw(st.booleans()):
        body["images"] = draw(st.lists(st.sampled_from(_GOOD_URLS), min_size=1, max_size=14))
    for field in DOCUMENTED:
        if draw(st.booleans()):
            body[field] = draw(st.sampled_from(DOCUMENTED[field]))
    if "type" in body:
        body["type"] = "edit" if "images" in body else "text-to-image"
    if draw(st.booleans()):
        field = draw(st.sampled_from(sorted(_ANY_VALUE)))
        if field in body and draw(st.booleans()):
            del body[field]
        else:
            body[field] = draw(_ANY_VALUE[field])
    return body


def _allowed(body: dict[str, Any]) -> bool:
    """Whether the documentation's table allows ``body``, rule by rule."""
    if not set(body) <= set(FIELDS):
        return False
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip() or len(prompt) > 5000 or "\udc80" in prompt:
        return False
    for field, values in DOCUMENTED.items():
        if field in body and not (isinstance(body[field], str) and body[field] in values):
            return False
    images = body.get("images")
    if "images" in body:
        if not isinstance(images, list) or not 1 <= len(images) <= 14:
            return False
        if not all(isinstance(url, str) and url in _GOOD_URLS for url in images):
            return False
        return "type" not in body or body["type"] == "edit"
    return "type" not in body or body["type"] == "text-to-image"


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(_bodies())
def test_the_simulator_accepts_exactly_the_bodies_the_documentation_allows(body: dict[str, Any]) -> None:
    """For random bodies, 200 exactly when the documentation allows the body; the task is then typed and charged."""
    sim = Simulator(seed=0)
    status, envelope = _post(sim, body)
    assert status == (200 if _allowed(body) else 400), (body, envelope)
    if status == 200:
        task = sim.task(envelope["data"]["task_id"])
        expected_type = "edit" if "images" in body else "text-to-image"
        assert (task.type, task.credits) == (expected_type, 24 if expected_type == "edit" else 20)
        assert task.request == {field: body[field] for field in FIELDS if field in body}
    else:
        assert envelope["message"].split(":")[0] in (*FIELDS, "body", "n", "Prompt")
