"""The fast paths of polls and submits give exactly what the full paths give.

Polls and submits skip ``build_request`` (a template of its headers instead), the error
bookkeeping of `decode_envelope` (`ok_envelope`) and the `TaskInfo` of a
plainly running task (`plainly_running`). Each is pinned here against the
full path it stands in for.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Generator
from typing import Any

import anyio
import anyio.abc
import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from banana2_async import APIResponseError, APIStatusError, AsyncBanana2, ConfigurationError, TaskInfo
from banana2_async._envelope import CHECKED_FIELDS, decode_envelope, ok_envelope, plainly_running
from banana2_async._models import parse_task

BASE = "https://banana2api.com"
KEY = "sk-fast-path-test-9c2d"

_SCALARS = st.none() | st.booleans() | st.integers(-1000, 1000) | st.floats(allow_nan=False) | st.text(max_size=8)
_VALUES = st.recursive(
    _SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner)
)
_STATUSES = st.sampled_from(["IN_PROGRESS", "in_progress", " PENDING ", "QUEUED", "SUCCESS", "FAILED", "WEIRD", ""])
_FIELDS = st.sampled_from(
    ["task_id", "status", "type", "model", "created_at", "response", "request", "consumed_credits", "error_detail"]
)
_DATA = st.fixed_dictionaries(
    {"status": _STATUSES | _VALUES},
    optional={"task_id": _VALUES | st.sampled_from(["t1", "t2"]), "progress": _VALUES},
).flatmap(
    lambda base: st.dictionaries(_FIELDS | st.text(max_size=6), _VALUES, max_size=4).map(lambda more: {**base, **more})
)
_CODES = st.none() | st.sampled_from([200, 201, 299, 300, 402, 500, "200", "402", " 404 ", "x", True, 200.0, -5])


@pytest.mark.slow
@given(data=_DATA)
def test_plainly_running_only_where_parse_task_says_running(data: dict[str, Any]) -> None:
    """Where `plainly_running` is true, the full parse gives a running TaskInfo, not an error."""
    if plainly_running(data, "t1"):
        info = parse_task({"code": 200, "message": "success", "data": data}, task_id="t1")
        assert isinstance(info, TaskInfo)
        assert info.state == "running"
        assert info.task_id == "t1"


def test_plainly_running_checks_every_field_of_task_info() -> None:
    """The fast path's list of fields is the model's, less the two `parse_task` fills in itself."""
    assert frozenset(TaskInfo.model_fields) - {"task_id", "error_detail"} == CHECKED_FIELDS


def test_plainly_running_covers_the_common_answer() -> None:
    """The documented in-flight answer, and ones with unknown extras or null fields, take the fast path."""
    assert plainly_running({"task_id": "n82", "type": "text-to-image", "status": "IN_PROGRESS"}, "n82")
    assert plainly_running({"status": "queued", "progress": {"percent": 40}, "response": None}, "n82")
    assert not plainly_running({"task_id": "n82", "status": "IN_PROGRESS", "consumed_credits": "lots"}, "n82")
    assert not plainly_running({"task_id": "n82", "status": "SUCCESS", "response": ["https://x/1.png"]}, "n82")
    assert not plainly_running({"task_id": "other", "status": "IN_PROGRESS"}, "n82")


@given(
    status_code=st.sampled_from([200, 201, 204, 299]),
    code=_CODES,
    data=st.none() | _VALUES | _DATA,
    extra=st.dictionaries(st.sampled_from(["message", "error", "x"]), _VALUES, max_size=2),
)
def test_ok_envelope_agrees_with_decode_envelope(
    status_code: int, code: object, data: object, extra: dict[str, Any]
) -> None:
    """`ok_envelope` returns what `decode_envelope` returns for a 2xx answer, or None where that raises."""
    body: dict[str, Any] = {**extra, "data": data}
    if code is not None:
        body["code"] = code
    content = json.dumps(body).encode()
    fast = ok_envelope(content)
    try:
        full = decode_envelope(status_code, content)
    except (APIResponseError, APIStatusError):
        assert fast is None
    else:
        assert fast == full


@pytest.mark.parametrize("content", [b"", b"null", b"[]", b"<html>", b"\xff", b"[" * 100_000 + b"]" * 100_000])
def test_ok_envelope_refuses_what_is_not_an_envelope(content: bytes) -> None:
    """Bodies that are not an envelope are left to `decode_envelope` to report."""
    assert ok_envelope(content) is None
    with pytest.raises(APIResponseError):
        decode_envelope(200, content)


# -- the requests of a poll and a submit ----------------------------------------------------------------

_ANSWER: dict[str, Any] = {"code": 200, "message": "success", "data": {"task_id": "t", "status": "IN_PROGRESS"}}


class _Recorder:
    """An httpx handler that keeps every request and answers a running task."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        # An answer about the task asked for: one about another task is refused.
        task_id = request.url.params.get("task_id", "t")
        return httpx.Response(200, json={**_ANSWER, "data": {**_ANSWER["data"], "task_id": task_id}})


def _without_cookie(request: httpx.Request) -> list[tuple[bytes, bytes]]:
    return [(name, value) for name, value in request.headers.raw if name.lower() != b"cookie"]


@contextlib.asynccontextmanager
async def _connected(recorder: _Recorder, *, own: bool) -> AsyncIterator[tuple[AsyncBanana2, httpx.AsyncClient]]:
    """The SDK over ``recorder``, with an httpx client of its own (``own``) or of the caller's; ``X-Trace: on``."""
    transport = httpx.MockTransport(recorder)
    if own:
        async with AsyncBanana2(api_key=KEY, base_url=f"{BASE}/v2/", transport=transport) as client:
            client.http_client.headers["X-Trace"] = "on"
            yield client, client.http_client
        return
    async with (
        httpx.AsyncClient(transport=transport, headers={"X-Trace": "on"}) as http,
        AsyncBanana2(api_key=KEY, base_url=f"{BASE}/v2/", http_client=http) as client,
    ):
        yield client, http


@pytest.mark.anyio
@pytest.mark.parametrize("own", [False, True], ids=["callers-client", "own-client"])
@pytest.mark.parametrize(
    "task_id",
    ["n82abc123def456nb2", "a b", "ä/ü?&=#", "50%25off", "x+y", "..", "~tilde-_.", "%zz", "a\u2603"],
)
async def test_a_poll_sends_what_build_request_would(task_id: str, own: bool) -> None:
    """Without cookies or params on the client, a poll's URL and headers are build_request's, byte for byte.

    With the SDK's own client both polls go straight to the transport, the second built by ``build_request``.
    """
    recorder = _Recorder()
    async with _connected(recorder, own=own) as (client, http):
        await client.status(task_id)  # no cookie yet: the template
        http.cookies.set("session", "s1", domain="banana2api.com")
        await client.status(task_id)  # a cookie: build_request itself
    fast, full = recorder.requests
    assert str(fast.url) == str(full.url)
    assert fast.url.params["task_id"] == task_id
    assert _without_cookie(fast) == _without_cookie(full)
    assert full.headers["cookie"] == "session=s1"
    assert fast.extensions == full.extensions


@pytest.mark.anyio
@pytest.mark.parametrize("prompt", ["a cat", "ä ☃ 猫 \U0001f34c", 'a "quoted" \\ prompt\nover lines'])
async def test_a_submit_sends_what_build_request_would(prompt: str) -> None:
    """Without cookies or params on the client, a submit's URL, headers and body are build_request's."""
    recorder = _Recorder()
    async with _connected(recorder, own=False) as (client, http):
        options: dict[str, Any] = {"images": ["https://example.com/a.png"], "aspect_ratio": "16:9"}
        await client.submit(prompt, **options)  # no cookie yet: the template
        http.cookies.set("session", "s1", domain="banana2api.com")
        await client.submit(prompt, **options)  # a cookie: build_request itself
    fast, full = (request for request in recorder.requests if request.method == "POST")
    assert str(fast.url) == str(full.url) == f"{BASE}/v2/api/generate"
    assert sorted(_without_cookie(fast)) == sorted(_without_cookie(full))
    assert full.headers["cookie"] == "session=s1"
    assert fast.content == full.content
    assert json.loads(fast.content)["prompt"] == prompt
    assert fast.extensions == full.extensions


@pytest.mark.anyio
async def test_a_poll_follows_changes_to_the_clients_headers_and_params() -> None:
    """Headers set on the httpx client after the first poll, and its params, reach the next poll."""
    recorder = _Recorder()
    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(recorder)) as http,
        AsyncBanana2(api_key=KEY, base_url=BASE, http_client=http) as client,
    ):
        await client.status("t1")
        http.headers["X-Trace"] = "later"
        await client.status("t1")
        http.params = httpx.QueryParams({"region": "eu"})
        await client.status("t1")
    first, second, third = recorder.requests
    assert "x-trace" not in first.headers
    assert second.headers["x-trace"] == "later"
    assert third.url.params["region"] == "eu"
    assert third.url.params["task_id"] == "t1"
    assert all(request.headers["authorization"] == f"Bearer {KEY}" for request in recorder.requests)


# -- the SDK's own client: polls go straight to its transport -----------------------------------------

_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


class _Stamp(httpx.Auth):
    """An auth flow that marks each request it signs."""

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["X-Signed"] = "yes"
        yield request


@pytest.mark.anyio
async def test_a_transport_and_an_http_client_together_are_refused() -> None:
    """``transport`` is for the SDK's own httpx client; with a caller's client it has no meaning."""
    async with httpx.AsyncClient() as http:
        with pytest.raises(ConfigurationError, match="not both"):
            AsyncBanana2(api_key=KEY, base_url=BASE, http_client=http, transport=httpx.MockTransport(_Recorder()))


@pytest.mark.anyio
async def test_the_given_transport_carries_every_request_and_closes_with_the_client() -> None:
    """Submits and polls go through the given transport; closing the client closes it."""
    closed: list[bool] = []

    class Closing(httpx.MockTransport):
        async def aclose(self) -> None:
            closed.append(True)

    recorder = _Recorder()
    async with AsyncBanana2(api_key=KEY, base_url=BASE, transport=Closing(recorder)) as client:
        await client.submit("a cat")
        await client.status("t1")
        assert not closed
    assert [request.method for request in recorder.requests] == ["POST", "GET"]
    assert closed == [True]


@pytest.mark.anyio
async def test_a_cookie_a_poll_answer_sets_is_kept_and_sent_back() -> None:
    """A poll sent straight to the transport keeps the cookie its answer sets, as ``client.send`` would."""
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        cookie = {"set-cookie": "node=7; Path=/"} if len(requests) == 1 else {}
        return httpx.Response(200, json=_ANSWER, headers=cookie)

    async with AsyncBanana2(api_key=KEY, base_url=BASE, transport=httpx.MockTransport(handler)) as client:
        await client.status("t")
        await client.status("t")
        await client.submit("a cat")
        assert client.http_client.cookies["node"] == "7"
    first, second, submit = requests
    assert "cookie" not in first.headers
    assert second.headers["cookie"] == "node=7"
    assert submit.headers["cookie"] == "node=7"


@pytest.mark.anyio
async def test_what_is_set_on_the_sdks_own_client_reaches_every_poll() -> None:
    """Headers, params, auth and event hooks given to ``client.http_client`` apply to polls and to the poller's."""
    recorder = _Recorder()
    hooked: list[str] = []
    polled = anyio.Event()

    async def on_request(request: httpx.Request) -> None:
        hooked.append(f"request {request.url.params['task_id']}")

    async def on_response(response: httpx.Response) -> None:
        hooked.append(f"response {response.status_code}")
        if response.request.url.params["task_id"] == "t5":
            polled.set()

    async with AsyncBanana2(
        api_key=KEY, base_url=BASE, transport=httpx.MockTransport(recorder), poll_interval=0.01
    ) as client:
        http = client.http_client
        http.headers["X-Trace"] = "on"
        await client.status("t1")
        http.params = httpx.QueryParams({"region": "eu"})
        await client.status("t2")
        http.params = httpx.QueryParams()
        http.event_hooks = {"request": [on_request], "response": [on_response]}
        await client.status("t3")
        client.track("t5")  # settled when the client closes
        with anyio.fail_after(5):
            await polled.wait()
        http.auth = _Stamp()
        await client.status("t4")
    first, second, third, by_the_poller, fourth = recorder.requests[:5]
    assert all(request.headers["x-trace"] == "on" for request in recorder.requests)
    assert "region" not in first.url.params
    assert second.url.params["region"] == "eu"
    assert "region" not in third.url.params
    assert hooked[:4] == ["request t3", "response 200", "request t5", "response 200"]
    assert "x-signed" not in third.headers
    assert fourth.url.params["task_id"] == "t4"
    assert fourth.headers["x-signed"] == "yes"
    assert by_the_poller.url.params["task_id"] == "t5"


@pytest.mark.anyio
async def test_a_proxy_from_the_environment_carries_the_sdks_own_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a proxy in the environment, the SDK's own client sends polls through it, as httpx would."""
    for name in _PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    body = json.dumps({"code": 200, "data": {"task_id": "t1", "status": "IN_PROGRESS"}}).encode()
    request_lines: list[bytes] = []

    async def proxy(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            received = b""
            while b"\r\n\r\n" not in received:
                received += await stream.receive()
            request_lines.append(received.split(b"\r\n", 1)[0])
            head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            await stream.send(head.encode() + body)

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
    async with listener, anyio.create_task_group() as tasks:
        tasks.start_soon(listener.serve, proxy)
        async with AsyncBanana2(
            api_key=KEY, base_url="http://api.banana2.invalid", allow_insecure_http=True, max_retries=0
        ) as client:
            with anyio.fail_after(5):
                info = await client.status("t1")
        tasks.cancel_scope.cancel()
    assert info.status == "IN_PROGRESS"
    assert request_lines == [b"GET http://api.banana2.invalid/api/status?task_id=t1 HTTP/1.1"]
