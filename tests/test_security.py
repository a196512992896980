"""The API key stays secret, plain http is refused, auth never leaves the API's origin, logs say what was sent."""

from __future__ import annotations

import html
import json
import logging
import re
import traceback
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import anyio.abc
import httpx
import pytest
import respx
from _marks import HTTPX_ABANDONED_STREAMS

from banana2_async import (
    APIResponseError,
    AsyncBanana2,
    AuthenticationError,
    BadRequestError,
    Banana2Error,
    ConfigurationError,
    GenerationResult,
    SubmissionUncertainError,
    __version__,
)

# On trio the clock is virtual: backoff sleeps cost no wall time there.
pytestmark = [pytest.mark.anyio, pytest.mark.virtual_clock]

BASE = "https://banana2api.com"
KEY = "sk-live-7Hq2ZpX9vW4rT1yB"
SECRET = KEY.removeprefix("sk-")


def _json(status: int, body: Any, **headers: str) -> httpx.Response:
    return httpx.Response(status, json=body, headers=headers)


def _task(task_id: str, status: str, **extra: Any) -> httpx.Response:
    return _json(200, {"code": 200, "message": "success", "data": {"task_id": task_id, "status": status, **extra}})


def _accepted(task_id: str) -> httpx.Response:
    return _task(task_id, "IN_PROGRESS")


def _done(task_id: str) -> httpx.Response:
    return _task(task_id, "SUCCESS", consumed_credits=20, response=["https://cdn.example/1.png"])


def _error(status: int, message: str = "error", **headers: str) -> httpx.Response:
    return _json(status, {"code": status, "message": message, "data": None}, **headers)


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests start without the SDK's environment variables."""
    monkeypatch.delenv("BANANA2_API_KEY", raising=False)
    monkeypatch.delenv("BANANA2_BASE_URL", raising=False)


@pytest.fixture
def api() -> Iterator[respx.MockRouter]:
    """respx standing in for the API host."""
    with respx.mock(base_url=BASE, assert_all_called=False) as router:
        yield router


def _leaks(text: str) -> bool:
    return SECRET in text


def _everything_about(exc: BaseException) -> str:
    parts = ["".join(traceback.format_exception(exc))]
    seen: BaseException | None = exc
    while seen is not None:
        parts += [str(seen), repr(seen), repr(vars(seen))]
        seen = seen.__cause__ or seen.__context__
    return "\n".join(parts)


# -- the key in reprs, strs, exceptions and logs -------------------------------------------------


async def test_a_whole_run_shows_the_key_nowhere(api: respx.MockRouter, caplog: pytest.LogCaptureFixture) -> None:
    """Across a run with successes, retries and failures, no repr, str, exception or DEBUG log line holds the key."""
    caplog.set_level(logging.DEBUG)
    api.post("/api/generate").mock(
        side_effect=[
            _error(429, "slow down", **{"retry-after": "0"}),
            _accepted("t1"),
            _error(401, "invalid api key"),
            _error(500, "boom"),
            httpx.ReadTimeout,
            _error(400, "bad prompt"),
        ]
    )
    api.get("/api/status").mock(
        side_effect=[
            _error(503, "busy", **{"retry-after": "0"}),
            _accepted("t1"),
            _done("t1"),
            httpx.ConnectError,
            _done("t1"),
            _error(404, "no such task"),
        ]
    )
    errors: list[Banana2Error] = []
    async with AsyncBanana2(KEY, base_url=BASE, poll_interval=0.001, max_retries=1, wait_timeout=10) as client:
        handle = await client.submit("a fox")
        result = await handle
        info = await client.status("t1")
        for _ in range(3):
            try:
                await client.submit("a fox")
            except Banana2Error as exc:
                errors.append(exc)
        try:
            await client.status("gone")
        except Banana2Error as exc:
            errors.append(exc)
        shown = [repr(client), str(client), repr(getattr(client, "__dict__", {})), repr(handle), str(handle)]
    shown += [repr(client), repr(result), str(result), repr(info), str(info), repr(result.info)]

    assert isinstance(result, GenerationResult)
    assert [type(exc).__name__ for exc in errors] == [
        "AuthenticationError",
        "SubmissionUncertainError",
        "SubmissionUncertainError",
        "NotFoundError",
    ]
    for text in shown + [_everything_about(exc) for exc in errors]:
        assert not _leaks(text), text
    assert caplog.records, "the run logged nothing: the scan proves nothing"
    assert any(record.name == "banana2_async" and record.levelno == logging.DEBUG for record in caplog.records)
    assert not _leaks(caplog.text)
    for record in caplog.records:
        assert not _leaks(record.getMessage())
        assert not _leaks(repr(record.args))
        assert not _leaks(repr(vars(record)))
    # the requests did carry it: the scan looked at a run that used the key
    assert all(call.request.headers["authorization"] == f"Bearer {KEY}" for call in api.calls)


@pytest.mark.parametrize(
    "answer",
    [
        lambda: _error(401, f"invalid api key {KEY}"),
        lambda: _json(400, {"code": 400, "message": "bad", "data": {"echo": {"authorization": f"Bearer {KEY}"}}}),
        lambda: httpx.Response(200, text=f"<html>debug: Authorization: Bearer {KEY}</html>"),
        lambda: httpx.Response(200, text=f"<html>{'x' * 180} {KEY} {'y' * 100}</html>"),
        lambda: httpx.Response(502, text=f"upstream said: {KEY}"),
    ],
    ids=["401-message", "400-body", "200-html", "200-excerpt-edge", "502-text"],
)
async def test_a_key_echoed_by_the_server_is_redacted(api: respx.MockRouter, answer: Any) -> None:
    """A server that echoes the key in its answer does not put it into the error raised."""
    api.post("/api/generate").mock(side_effect=[answer()])
    async with AsyncBanana2(KEY, base_url=BASE, poll_interval=60.0) as client:
        with pytest.raises(Banana2Error) as caught:
            await client.submit("a fox")
    assert not _leaks(_everything_about(caught.value))
    assert "[redacted]" in _everything_about(caught.value)


@HTTPX_ABANDONED_STREAMS
async def test_a_key_echoed_in_an_oversized_body_is_redacted(api: respx.MockRouter) -> None:
    """The excerpt of an answer too large to read does not carry an echoed key."""

    async def body() -> AsyncIterator[bytes]:
        yield f"<html>{KEY}".encode()
        for _ in range(5):
            yield b"x" * (1024 * 1024)

    api.get("/api/status").mock(return_value=httpx.Response(200, content=body()))
    with pytest.raises(APIResponseError, match="larger than") as caught:
        await AsyncBanana2(KEY, base_url=BASE, max_retries=0).status("t1")
    assert caught.value.excerpt.startswith("<html>[redacted]")
    assert not _leaks(_everything_about(caught.value))


async def test_a_short_key_is_not_redacted_out_of_answers(api: respx.MockRouter) -> None:
    """A key too short to be a secret is not blanked out of answers, which would garble them."""
    api.get("/api/status").mock(return_value=_task("abc", "IN_PROGRESS", note="abc"))
    info = await AsyncBanana2("abc", base_url=BASE).status("abc")
    assert info.model_extra == {"note": "abc"}


def test_client_repr_shows_no_key() -> None:
    """repr and str of a client name its base URL and state only."""
    client = AsyncBanana2(KEY, base_url=BASE)
    assert not _leaks(repr(client))
    assert not _leaks(str(client))
    assert "banana2api.com" in repr(client)


# -- one DEBUG line per request ------------------------------------------------------------------

REQUEST_LINE = re.compile(r"^(GET|POST) (/api/status|/api/generate) -> (\d{3}|[A-Za-z]+) in \d+\.\d ms$")


async def test_one_debug_line_per_request(api: respx.MockRouter, caplog: pytest.LogCaptureFixture) -> None:
    """Each request, answered or failed, logs one DEBUG line on 'banana2_async': method, path, status, elapsed."""
    caplog.set_level(logging.DEBUG, logger="banana2_async")
    api.get("/api/status").mock(
        side_effect=[
            _error(503, "busy", **{"retry-after": "0"}),
            _accepted("t1"),
            httpx.ConnectError,
            _error(429, **{"retry-after": "0"}),
            _accepted("t1"),
        ]
    )
    api.post("/api/generate").mock(side_effect=[httpx.ReadTimeout])
    client = AsyncBanana2(KEY, base_url=BASE, max_retries=2)
    await client.status("t1")
    await client.status("t1")
    async with client:
        with pytest.raises(SubmissionUncertainError):
            await client.submit("a fox")

    lines = [
        record.getMessage()
        for record in caplog.records
        if record.name == "banana2_async" and REQUEST_LINE.match(record.getMessage())
    ]
    assert [record.levelno for record in caplog.records if REQUEST_LINE.match(record.getMessage())] == [
        logging.DEBUG
    ] * len(lines)
    assert len(lines) == len(api.calls)
    outcomes = [line.split(" -> ")[0] + " " + line.split(" -> ")[1].split(" in ")[0] for line in lines]
    assert outcomes == [
        "GET /api/status 503",
        "GET /api/status 200",
        "GET /api/status ConnectError",
        "GET /api/status 429",
        "GET /api/status 200",
        "POST /api/generate ReadTimeout",
    ]
    assert not any("task_id" in line for line in lines)


async def test_no_request_lines_when_debug_is_off(api: respx.MockRouter, caplog: pytest.LogCaptureFixture) -> None:
    """At INFO nothing is logged per request."""
    caplog.set_level(logging.INFO, logger="banana2_async")
    api.get("/api/status").mock(side_effect=[httpx.ConnectError, _accepted("t1")])
    await AsyncBanana2(KEY, base_url=BASE, max_retries=1).status("t1")
    assert not [record for record in caplog.records if record.name == "banana2_async"]


# -- plain http ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "base_url",
    [
        "http://banana2api.com",
        "http://example.com:8080/api",
        "http://10.0.0.7",
        "http://0.0.0.0:8000",
        "http://localhost.evil.example",
        "http://127.0.0.1.nip.io",
        "http://[::2]:8000",
        "HTTP://BANANA2API.COM",
    ],
)
def test_plain_http_to_a_remote_host_is_refused(base_url: str) -> None:
    """A plain http base URL to a host other than loopback raises ConfigurationError."""
    with pytest.raises(ConfigurationError, match="allow_insecure_http") as caught:
        AsyncBanana2(KEY, base_url=base_url)
    assert not _leaks(str(caught.value))


def test_plain_http_from_the_environment_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """BANANA2_BASE_URL is vetted like the argument."""
    monkeypatch.setenv("BANANA2_BASE_URL", "http://banana2api.com")
    with pytest.raises(ConfigurationError):
        AsyncBanana2(KEY)


@pytest.mark.parametrize(
    "base_url",
    [
        "http://127.0.0.1:8000",
        "http://127.9.8.7",
        "http://localhost",
        "http://LOCALHOST:8080/prefix",
        "http://[::1]:9000",
    ],
)
async def test_plain_http_to_loopback_is_allowed(base_url: str) -> None:
    """Loopback (127.0.0.0/8, localhost, ::1) may be plain http: the key never leaves the machine."""
    with respx.mock(assert_all_called=False) as router:
        route = router.get(url__regex=r"/api/status").mock(return_value=_accepted("t1"))
        await AsyncBanana2(KEY, base_url=base_url).status("t1")
    assert route.calls.last.request.url.scheme == "http"


async def test_allow_insecure_http_opts_in() -> None:
    """``allow_insecure_http=True`` allows plain http to any host."""
    with respx.mock(base_url="http://banana2api.com", assert_all_called=False) as router:
        route = router.get("/api/status").mock(return_value=_accepted("t1"))
        await AsyncBanana2(KEY, base_url="http://banana2api.com", allow_insecure_http=True).status("t1")
    assert route.call_count == 1


@pytest.mark.parametrize("base_url", ["ftp://banana2api.com", "banana2api.com", "https://", "://x", "http://[::1"])
def test_a_base_url_that_is_no_http_url_is_refused(base_url: str) -> None:
    """A base URL without an http(s) scheme and a host is a ConfigurationError."""
    with pytest.raises(ConfigurationError):
        AsyncBanana2(KEY, base_url=base_url)


@pytest.mark.parametrize(
    "base_url",
    ["https://user:hunter2secret@banana2api.com", "https://user@banana2api.com", "http://:pw@127.0.0.1:8000"],
)
def test_a_base_url_with_credentials_is_refused(base_url: str) -> None:
    """Credentials in the base URL would replace the key as basic auth, and show in reprs: refused, unechoed."""
    with pytest.raises(ConfigurationError, match="credentials") as caught:
        AsyncBanana2(KEY, base_url=base_url)
    assert "hunter2" not in str(caught.value)
    assert not _leaks(str(caught.value))


# -- the key and base URL from the environment ---------------------------------------------------


async def test_api_key_from_the_environment(api: respx.MockRouter, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without api_key, BANANA2_API_KEY is used."""
    monkeypatch.setenv("BANANA2_API_KEY", "sk-from-the-environment")
    route = api.get("/api/status").mock(return_value=_accepted("t1"))
    await AsyncBanana2(base_url=BASE).status("t1")
    assert route.calls.last.request.headers["authorization"] == "Bearer sk-from-the-environment"


async def test_api_key_argument_beats_the_environment(api: respx.MockRouter, monkeypatch: pytest.MonkeyPatch) -> None:
    """An explicit api_key wins over BANANA2_API_KEY."""
    monkeypatch.setenv("BANANA2_API_KEY", "sk-from-the-environment")
    route = api.get("/api/status").mock(return_value=_accepted("t1"))
    await AsyncBanana2(KEY, base_url=BASE).status("t1")
    assert route.calls.last.request.headers["authorization"] == f"Bearer {KEY}"


async def test_base_url_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without base_url, BANANA2_BASE_URL is used; the argument wins over it."""
    monkeypatch.setenv("BANANA2_BASE_URL", "https://eu.banana2api.example/v1")
    with respx.mock(assert_all_called=False) as router:
        env_route = router.get("https://eu.banana2api.example/v1/api/status").mock(return_value=_accepted("t1"))
        arg_route = router.get(f"{BASE}/api/status").mock(return_value=_accepted("t1"))
        await AsyncBanana2(KEY).status("t1")
        await AsyncBanana2(KEY, base_url=BASE).status("t1")
    assert env_route.call_count == 1
    assert arg_route.call_count == 1


async def test_default_base_url(api: respx.MockRouter) -> None:
    """With neither argument nor environment, the API's documented host is used."""
    route = api.get("/api/status").mock(return_value=_accepted("t1"))
    client = AsyncBanana2(KEY)
    await client.status("t1")
    assert str(client.base_url).rstrip("/") == BASE
    assert route.call_count == 1


@pytest.mark.parametrize("key", [None, "", "   "])
def test_no_api_key_is_a_configuration_error(key: str | None) -> None:
    """No key (argument or environment), or a blank one, raises ConfigurationError naming BANANA2_API_KEY."""
    with pytest.raises(ConfigurationError, match="BANANA2_API_KEY"):
        AsyncBanana2(key, base_url=BASE)


def test_blank_key_in_the_environment_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty BANANA2_API_KEY counts as none."""
    monkeypatch.setenv("BANANA2_API_KEY", "")
    with pytest.raises(ConfigurationError):
        AsyncBanana2(base_url=BASE)


@pytest.mark.parametrize("key", ["sk-two words", "sk-line\nbreak", "sk-tab\there", "sk-ключ-123456", "sk-\x00nul"])
def test_a_key_that_cannot_be_a_header_is_a_configuration_error(key: str) -> None:
    """A key with whitespace, control or non-ASCII characters is refused up front, without echoing it."""
    with pytest.raises(ConfigurationError) as caught:
        AsyncBanana2(key, base_url=BASE)
    assert key.strip() not in str(caught.value)


# -- headers and redirects -----------------------------------------------------------------------


async def test_user_agent_and_auth_headers(api: respx.MockRouter) -> None:
    """Every request says ``User-Agent: banana2-async/<version>`` and carries the bearer key."""
    api.get("/api/status").mock(return_value=_accepted("t1"))
    api.post("/api/generate").mock(return_value=_accepted("t1"))
    async with AsyncBanana2(KEY, base_url=BASE, poll_interval=60.0) as client:
        await client.submit("a fox")
        await client.status("t1")
    for call in api.calls:
        assert call.request.headers["user-agent"] == f"banana2-async/{__version__}"
        assert call.request.headers["authorization"] == f"Bearer {KEY}"


async def test_user_agent_wins_over_a_callers_client_default() -> None:
    """A caller's httpx client with its own User-Agent still sends the SDK's on API requests."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return _accepted("t1")

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler), headers={"User-Agent": "mine/1"}) as http:
        await AsyncBanana2(KEY, base_url=BASE, http_client=http).status("t1")
    assert seen[0].headers["user-agent"] == f"banana2-async/{__version__}"


class Recorder:
    """A MockTransport handler that answers per host and records every request's headers."""

    def __init__(self, routes: dict[tuple[str, str], httpx.Response]) -> None:
        self.routes = routes
        self.seen: list[tuple[str, str, httpx.Headers]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        origin = f"{request.url.scheme}://{request.url.netloc.decode()}"
        self.seen.append((origin, request.url.path, request.headers))
        return self.routes[(origin, request.url.path)]

    def authorization(self, origin: str) -> list[str | None]:
        return [headers.get("authorization") for seen_origin, _, headers in self.seen if seen_origin == origin]


@pytest.mark.parametrize(
    "elsewhere",
    [
        "https://cdn.other.example",
        "https://banana2api.com.evil.example",
        "https://banana2api.com:8443",
        "http://banana2api.com",
    ],
)
@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
async def test_auth_is_dropped_on_a_redirect_to_another_origin(elsewhere: str, code: int) -> None:
    """A redirect from the API to another host, port or scheme reaches it without the Authorization header."""
    recorder = Recorder(
        {
            (BASE, "/api/status"): httpx.Response(code, headers={"location": f"{elsewhere}/moved?task_id=t1"}),
            (elsewhere, "/moved"): _accepted("t1"),
        }
    )
    async with httpx.AsyncClient(transport=httpx.MockTransport(recorder)) as http:
        info = await AsyncBanana2(KEY, base_url=BASE, http_client=http).status("t1")
    assert info.task_id == "t1"
    assert recorder.authorization(BASE) == [f"Bearer {KEY}"]
    assert recorder.authorization(elsewhere) == [None]
    assert all(not _leaks(repr(dict(headers))) for origin, _, headers in recorder.seen if origin == elsewhere)


async def test_auth_is_dropped_when_a_submit_is_redirected_away() -> None:
    """A 307 of the POST to another host resends the body there, but not the key."""
    elsewhere = "https://cdn.other.example"
    recorder = Recorder(
        {
            (BASE, "/api/generate"): httpx.Response(307, headers={"location": f"{elsewhere}/generate"}),
            (elsewhere, "/generate"): _accepted("t1"),
        }
    )
    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(recorder)) as http,
        AsyncBanana2(KEY, base_url=BASE, http_client=http, poll_interval=60.0) as client,
    ):
        await client.submit("a fox")
    assert recorder.authorization(elsewhere) == [None]
    origin, path, _ = recorder.seen[1]
    assert (origin, path) == (elsewhere, "/generate")


async def test_auth_is_dropped_on_a_redirect_with_the_sdks_own_client() -> None:
    """With the SDK's own httpx client (respx), a cross-host redirect drops the key too."""
    moved = httpx.Response(302, headers={"location": "https://mirror.example/api/status?task_id=t1"})
    with respx.mock(assert_all_called=True) as router:
        api = router.get(f"{BASE}/api/status").mock(return_value=moved)
        mirror = router.get("https://mirror.example/api/status").mock(return_value=_accepted("t1"))
        await AsyncBanana2(KEY, base_url=BASE).status("t1")
    assert api.calls.last.request.headers["authorization"] == f"Bearer {KEY}"
    assert "authorization" not in mirror.calls.last.request.headers


async def test_auth_is_kept_on_a_same_origin_redirect() -> None:
    """A redirect within the API's origin keeps the key: it is the same server."""
    recorder = Recorder(
        {
            (BASE, "/api/status"): httpx.Response(308, headers={"location": "/v2/api/status?task_id=t1"}),
            (BASE, "/v2/api/status"): _accepted("t1"),
        }
    )
    async with httpx.AsyncClient(transport=httpx.MockTransport(recorder)) as http:
        await AsyncBanana2(KEY, base_url=BASE, http_client=http).status("t1")
    assert recorder.authorization(BASE) == [f"Bearer {KEY}", f"Bearer {KEY}"]


async def test_a_callers_client_never_gets_the_key_as_a_default(api: respx.MockRouter) -> None:
    """The key travels per request, not as a default header of the caller's httpx client."""
    async with httpx.AsyncClient() as http:
        client = AsyncBanana2(KEY, base_url=BASE, http_client=http)
        api.get("/api/status").mock(return_value=_accepted("t1"))
        await client.status("t1")
        assert "authorization" not in http.headers
        assert not _leaks(repr(dict(http.headers)))


async def test_errors_describe_requests_by_method_and_path_only(api: respx.MockRouter) -> None:
    """An error names the method and path, not the full URL with its query or headers."""
    api.get("/api/status").mock(side_effect=httpx.ConnectError)
    with pytest.raises(Banana2Error) as caught:
        await AsyncBanana2(KEY, base_url=BASE, max_retries=0).status("secret-task")
    assert "GET /api/status" in str(caught.value)
    assert "secret-task" not in str(caught.value)


async def test_bad_request_body_is_kept_for_diagnosis(api: respx.MockRouter) -> None:
    """A 400 keeps the server's body on the error, which never includes the request's headers."""
    body = {"code": 400, "message": "prompt is required", "data": None}
    api.get("/api/status").mock(return_value=_json(400, body))
    with pytest.raises(BadRequestError) as caught:
        await AsyncBanana2(KEY, base_url=BASE).status("t1")
    assert caught.value.body == body
    assert not _leaks(json.dumps(caught.value.body))


async def test_authentication_error_does_not_echo_the_key(api: respx.MockRouter) -> None:
    """A 401 says the key was refused, without showing it."""
    api.get("/api/status").mock(return_value=_error(401, "unauthorized"))
    with pytest.raises(AuthenticationError) as caught:
        await AsyncBanana2(KEY, base_url=BASE).status("t1")
    assert not _leaks(_everything_about(caught.value))


# -- the key in every spelling a server may echo it in ----------------------------------------------

SLASHED = "sk-test/abc+def/123+XYZ"


def _spelled(text: str) -> str:
    """``text`` with every spelling a key may come back in undone: percent-encoding, HTML and JSON escapes."""
    for _ in range(3):
        text = urllib.parse.unquote(text)
        text = html.unescape(text)
        text = re.sub(r"\\+u([0-9a-fA-F]{4})", lambda match: chr(int(match.group(1), 16)), text)
        text = re.sub(r"\\+x([0-9a-fA-F]{2})", lambda match: chr(int(match.group(1), 16)), text)
        text = re.sub(r"\\+/", "/", text)
    return text


def _shows_slashed_key(text: str) -> bool:
    return SLASHED in text or SLASHED in _spelled(text)


ECHOES = {
    "verbatim": SLASHED,
    "json-slash": SLASHED.replace("/", "\\/"),
    "json-unicode": "".join(f"\\u{ord(char):04x}" for char in SLASHED),
    "json-unicode-upper": "".join(f"\\u{ord(char):04X}" for char in SLASHED),
    "json-some-unicode": "".join(
        f"\\u{ord(char):04x}" if index % 3 == 0 else char for index, char in enumerate(SLASHED)
    ),
    "percent": urllib.parse.quote(SLASHED, safe=""),
    "percent-lower-hex": re.sub(
        "%[0-9A-F]{2}", lambda match: match.group(0).lower(), urllib.parse.quote(SLASHED, safe="")
    ),
    "percent-twice": urllib.parse.quote(urllib.parse.quote(SLASHED, safe=""), safe=""),
    "html": "".join(f"&#{ord(char)};" for char in SLASHED),
    "doubly-escaped-json": json.dumps(json.dumps(SLASHED))[1:-1],
}


def test_the_spellings_undo_to_the_key() -> None:
    """Each echo form of the tests below really spells the key (the scan would prove nothing otherwise)."""
    for form in ECHOES.values():
        assert _shows_slashed_key(form)


@pytest.mark.parametrize("form", sorted(ECHOES))
@pytest.mark.parametrize("where", ["400-message", "500-page", "200-failed-task", "200-extra-field", "request-id"])
async def test_a_key_echoed_in_any_spelling_comes_back_out_nowhere(
    form: str, where: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An echoed key, in any spelling and any place of an answer, is in no error, result, log record or traceback."""
    caplog.set_level(logging.DEBUG)
    echo = ECHOES[form]

    def handler(request: httpx.Request) -> httpx.Response:
        if where == "400-message":
            return httpx.Response(400, content=f'{{"code":400,"message":"bad key {echo}","data":null}}'.encode())
        if where == "500-page":
            return httpx.Response(500, content=f"<html><pre>Authorization: Bearer {echo}</pre></html>".encode())
        if where == "request-id":
            return httpx.Response(500, json={"code": 500, "message": "boom"}, headers={"x-request-id": f"r-{echo}"})
        data = (
            f'{{"task_id":"t1","status":"FAILED","error":"key {echo} is blocked"}}'
            if where == "200-failed-task"
            else f'{{"task_id":"t1","status":"SUCCESS","response":["https://cdn.example/1.png"],"seen":"{echo}"}}'
        )
        return httpx.Response(200, content=f'{{"code":200,"message":"success","data":{data}}}'.encode())

    transport = httpx.MockTransport(handler)
    shown: list[str] = []
    async with AsyncBanana2(SLASHED, base_url=BASE, transport=transport, max_retries=0, poll_interval=0.01) as client:
        try:
            info = await client.status("t1")
            shown += [repr(info), str(info), repr(info.model_extra), info.model_dump_json()]
            result = await client.track("t1")
            shown += [repr(result), result.model_dump_json()]
        except Banana2Error as exc:
            shown.append(_everything_about(exc))
            shown.append(repr(getattr(exc, "body", None)))
        try:
            await client.submit("a fox")
        except Banana2Error as exc:
            shown.append(_everything_about(exc))
            shown.append(repr(getattr(exc, "body", None)))
    assert shown
    for text in shown:
        assert not _shows_slashed_key(text), text
    for record in caplog.records:
        assert not _shows_slashed_key(record.getMessage())
        assert not _shows_slashed_key(repr(vars(record)))


async def test_a_key_echoed_in_a_header_line_httpx_cannot_parse_is_not_in_the_traceback() -> None:
    """A malformed answer whose header line echoes the key: the chained low-level errors do not quote it."""

    async def serve(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            await stream.receive()
            await stream.send(f"HTTP/1.1 200 OK\r\nX-Echo {SLASHED}\r\n\r\n".encode())

    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with anyio.create_task_group() as group:
            group.start_soon(listener.serve, serve)
            async with AsyncBanana2(SLASHED, base_url=f"http://127.0.0.1:{port}", max_retries=0) as client:
                with pytest.raises(Banana2Error) as caught:
                    await client.status("t1")
            group.cancel_scope.cancel()
    assert not _shows_slashed_key(_everything_about(caught.value))


async def test_a_key_echoed_in_a_header_is_in_no_library_log_record(caplog: pytest.LogCaptureFixture) -> None:
    """httpcore logs each answer's headers at DEBUG: a key a server echoes in one is blanked out there too."""
    caplog.set_level(logging.DEBUG)

    async def serve(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            await stream.receive()
            body = b'{"code":200,"data":{"task_id":"t1","status":"IN_PROGRESS"}}'
            head = f"HTTP/1.1 200 OK\r\nx-request-id: {urllib.parse.quote(SLASHED, safe='')}\r\n"
            await stream.send(f"{head}content-length: {len(body)}\r\n\r\n".encode() + body)

    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with anyio.create_task_group() as group:
            group.start_soon(listener.serve, serve)
            async with AsyncBanana2(SLASHED, base_url=f"http://127.0.0.1:{port}", max_retries=0) as client:
                await client.status("t1")
            group.cancel_scope.cancel()
    assert any(record.name.startswith("httpcore") for record in caplog.records), "httpcore logged nothing"
    for record in caplog.records:
        assert not _shows_slashed_key(record.getMessage()), record.getMessage()
