"""Fuzzed request arguments and fuzzed server answers, on both endpoints.

Arguments: valid ones put exactly the documented JSON on the wire, invalid
ones raise `InvalidRequestError` before any request. Answers (random JSON,
wrong types, missing fields, HTML pages, empty, huge or non-UTF-8 bodies, any
status): a submit ends in a handle or a typed error and is sent once; a poll
ends as `client.status` reads the same answer, or is retried, and neither the
poller nor the other tasks notice. The API key shows in no log line or error.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

import anyio
import httpx
import pytest
from _marks import HTTPX_ABANDONED_STREAMS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from banana2_async import (
    APIStatusError,
    AsyncBanana2,
    AuthenticationError,
    Banana2Error,
    GenerationResult,
    InvalidRequestError,
    SubmissionUncertainError,
    TaskFailedError,
    TaskHandle,
    TaskInfo,
)

pytestmark = pytest.mark.anyio

KEY: Final = "sk-fuzz-5d1e0c9a7b3f4e21a8c6"
BASE_URL: Final = "https://api.fuzz.invalid"
CAP: Final = 1024 * 1024

# Deterministic and modest: the same examples every run, fast enough for the default test run.
FUZZ: Final = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)

ASPECT_RATIOS: Final = ("1:1", "3:2", "2:3", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9")

# -- request arguments -----------------------------------------------------------------------------

_NOT_STRINGS = st.one_of(
    st.integers(), st.floats(allow_nan=True), st.binary(max_size=4), st.booleans(), st.lists(st.integers(), max_size=2)
)
_SURROGATES = st.sampled_from(["a\ud800b", "\udfff", "ok \udc80 ok"])
_PROMPTS = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=" \t\n\r\u00a0\u3000", max_size=5),
    st.integers(min_value=4998, max_value=5002).map(lambda n: "p" * n),
    _SURROGATES,
    _NOT_STRINGS,
)
_HOSTS = st.sampled_from(["example.com", "cdn.example.org:8443", "127.0.0.1", "[::1]", "xn--bcher-kva.example"])
_VALID_URLS = st.builds(
    lambda scheme, host, path: f"{scheme}://{host}/{path}",
    st.sampled_from(["http", "https", "HTTPS"]),
    _HOSTS,
    st.text(alphabet="abcxyz0129-_./%?=&é猫 ", max_size=20),
)
_BAD_URLS = st.one_of(
    st.sampled_from(
        ["", "cat.jpg", "ftp://example.com/a.png", "http://", "https:///x", "//example.com/a", "http://[::1"]
    ),
    _SURROGATES.map(lambda text: f"https://example.com/{text}"),
    _NOT_STRINGS,
)
_IMAGES = st.one_of(
    st.lists(_VALID_URLS, min_size=1, max_size=14),
    st.lists(_VALID_URLS, min_size=1, max_size=14).map(tuple),
    st.lists(_VALID_URLS, min_size=15, max_size=16),
    st.just([]),
    st.lists(st.one_of(_VALID_URLS, _BAD_URLS), min_size=1, max_size=3),
    _VALID_URLS,
    _NOT_STRINGS,
)
_TYPES = st.one_of(
    st.sampled_from(["text-to-image", "edit", "EDIT", " edit ", "Text-To-Image", "image", "", "edit2"]), _NOT_STRINGS
)


def _spelled(values: Sequence[str], wrong: Sequence[str]) -> st.SearchStrategy[object]:
    valid = st.sampled_from(list(values))
    return st.one_of(
        valid,
        st.tuples(valid, st.sampled_from([str.upper, str.lower, lambda s: f" {s}\t"])).map(
            lambda pair: pair[1](pair[0])
        ),
        st.sampled_from(list(wrong)),
        _NOT_STRINGS,
    )


_ARGUMENTS = st.fixed_dictionaries(
    {"prompt": _PROMPTS},
    optional={
        "type": st.one_of(st.none(), _TYPES),
        "images": st.one_of(st.none(), _IMAGES),
        "aspect_ratio": st.one_of(st.none(), _spelled(ASPECT_RATIOS, ["1:2", "16/9", "", "16:9:1"])),
        "resolution": st.one_of(st.none(), _spelled(["1k", "2k", "4k"], ["8k", "1080p", "1 k", ""])),
        "output_format": st.one_of(st.none(), _spelled(["png", "jpeg", "jpg"], ["gif", "webp", ".png", ""])),
    },
)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _is_image_url(value: object) -> bool:
    if not isinstance(value, str) or not _encodable(value):
        return False
    try:
        parts = urlsplit(value)
        host = parts.hostname
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and bool(host)


def _choice(value: object, allowed: Sequence[str], *, aliases: Mapping[str, str] | None = None) -> str | None:
    """The documented value that ``value`` spells (any case, outer whitespace), else None."""
    if not isinstance(value, str):
        return None
    spelled = value.strip()
    lowered = spelled.lower()
    lowered = (aliases or {}).get(lowered, lowered)
    for option in allowed:
        if spelled == option or lowered == option.lower():
            return option
    return None


def expected_wire(arguments: Mapping[str, Any]) -> dict[str, Any] | None:
    """The JSON body the API documents for these arguments, or None if they break a documented rule.

    Written from the API reference, independently of the SDK's models.
    """
    prompt = arguments["prompt"]
    if not isinstance(prompt, str) or not prompt.strip() or len(prompt) > 5000 or not _encodable(prompt):
        return None
    body: dict[str, Any] = {"prompt": prompt}
    task_type = arguments.get("type")
    if task_type is not None:
        task_type = _choice(task_type, ["text-to-image", "edit"])
        if task_type is None:
            return None
        body["type"] = task_type
    images = arguments.get("images")
    if images is not None:
        if not isinstance(images, (list, tuple)) or not 1 <= len(images) <= 14:
            return None
        if not all(_is_image_url(url) for url in images):
            return None
        body["images"] = list(images)
    if task_type == "edit" and images is None:
        return None
    if task_type == "text-to-image" and images is not None:
        return None
    for name, allowed, aliases in (
        ("aspect_ratio", ASPECT_RATIOS, None),
        ("resolution", ("1k", "2k", "4k"), None),
        ("output_format", ("png", "jpeg"), {"jpg": "jpeg"}),
    ):
        value = arguments.get(name)
        if value is not None:
            chosen = _choice(value, allowed, aliases=aliases)
            if chosen is None:
                return None
            body[name] = chosen
    return body


def _accept(task_id: str = "t-accepted") -> httpx.Response:
    return httpx.Response(
        200, json={"code": 200, "message": "success", "data": {"task_id": task_id, "status": "IN_PROGRESS"}}
    )


@contextlib.asynccontextmanager
async def fuzz_client(handler: Callable[[httpx.Request], Any], **options: Any) -> AsyncIterator[AsyncBanana2]:
    """A client whose every request goes to ``handler``: no retries, fast polls, no deadline."""
    settings_: dict[str, Any] = {
        "base_url": BASE_URL,
        "poll_interval": 0.001,
        "wait_timeout": None,
        "max_retries": 0,
        "max_concurrent_polls": 4,
        "not_found_grace": 0.0,
        "seed": 7,
    }
    settings_.update(options)
    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http_client,
        AsyncBanana2(KEY, http_client=http_client, **settings_) as client,
    ):
        yield client


def _no_key(*texts: str) -> None:
    for text in texts:
        assert KEY not in text


@FUZZ
@given(arguments=_ARGUMENTS)
async def test_fuzzed_arguments_give_the_documented_body_or_fail_before_sending(
    arguments: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Valid arguments put exactly the documented JSON on the wire; invalid ones raise InvalidRequestError, unsent."""
    caplog.clear()
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return _accept()

    expected = expected_wire(arguments)
    with caplog.at_level(logging.DEBUG):
        async with fuzz_client(handler, poll_interval=3600.0) as client:
            if expected is None:
                with pytest.raises(InvalidRequestError) as caught:
                    await client.submit(**arguments)
                assert sent == []
                _no_key(str(caught.value), repr(caught.value))
                return
            handle = await client.submit(**arguments)
        assert handle.task_id == "t-accepted"
    [request] = sent
    assert (request.method, request.url.path) == ("POST", "/api/generate")
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.content) == expected
    _no_key(caplog.text)


# -- server answers -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """One HTTP answer of a fuzzed server."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()
    streamed: bool = False
    garbage: bool = False
    huge: bool = False
    note: str = field(default="", compare=False)

    def __repr__(self) -> str:
        return f"Answer({self.status}, {self.body[:120]!r}{'...' if len(self.body) > 120 else ''}, {self.note})"

    def response(self) -> httpx.Response:
        """The answer as httpx gives it back to the SDK."""
        if self.streamed:
            return httpx.Response(self.status, headers=list(self.headers), stream=_Chunks(self.body))
        return httpx.Response(self.status, headers=list(self.headers), content=self.body)


class _Chunks(httpx.AsyncByteStream):
    """A body sent in chunks with no content-length; an iterator, not a generator, so nothing is left unclosed."""

    def __init__(self, body: bytes, size: int = 256 * 1024) -> None:
        self._parts = [body[start : start + size] for start in range(0, len(body), size)]
        self._next = 0

    def __aiter__(self) -> _Chunks:
        return self

    async def __anext__(self) -> bytes:
        if self._next >= len(self._parts):
            raise StopAsyncIteration
        self._next += 1
        return self._parts[self._next - 1]


_JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12)
)
_JSON = st.recursive(
    _JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
_STATUSES = st.one_of(
    st.sampled_from(
        [
            "SUCCESS",
            "success",
            "COMPLETED",
            "FAILED",
            "failure",
            "ERROR",
            "cancelled",
            "CANCELED",
            "IN_PROGRESS",
            "PENDING",
            "QUEUED",
            "PROCESSING",
            "in_queue",
            "MYSTERY",
            "",
        ]
    ),
    _JSON,
)
_CODES = st.one_of(st.sampled_from([200, "200", 0, 402, "429", 404, 500, 503, 200.0, True]), _JSON)
_URLS = st.one_of(st.lists(st.text(max_size=20), max_size=3), st.text(max_size=20), _JSON)
_DATA = st.fixed_dictionaries(
    {},
    optional={
        "task_id": st.one_of(st.just("victim"), st.just(""), st.text(max_size=10), _JSON),
        "status": _STATUSES,
        "response": _URLS,
        "consumed_credits": st.one_of(st.integers(), st.floats(), st.text(max_size=4), st.none()),
        "type": st.one_of(st.sampled_from(["text-to-image", "edit"]), _JSON),
        "model": _JSON,
        "error": _JSON,
        "error_message": _JSON,
        "message": _JSON,
        "request": _JSON,
        "created_at": _JSON,
        "extra": _JSON,
    },
)
_ENVELOPES = st.fixed_dictionaries(
    {},
    optional={
        "code": _CODES,
        "message": st.one_of(st.sampled_from(["success", "ok", "boom"]), _JSON),
        "data": st.one_of(_DATA, _JSON),
        "error": _JSON,
    },
)
_HTTP_STATUSES = st.sampled_from(
    [200, 200, 200, 200, 201, 204, 301, 400, 401, 402, 403, 404, 408, 409, 418, 422, 429, 500, 502, 503, 504, 520]
)
_HTML = (
    b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head>"
    b"<body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>"
)
_NOT_UTF8 = (b"\xff\xfe\x00g\x00a\x00r", b'{"code": 200, "data": {"task_id": "\xc3\x28"}}', b"\x80" * 50)
_OVERSIZED = b'{"code": 200, "message": "success", "data": {"task_id": "victim", "pad": "' + b"x" * CAP + b'"}}'
_DEEP = b"[" * 100_000 + b"]" * 100_000


def _headers_for(status: int, content_type: str | None) -> tuple[tuple[str, str], ...]:
    headers: list[tuple[str, str]] = []
    if content_type is not None:
        headers.append(("content-type", content_type))
    if status in (429, 503):
        # A fuzz run must not sit out long pauses; what a pause does is the soak's business.
        headers.append(("retry-after", "0"))
    return tuple(headers)


@st.composite
def answers(draw: st.DrawFn, data: st.SearchStrategy[Any] = _DATA) -> Answer:
    """Any answer a broken or unusual server might give, on any status."""
    status = draw(_HTTP_STATUSES)
    kind = draw(st.sampled_from(["envelope", "envelope", "envelope", "json", "html", "empty", "bytes", "huge", "deep"]))
    content_type = draw(st.sampled_from(["application/json", "text/html; charset=utf-8", "text/plain", None]))
    headers = _headers_for(status, content_type)
    if kind == "envelope":
        envelope = draw(_ENVELOPES)
        if "data" not in envelope and draw(st.booleans()):
            envelope["data"] = draw(data)
        return Answer(status, json.dumps(envelope).encode(), headers, note="envelope")
    if kind == "json":
        return Answer(status, json.dumps(draw(_JSON)).encode(), headers, note="json")
    if kind == "html":
        return Answer(status, _HTML, headers, garbage=True, note="html")
    if kind == "empty":
        return Answer(status, b"", headers, garbage=True, note="empty")
    if kind == "bytes":
        body = draw(st.one_of(st.sampled_from(_NOT_UTF8), st.binary(max_size=64).map(lambda raw: b"\xff" + raw)))
        return Answer(status, body, headers, garbage=True, note="not utf-8")
    if kind == "deep":
        return Answer(status, _DEEP, headers, garbage=True, note="deeply nested")
    return Answer(status, _OVERSIZED, headers, streamed=draw(st.booleans()), garbage=True, huge=True, note="huge")


def _submit_outcome_is_typed(answer: Answer, outcome: TaskHandle | BaseException) -> None:
    """What a submit may end in, given the answer it got (sent once: no retries configured)."""
    if isinstance(outcome, TaskHandle):
        assert 200 <= answer.status < 300
        assert not answer.garbage
        data = json.loads(answer.body)["data"]
        assert outcome.task_id == data["task_id"]
        return
    assert isinstance(outcome, Banana2Error), f"{type(outcome).__name__}: {outcome}"
    assert not isinstance(outcome, InvalidRequestError)
    if answer.huge:
        assert isinstance(outcome, (SubmissionUncertainError, APIStatusError))
    elif answer.status in (429, 503):
        assert isinstance(outcome, APIStatusError)
        assert outcome.status_code == answer.status
    elif answer.status >= 500:
        assert isinstance(outcome, SubmissionUncertainError)
        assert outcome.status_code == answer.status
    elif answer.status >= 300:
        assert isinstance(outcome, APIStatusError)
        assert outcome.status_code == answer.status
    else:
        # A 2xx that is not a usable acceptance: the task may exist and have been paid for.
        assert isinstance(outcome, (SubmissionUncertainError, APIStatusError))
        if isinstance(outcome, APIStatusError):
            assert outcome.status_code >= 300


@HTTPX_ABANDONED_STREAMS
@FUZZ
@given(answer=answers())
async def test_a_fuzzed_submit_answer_is_a_handle_or_a_typed_error(
    answer: Answer, caplog: pytest.LogCaptureFixture
) -> None:
    """Any answer to POST /api/generate gives a handle or a Banana2Error, after exactly one request."""
    caplog.clear()
    posts = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal posts
        posts += 1
        return answer.response()

    outcome: TaskHandle | BaseException
    with caplog.at_level(logging.DEBUG):
        async with fuzz_client(handler, poll_interval=3600.0) as client:
            try:
                outcome = await client.submit("a fuzzed answer")
            except Exception as exc:
                outcome = exc
            assert posts == 1
            _submit_outcome_is_typed(answer, outcome)
    if isinstance(outcome, BaseException):
        _no_key(str(outcome), repr(outcome))
    _no_key(caplog.text)


def _good(task_id: str) -> httpx.Response:
    return httpx.Response(
        200,
        json={
            "code": 200,
            "message": "success",
            "data": {"task_id": task_id, "status": "SUCCESS", "response": [f"https://img.example/{task_id}.png"]},
        },
    )


def _running(task_id: str) -> httpx.Response:
    return httpx.Response(
        200, json={"code": 200, "message": "success", "data": {"task_id": task_id, "status": "QUEUED"}}
    )


def _mid_way(task_id: str, answer: Answer | None) -> list[Callable[[], httpx.Response]]:
    """Running, (the fuzzed answer,) running, success."""
    running: Callable[[], httpx.Response] = lambda: _running(task_id)  # noqa: E731
    fuzzed = [answer.response] if answer is not None else []
    return [running, *fuzzed, running, lambda: _good(task_id)]


class Script:
    """Per task id, the answers its polls get in turn; the last one repeats."""

    def __init__(self, answers: Mapping[str, Sequence[Callable[[], httpx.Response]]]) -> None:
        self.answers = answers
        self.polls: Counter[str] = Counter()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        task_id = request.url.params.get("task_id", "")
        script = self.answers.get(task_id) or [lambda: _good(task_id)]
        self.polls[task_id] += 1
        return script[min(self.polls[task_id], len(script)) - 1]()


async def _settle(handle: TaskHandle) -> GenerationResult | BaseException:
    try:
        return await handle
    except Exception as exc:
        return exc


async def _read_once(answer: Answer) -> TaskInfo | BaseException:
    """What `client.status` makes of ``answer``: the SDK's reading of it, without the poller."""
    async with fuzz_client(lambda request: answer.response()) as reader:
        try:
            return await reader.status("victim")
        except Exception as exc:
            return exc


_TRANSIENT_STATUS: Final = frozenset({408, 429})


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, APIStatusError):
        return exc.status_code in _TRANSIENT_STATUS or exc.status_code >= 500
    return isinstance(exc, Banana2Error) and not isinstance(exc, InvalidRequestError)


@HTTPX_ABANDONED_STREAMS
@FUZZ
@given(answer=answers())
async def test_a_fuzzed_poll_answer_settles_as_read_or_is_retried(
    answer: Answer, caplog: pytest.LogCaptureFixture
) -> None:
    """A poll's answer settles its task as client.status reads it, or is retried; the poller and other tasks go on."""
    caplog.clear()
    reading = await _read_once(answer)
    script = Script(
        {
            "victim": [answer.response, lambda: _good("victim")],
            "bystander": [lambda: _running("bystander"), lambda: _running("bystander"), lambda: _good("bystander")],
        }
    )
    with caplog.at_level(logging.DEBUG):
        async with fuzz_client(script) as client:
            bystander = client.track("bystander")
            victim = client.track("victim")
            with anyio.fail_after(10):
                victim_outcome = await _settle(victim)
                bystander_outcome = await _settle(bystander)
                later = await _settle(client.track("later"))
            assert client.statistics().tasks_watched == 0

    # The poller read the answer as a single status call does.
    if isinstance(reading, TaskInfo):
        assert reading.task_id == "victim"
        if reading.state == "success":
            assert isinstance(victim_outcome, GenerationResult)
            assert victim_outcome == GenerationResult.from_info(reading)
        elif reading.state == "failed":
            assert isinstance(victim_outcome, TaskFailedError)
            assert (victim_outcome.task_id, victim_outcome.status) == ("victim", str(reading.status))
            assert reading.error_detail is None or victim_outcome.message == reading.error_detail
        else:
            assert victim_outcome == GenerationResult.from_info(TaskInfo.model_validate(_good("victim").json()["data"]))
        assert script.polls["victim"] == (1 if reading.state in ("success", "failed") else 2)
    elif _is_transient(reading):
        # A body that is no envelope, a 5xx, 408 or 429: the next poll gets the good answer.
        assert isinstance(victim_outcome, GenerationResult), victim_outcome
        assert victim_outcome.images == ["https://img.example/victim.png"]
        assert script.polls["victim"] == 2
    else:
        assert isinstance(reading, APIStatusError), reading
        assert type(victim_outcome) is type(reading)
        assert isinstance(victim_outcome, APIStatusError)
        assert victim_outcome.status_code == reading.status_code
        assert script.polls["victim"] == 1
    if answer.garbage and answer.status < 300:
        assert isinstance(victim_outcome, GenerationResult)

    # Only a refused key concerns the other tasks; the poller itself always goes on.
    if isinstance(victim_outcome, AuthenticationError):
        assert isinstance(bystander_outcome, AuthenticationError)
    else:
        assert isinstance(bystander_outcome, GenerationResult)
        assert bystander_outcome.images == ["https://img.example/bystander.png"]
    assert isinstance(later, GenerationResult)
    for outcome in (victim_outcome, bystander_outcome, reading):
        _no_key(repr(outcome), str(outcome))
    _no_key(caplog.text)


@pytest.mark.slow
@HTTPX_ABANDONED_STREAMS
@settings(FUZZ, max_examples=25)
@given(answer=answers(), position=st.integers(min_value=0, max_value=7))
async def test_a_fuzzed_answer_among_many_tasks_touches_one_task_only(
    answer: Answer, position: int, caplog: pytest.LogCaptureFixture
) -> None:
    """Eight tasks in flight, one gets a fuzzed answer mid-way: the seven others end as if nothing happened."""
    caplog.clear()
    names = [f"task-{index}" for index in range(8)]
    odd = names[position]
    script = Script({name: _mid_way(name, answer if name == odd else None) for name in names})
    with caplog.at_level(logging.DEBUG):
        async with fuzz_client(script, max_concurrent_polls=3) as client:
            handles = [client.track(name) for name in names]
            with anyio.fail_after(10):
                outcomes = [await _settle(handle) for handle in handles]
            assert client.statistics().tasks_watched == 0
    odd_outcome = outcomes[position]
    assert isinstance(odd_outcome, (GenerationResult, Banana2Error)), repr(odd_outcome)
    for name, outcome in zip(names, outcomes, strict=True):
        if name == odd or isinstance(odd_outcome, AuthenticationError):
            continue
        assert isinstance(outcome, GenerationResult), (name, outcome)
        assert outcome.images == [f"https://img.example/{name}.png"]
        assert script.polls[name] == 3
    _no_key(caplog.text)


@HTTPX_ABANDONED_STREAMS
@pytest.mark.parametrize("streamed", [False, True], ids=["declared", "streamed"])
async def test_a_huge_status_answer_is_a_retry_not_a_crash(streamed: bool) -> None:
    """An answer past the 4 MiB cap, declared or streamed, is dropped and the task polled again."""
    answer = Answer(200, _OVERSIZED, streamed=streamed, huge=True, garbage=True)
    script = Script({"victim": [answer.response, lambda: _good("victim")]})
    async with fuzz_client(script) as client:
        with anyio.fail_after(10):
            result = await client.track("victim")
    assert result.images == ["https://img.example/victim.png"]
    assert script.polls["victim"] == 2


async def test_a_status_answer_for_another_task_is_not_taken_as_this_one() -> None:
    """A poll of task A answered with task B's result is not given to A's waiters as A's result."""
    other = httpx.Response(
        200,
        json={"code": 200, "data": {"task_id": "someone-else", "status": "SUCCESS", "response": ["https://x/y.png"]}},
    )
    script = Script({"victim": [lambda: other, lambda: _good("victim")]})
    async with fuzz_client(script) as client:
        with anyio.fail_after(10):
            result = await client.track("victim")
    assert result.task_id == "victim"
    assert result.images == ["https://img.example/victim.png"]


def test_the_oracle_agrees_with_the_documented_examples() -> None:
    """The independent oracle gives the API reference's own example bodies."""
    assert expected_wire(
        {
            "prompt": "A futuristic cyberpunk city with neon lights, cinematic style",
            "aspect_ratio": "16:9",
            "resolution": "2k",
        }
    ) == {
        "prompt": "A futuristic cyberpunk city with neon lights, cinematic style",
        "aspect_ratio": "16:9",
        "resolution": "2k",
    }
    assert expected_wire(
        {"type": "edit", "prompt": "Turn the cat into a tiger", "images": ["https://example.com/cat.jpg"]}
    ) == {"type": "edit", "prompt": "Turn the cat into a tiger", "images": ["https://example.com/cat.jpg"]}
    assert expected_wire({"prompt": " "}) is None
    assert expected_wire({"prompt": "x", "images": []}) is None
