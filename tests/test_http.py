"""The wire of `_http.py`: error mapping, bodies, the status retry loop and submits that never pay twice."""

from __future__ import annotations

import email.utils
import gzip
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeAlias

import anyio
import httpx
import pytest
import respx
from _marks import HTTPX_ABANDONED_STREAMS

from banana2_async import (
    APIConnectionError,
    APIResponseError,
    APIStatusError,
    APITimeoutError,
    AsyncBanana2,
    AuthenticationError,
    BadRequestError,
    Banana2Error,
    ConfigurationError,
    GenerationRequest,
    InsufficientCreditsError,
    InternalServerError,
    InvalidRequestError,
    NotFoundError,
    RateLimitError,
    SubmissionUncertainError,
    TaskTimeoutError,
)
from banana2_async._http import Gate, Wire
from banana2_async._requests import RequestFactory
from banana2_async._schedule import RateBudget
from banana2_async._secret import Secret
from banana2_async._send import open_sender
from banana2_async._throttle import Throttle

# On trio the clock is virtual: backoff sleeps cost no wall time there.
pytestmark = [pytest.mark.anyio, pytest.mark.virtual_clock]

BASE = "https://banana2api.com"
KEY = "sk-wire-test-5f1e0c"
MIB = 1024 * 1024

Outcome: TypeAlias = "httpx.Response | type[Exception]"
Make: TypeAlias = Callable[[], Outcome]


def _json(status: int, body: Any, **headers: str) -> httpx.Response:
    return httpx.Response(status, json=body, headers=headers)


def _error(status: int, message: str = "error", **headers: str) -> httpx.Response:
    return _json(status, {"code": status, "message": message, "data": None}, **headers)


def _running(task_id: str = "t1") -> httpx.Response:
    return _json(200, {"code": 200, "message": "success", "data": {"task_id": task_id, "status": "IN_PROGRESS"}})


def _accepted(task_id: str = "t1") -> httpx.Response:
    return _json(
        200,
        {
            "code": 200,
            "message": "success",
            "data": {"task_id": task_id, "type": "text-to-image", "status": "IN_PROGRESS"},
        },
    )


def _raw(status: int, content: bytes, **headers: str) -> httpx.Response:
    return httpx.Response(
        status, stream=httpx.ByteStream(content), headers={"content-length": str(len(content)), **headers}
    )


@pytest.fixture
def api() -> Iterator[respx.MockRouter]:
    """respx standing in for the API host; every request must hit a route."""
    with respx.mock(base_url=BASE, assert_all_called=False) as router:
        yield router


def _client(**options: Any) -> AsyncBanana2:
    options.setdefault("poll_interval", 60.0)
    return AsyncBanana2(KEY, base_url=BASE, **options)


@pytest.fixture
async def client(api: respx.MockRouter) -> AsyncIterator[AsyncBanana2]:
    """An entered client with the default options (max_retries=3, no uncertain retries)."""
    async with _client() as sdk:
        yield sdk


# -- the requests themselves ---------------------------------------------------------------------


async def test_status_sends_one_authenticated_get(api: respx.MockRouter) -> None:
    """``status`` is one GET /api/status?task_id=... with bearer auth, JSON accept and the SDK's User-Agent."""
    route = api.get("/api/status").mock(return_value=_running("abc"))
    info = await _client().status("abc")
    assert info.task_id == "abc"
    assert info.state == "running"
    assert route.call_count == 1
    request = route.calls.last.request
    assert request.url.params["task_id"] == "abc"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["accept"] == "application/json"
    assert request.headers["user-agent"].startswith("banana2-async/")


async def test_status_of_an_odd_task_id_is_url_encoded(api: respx.MockRouter) -> None:
    """A task id with reserved characters travels as one query value."""
    route = api.get("/api/status").mock(return_value=_running("a&b=c d"))
    await _client().status("a&b=c d")
    assert route.calls.last.request.url.params["task_id"] == "a&b=c d"


async def test_submit_sends_one_post_with_the_wire_body(client: AsyncBanana2, api: respx.MockRouter) -> None:
    """``submit`` is one POST /api/generate with the caller's fields as JSON, and returns the task's handle."""
    route = api.post("/api/generate").mock(return_value=_accepted("n82abc"))
    handle = await client.submit("a fox", aspect_ratio="16:9", resolution="2k")
    assert handle.task_id == "n82abc"
    assert route.call_count == 1
    request = route.calls.last.request
    assert json.loads(request.content) == {"prompt": "a fox", "aspect_ratio": "16:9", "resolution": "2k"}
    assert request.headers["content-type"] == "application/json"
    assert request.headers["authorization"] == f"Bearer {KEY}"


async def test_base_url_path_prefix_is_kept(api: respx.MockRouter) -> None:
    """A base URL with a path puts the API's paths under it."""
    route = api.get("/proxy/v1/api/status").mock(return_value=_running())
    await AsyncBanana2(KEY, base_url=f"{BASE}/proxy/v1/").status("t1")
    assert route.call_count == 1


# -- httpx's exceptions, translated in one place -------------------------------------------------

MAPPED: list[tuple[type[httpx.HTTPError], type[Banana2Error], str | None]] = [
    (httpx.ConnectError, APIConnectionError, "connect"),
    (httpx.ConnectTimeout, APITimeoutError, "connect-timeout"),
    (httpx.PoolTimeout, APITimeoutError, "pool-timeout"),
    (httpx.ReadTimeout, APITimeoutError, "read-timeout"),
    (httpx.WriteTimeout, APITimeoutError, "write-timeout"),
    (httpx.TimeoutException, APITimeoutError, "read-timeout"),
    (httpx.ReadError, APIConnectionError, "network"),
    (httpx.WriteError, APIConnectionError, "network"),
    (httpx.CloseError, APIConnectionError, "network"),
    (httpx.NetworkError, APIConnectionError, "network"),
    (httpx.RemoteProtocolError, APIConnectionError, "network"),
    (httpx.ProtocolError, APIConnectionError, "network"),
    (httpx.ProxyError, APIConnectionError, "network"),
    (httpx.TransportError, APIConnectionError, "network"),
    (httpx.LocalProtocolError, APIConnectionError, "local"),
    (httpx.UnsupportedProtocol, ConfigurationError, None),
    (httpx.TooManyRedirects, APIResponseError, None),
    (httpx.DecodingError, APIResponseError, None),
]


def test_the_mapping_table_covers_every_httpx_request_error() -> None:
    """Every concrete exception httpx raises while sending is in the table above."""
    raised_while_sending = {
        cls
        for cls in vars(httpx).values()
        if isinstance(cls, type) and issubclass(cls, httpx.HTTPError) and cls is not httpx.HTTPStatusError
    } - {httpx.HTTPError, httpx.RequestError}
    assert raised_while_sending == {cls for cls, _, _ in MAPPED}


@pytest.mark.parametrize(("raised", "error", "kind"), MAPPED, ids=lambda value: getattr(value, "__name__", value))
async def test_every_httpx_exception_is_mapped_with_its_cause(
    api: respx.MockRouter, raised: type[httpx.HTTPError], error: type[Banana2Error], kind: str | None
) -> None:
    """Each httpx exception becomes its error in the tree, raised ``from`` the httpx exception."""
    api.get("/api/status").mock(side_effect=raised)
    with pytest.raises(Banana2Error) as caught:
        await _client(max_retries=0).status("t1")
    assert type(caught.value) is error
    assert type(caught.value.__cause__) is raised
    if isinstance(caught.value, APIConnectionError):
        assert caught.value.kind == kind
        assert (caught.value.method, caught.value.path) == ("GET", "/api/status")
    assert "GET /api/status" in str(caught.value)


@HTTPX_ABANDONED_STREAMS
async def test_a_broken_gzip_body_is_a_decoding_error(api: respx.MockRouter) -> None:
    """A body that does not decode as its Content-Encoding is an APIResponseError from httpx.DecodingError."""
    api.get("/api/status").mock(return_value=_raw(200, b"not gzip at all", **{"content-encoding": "gzip"}))
    with pytest.raises(APIResponseError) as caught:
        await _client(max_retries=0).status("t1")
    assert isinstance(caught.value.__cause__, httpx.DecodingError)


async def test_a_gzip_body_is_decoded(api: respx.MockRouter) -> None:
    """A gzip-encoded envelope is decoded before it is read."""
    body = json.dumps({"code": 200, "data": {"task_id": "t1", "status": "SUCCESS", "response": ["https://x/1.png"]}})
    api.get("/api/status").mock(return_value=_raw(200, gzip.compress(body.encode()), **{"content-encoding": "gzip"}))
    assert (await _client().status("t1")).images == ["https://x/1.png"]


async def test_a_redirect_loop_is_too_many_redirects(api: respx.MockRouter) -> None:
    """A redirect loop ends as an APIResponseError from httpx.TooManyRedirects, not a hang."""
    api.get("/api/status").mock(return_value=httpx.Response(302, headers={"location": f"{BASE}/api/status?x=1"}))
    with pytest.raises(APIResponseError) as caught:
        await _client(max_retries=0).status("t1")
    assert isinstance(caught.value.__cause__, httpx.TooManyRedirects)


async def test_a_same_origin_redirect_is_followed(api: respx.MockRouter) -> None:
    """A redirect within the API host is followed to the answer."""
    api.get("/api/status").mock(
        return_value=httpx.Response(307, headers={"location": f"{BASE}/v2/api/status?task_id=t1"})
    )
    moved = api.get("/v2/api/status").mock(return_value=_running())
    assert (await _client().status("t1")).task_id == "t1"
    assert moved.call_count == 1


# -- answers: envelope, bodies, status codes -----------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (402, InsufficientCreditsError),
        (404, NotFoundError),
        (403, APIStatusError),
        (409, APIStatusError),
    ],
)
async def test_status_raises_a_definite_error_at_once(
    api: respx.MockRouter, status: int, error: type[APIStatusError]
) -> None:
    """A 4xx (other than 408 and 429) on status is raised with its class after one GET, with the request id."""
    route = api.get("/api/status").mock(return_value=_error(status, "nope", **{"x-request-id": "req-42"}))
    with pytest.raises(error) as caught:
        await _client().status("t1")
    assert type(caught.value) is error
    assert caught.value.status_code == status
    assert caught.value.request_id == "req-42"
    assert "req-42" in str(caught.value)
    assert caught.value.message == "nope"
    assert route.call_count == 1


@pytest.mark.parametrize(
    "body",
    [
        {"code": 402, "message": "no credits"},
        {"code": 402, "message": "no credits", "data": {}},
        {"code": "402", "message": "no credits", "data": {"task_id": "t1", "status": "IN_PROGRESS"}},
    ],
    ids=["no-data", "empty-data", "running-data"],
)
async def test_http_200_with_code_402_is_insufficient_credits(api: respx.MockRouter, body: dict[str, Any]) -> None:
    """HTTP 200 whose envelope says 402 raises InsufficientCreditsError, once, whatever its data."""
    route = api.get("/api/status").mock(return_value=_json(200, body))
    with pytest.raises(InsufficientCreditsError) as caught:
        await _client().status("t1")
    assert caught.value.message == "no credits"
    assert route.call_count == 1


@pytest.mark.parametrize(
    "content",
    [
        b"<!doctype html><html><body>" + b"Service Unavailable " * 500 + b"</body></html>",
        b"\xff\xfe\xfd not utf-8",
        b"plain text",
        b'{"task_id": "t1", "status": "SUCCESS"}',
        b"[1, 2, 3]",
        b'{"code": 200, "data": {"task_id": "t1"}, "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"code": 200, "data": ' + b'{"a":' * 100_000 + b"1" + b"}" * 100_001,
    ],
    ids=["html", "non-utf-8", "text", "no-envelope", "list", "deeply-nested", "deeply-nested-data"],
)
async def test_a_200_that_is_not_the_envelope_is_an_api_response_error(api: respx.MockRouter, content: bytes) -> None:
    """An HTTP 200 body that is not the envelope raises APIResponseError with a short excerpt."""
    api.get("/api/status").mock(return_value=_raw(200, content, **{"content-type": "text/html"}))
    with pytest.raises(APIResponseError) as caught:
        await _client(max_retries=0).status("t1")
    assert caught.value.status_code == 200
    assert 0 < len(caught.value.excerpt) <= 200
    assert len(str(caught.value)) < 200


async def test_a_body_declared_too_large_is_not_read(api: respx.MockRouter) -> None:
    """An answer declaring more than 1 MiB is refused from its Content-Length."""
    api.get("/api/status").mock(return_value=_raw(200, b"x" * (MIB + 1)))
    with pytest.raises(APIResponseError, match="declares"):
        await _client(max_retries=0).status("t1")


@HTTPX_ABANDONED_STREAMS
async def test_a_streamed_body_is_capped(api: respx.MockRouter) -> None:
    """An answer without Content-Length is read only up to 1 MiB, then refused with an excerpt."""

    async def endless() -> AsyncIterator[bytes]:
        for _ in range(64):
            yield b"<html>" + b"x" * (MIB // 8)

    api.get("/api/status").mock(return_value=httpx.Response(200, content=endless()))
    with pytest.raises(APIResponseError, match="larger than") as caught:
        await _client(max_retries=0).status("t1")
    assert caught.value.excerpt.startswith("<html>")
    assert len(caught.value.excerpt) <= 200


async def test_a_large_body_under_the_cap_is_read(api: respx.MockRouter) -> None:
    """A big but lawful answer (many unknown fields) is read whole."""
    data = {"task_id": "t1", "status": "IN_PROGRESS", "log": "x" * (MIB // 2)}
    api.get("/api/status").mock(return_value=_json(200, {"code": 200, "data": data}))
    info = await _client().status("t1")
    assert info.model_extra is not None
    assert len(info.model_extra["log"]) == MIB // 2


# -- GET /api/status: safe to retry --------------------------------------------------------------

TRANSIENT_STATUS_ANSWERS: dict[str, Make] = {
    "408": lambda: _error(408, **{"retry-after": "0"}),
    "429": lambda: _error(429, **{"retry-after": "0"}),
    "500": lambda: _error(500, **{"retry-after": "0"}),
    "502": lambda: _raw(502, b"<html>Bad Gateway</html>", **{"retry-after": "0"}),
    "503": lambda: _error(503, **{"retry-after": "0"}),
    "504": lambda: _raw(504, b"", **{"retry-after": "0"}),
}
TRANSIENT_STATUS_FAILURES: dict[str, Make] = {
    "connect-error": lambda: httpx.ConnectError,
    "connect-timeout": lambda: httpx.ConnectTimeout,
    "read-error": lambda: httpx.ReadError,
    "read-timeout": lambda: httpx.ReadTimeout,
}


@pytest.mark.parametrize("make", list(TRANSIENT_STATUS_ANSWERS.values()), ids=list(TRANSIENT_STATUS_ANSWERS))
async def test_status_retries_transient_answers(api: respx.MockRouter, make: Make) -> None:
    """408, 429 and 5xx on a status poll are retried, honouring Retry-After, until the answer comes."""
    route = api.get("/api/status").mock(side_effect=[make(), make(), _running()])
    assert (await _client().status("t1")).state == "running"
    assert route.call_count == 3


@pytest.mark.parametrize("make", list(TRANSIENT_STATUS_FAILURES.values()), ids=list(TRANSIENT_STATUS_FAILURES))
async def test_status_retries_connection_failures_with_backoff(api: respx.MockRouter, make: Make) -> None:
    """Connect and read errors and timeouts on a status poll are retried after a backoff."""
    route = api.get("/api/status").mock(side_effect=[make(), _running()])
    assert (await _client(max_retries=1).status("t1")).state == "running"
    assert route.call_count == 2


async def test_status_retries_a_garbled_answer(api: respx.MockRouter) -> None:
    """A 200 that is not the envelope is retried on a status poll: nothing is paid for."""
    route = api.get("/api/status").mock(side_effect=[_raw(200, b"<html>"), _running()])
    assert (await _client(max_retries=1).status("t1")).state == "running"
    assert route.call_count == 2


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda: _error(503, **{"retry-after": "0"}), InternalServerError),
        (lambda: _error(429, **{"retry-after": "0"}), RateLimitError),
        (lambda: _error(408, **{"retry-after": "0"}), APIStatusError),
    ],
    ids=["503", "429", "408"],
)
async def test_status_gives_up_after_max_retries_with_the_typed_error(
    api: respx.MockRouter, make: Make, error: type[APIStatusError]
) -> None:
    """After max_retries retries the last failure is raised as its own error: max_retries + 1 GETs in all."""
    route = api.get("/api/status").mock(side_effect=[make() for _ in range(10)])
    with pytest.raises(error):
        await _client(max_retries=4).status("t1")
    assert route.call_count == 5


async def test_status_gives_up_on_connection_errors(api: respx.MockRouter) -> None:
    """Connection errors past max_retries raise APIConnectionError from the last httpx error."""
    route = api.get("/api/status").mock(side_effect=[httpx.ConnectError] * 5)
    with pytest.raises(APIConnectionError) as caught:
        await _client(max_retries=1).status("t1")
    assert isinstance(caught.value.__cause__, httpx.ConnectError)
    assert route.call_count == 2


async def test_status_with_no_retries_sends_once(api: respx.MockRouter) -> None:
    """max_retries=0 sends one GET and raises its failure."""
    route = api.get("/api/status").mock(side_effect=[_error(503), _running()])
    with pytest.raises(InternalServerError):
        await _client(max_retries=0).status("t1")
    assert route.call_count == 1


async def test_status_does_not_retry_a_local_protocol_error(api: respx.MockRouter) -> None:
    """A request that cannot be formed is raised at once."""
    route = api.get("/api/status").mock(side_effect=httpx.LocalProtocolError)
    with pytest.raises(APIConnectionError):
        await _client().status("t1")
    assert route.call_count == 1


def _retry_delays(records: list[logging.LogRecord]) -> list[float]:
    return [
        float(record.args[1])  # type: ignore[index, arg-type]
        for record in records
        if record.name == "banana2_async" and record.msg.startswith("retrying after")
    ]


@pytest.mark.parametrize("status", [429, 503])
async def test_status_honours_retry_after_seconds(
    api: respx.MockRouter, caplog: pytest.LogCaptureFixture, status: int
) -> None:
    """The wait before a retry is the Retry-After the server asked for, not the backoff."""
    caplog.set_level(logging.DEBUG, logger="banana2_async")
    api.get("/api/status").mock(side_effect=[_error(status, **{"retry-after": "0.01"}), _running()])
    await _client().status("t1")
    assert _retry_delays(caplog.records) == [0.01]


async def test_status_honours_retry_after_as_an_http_date(
    api: respx.MockRouter, caplog: pytest.LogCaptureFixture
) -> None:
    """Retry-After as an HTTP date (here already past) is honoured: retry at once."""
    caplog.set_level(logging.DEBUG, logger="banana2_async")
    past = email.utils.formatdate(time.time() - 30, usegmt=True)
    api.get("/api/status").mock(side_effect=[_error(429, **{"retry-after": past}), _running()])
    await _client().status("t1")
    assert _retry_delays(caplog.records) == [0.0]


async def test_retry_after_is_capped(api: respx.MockRouter) -> None:
    """A Retry-After of a day is capped at two minutes."""
    api.get("/api/status").mock(return_value=_error(429, **{"retry-after": "86400"}))
    with pytest.raises(RateLimitError) as caught:
        await _client(max_retries=0).status("t1")
    assert caught.value.retry_after == 120.0


async def test_garbage_retry_after_falls_back_to_backoff(api: respx.MockRouter) -> None:
    """An unreadable Retry-After is ignored: the error carries none and the retry backs off."""
    api.get("/api/status").mock(return_value=_error(429, **{"retry-after": "soon-ish"}))
    with pytest.raises(RateLimitError) as caught:
        await _client(max_retries=0).status("t1")
    assert caught.value.retry_after is None


# -- POST /api/generate: never pay twice ---------------------------------------------------------

NEVER_SENT: dict[str, Make] = {
    "connect-error": lambda: httpx.ConnectError,
    "connect-timeout": lambda: httpx.ConnectTimeout,
    "pool-timeout": lambda: httpx.PoolTimeout,
}
REFUSED: dict[str, Make] = {
    "429": lambda: _error(429, "slow down", **{"retry-after": "0"}),
    "503": lambda: _error(503, "overloaded", **{"retry-after": "0"}),
}
UNCERTAIN: dict[str, Make] = {
    "read-timeout": lambda: httpx.ReadTimeout,
    "write-timeout": lambda: httpx.WriteTimeout,
    "remote-protocol-error": lambda: httpx.RemoteProtocolError,
    "read-error": lambda: httpx.ReadError,
    "write-error": lambda: httpx.WriteError,
    "500": lambda: _error(500, "boom", **{"retry-after": "0"}),
    "502": lambda: _raw(502, b"<html>Bad Gateway</html>", **{"retry-after": "0"}),
    "504": lambda: _raw(504, b"<html>Gateway Timeout</html>", **{"retry-after": "0"}),
    "200-code-500": lambda: _json(200, {"code": 500, "message": "internal"}),
    "200-html": lambda: _raw(200, b"<html>maintenance</html>"),
    "200-not-utf-8": lambda: _raw(200, b"\xc3\x28\xff"),
    "200-no-data": lambda: _json(200, {"code": 200, "message": "success"}),
    "200-no-task-id": lambda: _json(200, {"code": 200, "message": "success", "data": {"status": "IN_PROGRESS"}}),
}
DEFINITE: dict[str, tuple[Make, type[APIStatusError]]] = {
    "400": (lambda: _error(400, "prompt is required"), BadRequestError),
    "401": (lambda: _error(401, "invalid key"), AuthenticationError),
    "402": (lambda: _error(402, "insufficient credits"), InsufficientCreditsError),
    "200-code-402": (lambda: _json(200, {"code": 402, "message": "insufficient credits"}), InsufficientCreditsError),
    "404": (lambda: _error(404), NotFoundError),
    "408": (lambda: _error(408), APIStatusError),
}


@pytest.mark.parametrize("make", list(NEVER_SENT.values()), ids=list(NEVER_SENT))
async def test_submit_retries_what_was_never_sent(client: AsyncBanana2, api: respx.MockRouter, make: Make) -> None:
    """A submit that could not have left (connect error, connect or pool timeout) is sent again: 2 POSTs."""
    route = api.post("/api/generate").mock(side_effect=[make(), _accepted("t9")])
    handle = await client.submit("a fox")
    assert handle.task_id == "t9"
    assert route.call_count == 2


@pytest.mark.parametrize("make", list(REFUSED.values()), ids=list(REFUSED))
async def test_submit_retries_what_was_refused(client: AsyncBanana2, api: respx.MockRouter, make: Make) -> None:
    """A submit refused with 429 or 503 was not taken, so it is sent again: 3 POSTs for two refusals."""
    route = api.post("/api/generate").mock(side_effect=[make(), make(), _accepted("t9")])
    handle = await client.submit("a fox")
    assert handle.task_id == "t9"
    assert route.call_count == 3


@pytest.mark.parametrize("make", list(UNCERTAIN.values()), ids=list(UNCERTAIN))
async def test_submit_that_may_have_landed_is_uncertain(
    client: AsyncBanana2, api: respx.MockRouter, make: Make
) -> None:
    """Read timeout, a drop after sending, 500/502/504 or a garbled 200: SubmissionUncertainError after ONE POST."""
    route = api.post("/api/generate").mock(side_effect=[make(), _accepted("t9")])
    with pytest.raises(SubmissionUncertainError) as caught:
        await client.submit("a fox", resolution="2k")
    assert route.call_count == 1
    assert caught.value.request == GenerationRequest(prompt="a fox", resolution="2k")
    assert isinstance(caught.value.__cause__, (APIConnectionError, APIStatusError, APIResponseError))
    assert "not sent again" in str(caught.value)


async def test_a_deeply_nested_200_to_a_submit_is_uncertain(client: AsyncBanana2, api: respx.MockRouter) -> None:
    """A 200 too deeply nested to parse is a garbled answer: SubmissionUncertainError, not a RecursionError."""
    route = api.post("/api/generate").mock(return_value=_raw(200, b'{"code": 200, "data": ' + b"[" * 100_000))
    with pytest.raises(SubmissionUncertainError) as caught:
        await client.submit("a fox")
    assert isinstance(caught.value.__cause__, APIResponseError)
    assert route.call_count == 1


async def test_uncertain_submit_keeps_the_status_code(client: AsyncBanana2, api: respx.MockRouter) -> None:
    """A 502 made uncertain keeps its status code, and its cause is the InternalServerError."""
    api.post("/api/generate").mock(return_value=_error(502, "bad gateway"))
    with pytest.raises(SubmissionUncertainError) as caught:
        await client.submit("a fox")
    assert caught.value.status_code == 502
    assert isinstance(caught.value.__cause__, InternalServerError)
    assert isinstance(caught.value.__cause__.__cause__, type(None))


async def test_uncertain_submit_from_a_timeout_chains_to_httpx(client: AsyncBanana2, api: respx.MockRouter) -> None:
    """A read timeout made uncertain chains to APITimeoutError and on to httpx.ReadTimeout; no status code."""
    api.post("/api/generate").mock(side_effect=httpx.ReadTimeout)
    with pytest.raises(SubmissionUncertainError) as caught:
        await client.submit("a fox")
    assert caught.value.status_code is None
    assert isinstance(caught.value.__cause__, APITimeoutError)
    assert isinstance(caught.value.__cause__.__cause__, httpx.ReadTimeout)


@pytest.mark.parametrize(
    "make",
    [
        UNCERTAIN[name]
        for name in ("read-timeout", "remote-protocol-error", "read-error", "500", "502", "504", "200-html")
    ],
    ids=["read-timeout", "remote-protocol-error", "read-error", "500", "502", "504", "200-html"],
)
async def test_retry_uncertain_submits_opts_in_to_retrying(api: respx.MockRouter, make: Make) -> None:
    """With ``retry_uncertain_submits=True`` a maybe-landed submit is sent again: 2 POSTs."""
    route = api.post("/api/generate").mock(side_effect=[make(), _accepted("t9")])
    async with _client(retry_uncertain_submits=True, max_retries=1) as sdk:
        handle = await sdk.submit("a fox")
    assert handle.task_id == "t9"
    assert route.call_count == 2


async def test_retry_uncertain_submits_still_gives_up_uncertain(api: respx.MockRouter) -> None:
    """When uncertain retries run out, the error is still SubmissionUncertainError: max_retries + 1 POSTs."""
    route = api.post("/api/generate").mock(side_effect=[_error(500, **{"retry-after": "0"})] * 5)
    async with _client(retry_uncertain_submits=True, max_retries=2) as sdk:
        with pytest.raises(SubmissionUncertainError):
            await sdk.submit("a fox")
    assert route.call_count == 3


@pytest.mark.parametrize(
    "last",
    [
        lambda: _error(429, **{"retry-after": "0"}),
        lambda: _error(503, **{"retry-after": "0"}),
        lambda: _error(402, "insufficient credits"),
        lambda: _error(400, "bad"),
    ],
    ids=["429", "503", "402", "400"],
)
async def test_a_submit_that_may_have_landed_once_stays_uncertain(api: respx.MockRouter, last: Make) -> None:
    """After one maybe-paid attempt, giving up for any later reason is SubmissionUncertainError, not a clean error."""
    route = api.post("/api/generate").mock(side_effect=[_error(500, **{"retry-after": "0"}), last(), last(), last()])
    async with _client(retry_uncertain_submits=True, max_retries=2) as sdk:
        with pytest.raises(SubmissionUncertainError) as caught:
            await sdk.submit("a fox")
    assert isinstance(caught.value.__cause__, APIStatusError)
    assert route.call_count in (2, 3)


@pytest.mark.parametrize("case", list(DEFINITE.values()), ids=list(DEFINITE))
@pytest.mark.parametrize("retry_uncertain", [False, True], ids=["default", "retry-uncertain"])
async def test_submit_raises_a_definite_answer_at_once(
    api: respx.MockRouter, case: tuple[Make, type[APIStatusError]], retry_uncertain: bool
) -> None:
    """400, 401, 402 (also as HTTP 200 with code 402), 404, 408 are raised with their class after ONE POST."""
    make, error = case
    route = api.post("/api/generate").mock(side_effect=[make(), _accepted()])
    async with _client(retry_uncertain_submits=retry_uncertain) as sdk:
        with pytest.raises(error) as caught:
            await sdk.submit("a fox")
    assert type(caught.value) is error
    assert route.call_count == 1


async def test_submit_of_a_local_protocol_error_is_raised(client: AsyncBanana2, api: respx.MockRouter) -> None:
    """A request that could not be formed is raised at once as APIConnectionError(kind='local')."""
    route = api.post("/api/generate").mock(side_effect=httpx.LocalProtocolError)
    with pytest.raises(APIConnectionError) as caught:
        await client.submit("a fox")
    assert caught.value.kind == "local"
    assert route.call_count == 1


async def test_submit_gives_up_on_refusals_with_the_typed_error(api: respx.MockRouter) -> None:
    """Refusals past max_retries raise the last RateLimitError: max_retries + 1 POSTs, none paid."""
    route = api.post("/api/generate").mock(side_effect=[_error(429, **{"retry-after": "0"})] * 6)
    async with _client(max_retries=3) as sdk:
        with pytest.raises(RateLimitError):
            await sdk.submit("a fox")
    assert route.call_count == 4


async def test_submit_gives_up_on_connect_errors(api: respx.MockRouter) -> None:
    """Connect errors past max_retries raise APIConnectionError: max_retries + 1 POSTs."""
    route = api.post("/api/generate").mock(side_effect=[httpx.ConnectError] * 4)
    async with _client(max_retries=1) as sdk:
        with pytest.raises(APIConnectionError) as caught:
            await sdk.submit("a fox")
    assert caught.value.kind == "connect"
    assert route.call_count == 2


async def test_submit_with_no_retries_sends_once(api: respx.MockRouter) -> None:
    """max_retries=0: a refused submit is raised after one POST."""
    route = api.post("/api/generate").mock(side_effect=[_error(503), _accepted()])
    async with _client(max_retries=0) as sdk:
        with pytest.raises(InternalServerError):
            await sdk.submit("a fox")
    assert route.call_count == 1


async def test_submit_honours_retry_after(api: respx.MockRouter, caplog: pytest.LogCaptureFixture) -> None:
    """A refused submit waits the server's Retry-After before it is sent again."""
    caplog.set_level(logging.DEBUG, logger="banana2_async")
    api.post("/api/generate").mock(side_effect=[_error(429, **{"retry-after": "0.02"}), _accepted()])
    async with _client() as sdk:
        await sdk.submit("a fox")
    assert _retry_delays(caplog.records) == [0.02]


async def test_submit_answer_keeps_unknown_fields(client: AsyncBanana2, api: respx.MockRouter) -> None:
    """An accepted submit with extra fields and a string code is still accepted."""
    api.post("/api/generate").mock(
        return_value=_json(200, {"code": "200", "message": "ok", "data": {"task_id": "t5", "eta": 12}, "extra": 1})
    )
    assert (await client.submit("a fox")).task_id == "t5"


# -- the httpx client ----------------------------------------------------------------------------


async def test_a_callers_http_client_is_used_and_left_open() -> None:
    """Requests go through the caller's httpx client, and closing the SDK client does not close it."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return _running()

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        async with _client(http_client=http) as sdk:
            assert sdk.http_client is http
            await sdk.status("t1")
        assert not http.is_closed
        assert len(seen) == 1


async def test_the_sdks_own_http_client_is_closed_with_it(api: respx.MockRouter) -> None:
    """The httpx client the SDK made is closed by ``aclose``."""
    api.get("/api/status").mock(return_value=_running())
    async with _client() as sdk:
        await sdk.status("t1")
        http = sdk.http_client
    assert http.is_closed


async def test_a_wire_on_its_own_sends_through_its_gate() -> None:
    """The wire without a client (its own gate, no rate limit) sends each request, a 429 pausing it briefly."""
    answers = iter([_error(429, **{"retry-after": "0"}), _accepted("w1"), _running("w1")])

    def handler(request: httpx.Request) -> httpx.Response:
        return next(answers)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        wire = _wire(http, max_retries=1, max_in_flight=1)
        assert (await wire.submit(GenerationRequest(prompt="a fox"))).task_id == "w1"
        assert (await wire.fetch_status("w1")).task_id == "w1"
        await wire.aclose()
        assert not http.is_closed


def _wire(http: httpx.AsyncClient, *, max_retries: int = 0, max_in_flight: int = 4, gate: Gate | None = None) -> Wire:
    secret = Secret(KEY)
    timeout = httpx.Timeout(5.0)
    sender = open_sender(
        http_client=http, transport=None, timeout=timeout, max_in_flight=max_in_flight, secret=secret, request_timeout=5
    )
    rng = random.Random(1)
    return Wire(
        requests=RequestFactory(http, api_key=KEY, base_url=httpx.URL(BASE), timeout=timeout),
        sender=sender,
        gate=gate if gate is not None else Throttle(RateBudget(), rng=rng),
        secret=secret,
        base_url=httpx.URL(BASE),
        max_retries=max_retries,
        retry_uncertain_submits=False,
        rng=rng,
    )


async def test_the_wire_never_has_more_requests_in_flight_than_its_slots() -> None:
    """With ``max_in_flight=2``, ten concurrent polls are answered two at a time at most."""
    in_flight = peak = 0
    release = anyio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await release.wait()
        in_flight -= 1
        return _running(request.url.params["task_id"])

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        wire = _wire(http, max_in_flight=2)
        answered: list[str] = []

        async def poll(task_id: str) -> None:
            answered.append((await wire.fetch_status(task_id)).task_id)

        async with anyio.create_task_group() as group:
            for n in range(10):
                group.start_soon(poll, f"t{n}")
            await anyio.wait_all_tasks_blocked()
            assert in_flight == 2
            release.set()
    assert peak == 2
    assert sorted(answered) == sorted(f"t{n}" for n in range(10))


class RecordingGate:
    """A gate that lets every request go at once and remembers the priority each asked with."""

    def __init__(self) -> None:
        self.priorities: list[float | None] = []

    async def acquire(self, priority: float | None = None) -> float:
        """Let the request go; note its priority."""
        self.priorities.append(priority)
        return anyio.current_time()

    def rate_limited(self, retry_after: float | None) -> float:
        """No pause."""
        return 0.0

    def answered(self) -> None:
        """Nothing to reset."""


async def test_polls_wait_at_the_gate_with_their_priority_and_the_rest_in_the_foreground() -> None:
    """``poll_status`` waits at the gate with its priority (0.0 by default); ``fetch_status``, ``submit`` with None."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return _accepted("w1")
        return _running(request.url.params["task_id"])

    recording = RecordingGate()
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        wire = _wire(http, gate=recording)
        await wire.poll_status("t1", priority=2.5)
        await wire.poll_status("t1")
        await wire.fetch_status("t1")
        await wire.fetch_status_retrying("t1")
        await wire.submit(GenerationRequest(prompt="a fox"))
    assert recording.priorities == [2.5, 0.0, None, None, None]


@pytest.mark.parametrize(
    "options",
    [{"params": {"tenant": "acme"}}, {"cookies": {"session": "s1"}}],
    ids=["default-params", "cookies"],
)
async def test_a_callers_client_with_params_or_cookies_still_sends_the_task_id(options: dict[str, Any]) -> None:
    """A caller's httpx client with default params or cookies still gets the task id and its own defaults sent."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return _running(request.url.params["task_id"])

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler), **options) as http:
        wire = _wire(http)
        assert (await wire.fetch_status("a b&c")).task_id == "a b&c"
        assert (await wire.fetch_status("plain-id")).task_id == "plain-id"
    for request in seen:
        assert request.headers["authorization"] == f"Bearer {KEY}"
        if "params" in options:
            assert request.url.params["tenant"] == "acme"
        else:
            assert request.headers["cookie"] == "session=s1"


async def test_changed_client_headers_are_picked_up() -> None:
    """Headers the caller sets on its httpx client between polls go out with the next poll."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return _running()

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        wire = _wire(http)
        await wire.fetch_status("t1")
        http.headers["X-Trace"] = "abc"
        await wire.fetch_status("t1")
    assert "x-trace" not in seen[0].headers
    assert seen[1].headers["x-trace"] == "abc"
    assert seen[1].headers["authorization"] == f"Bearer {KEY}"


# -- whole-request deadlines -------------------------------------------------------------------------


class _Drip(httpx.AsyncByteStream):
    """An answer that never ends: one byte every ``every`` seconds."""

    def __init__(self, every: float = 0.05) -> None:
        self.every = every

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            yield b" "
            await anyio.sleep(self.every)


def _dripping(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, stream=_Drip())


async def test_a_dripping_status_answer_ends_in_api_timeout_at_the_deadline() -> None:
    """A status answer dripped byte by byte ends in `APITimeoutError` once ``request_timeout`` has passed."""
    async with _client(transport=httpx.MockTransport(_dripping), request_timeout=0.3, max_retries=0) as sdk:
        started = anyio.current_time()
        with pytest.raises(APITimeoutError) as caught:
            await sdk.status("t1")
        elapsed = anyio.current_time() - started
    assert caught.value.kind == "deadline"
    assert "request_timeout" in str(caught.value)
    assert 0.3 <= elapsed < 1.3


@pytest.mark.slow_in_real_time
async def test_a_dripping_poll_frees_its_worker_for_other_tasks() -> None:
    """With one poll worker, a task whose polls drip does not starve another: the deadline frees the worker."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.params["task_id"] == "slow":
            return _dripping(request)
        return _json(
            200,
            {"code": 200, "data": {"task_id": "ok", "status": "SUCCESS", "response": ["https://cdn.example/1.png"]}},
        )

    options: dict[str, Any] = {"request_timeout": 0.2, "max_concurrent_polls": 1, "poll_interval": 0.01}
    async with _client(transport=httpx.MockTransport(handler), **options) as sdk:
        slow = sdk.track("slow", wait_timeout=1.5)
        await anyio.sleep(0.05)
        result = await sdk.track("ok", wait_timeout=1.0)
        assert result.images == ["https://cdn.example/1.png"]
        with pytest.raises(TaskTimeoutError) as caught:
            await slow
    assert isinstance(caught.value.__cause__, APITimeoutError)


async def test_a_dripping_submit_is_uncertain_and_carries_the_request() -> None:
    """A sent submit whose answer drips ends at the deadline in `SubmissionUncertainError` with the request."""
    async with _client(transport=httpx.MockTransport(_dripping), request_timeout=0.3) as sdk:
        with pytest.raises(SubmissionUncertainError) as caught:
            await sdk.submit("a fox")
    assert caught.value.request.prompt == "a fox"
    assert isinstance(caught.value.__cause__, APITimeoutError)


async def test_cancelling_around_a_dripping_submit_returns_within_the_deadline() -> None:
    """A task group cancelled around a dripping submit returns once the whole-request deadline has passed."""
    async with _client(transport=httpx.MockTransport(_dripping), request_timeout=0.3) as sdk:
        outcome: list[BaseException] = []

        async def submit() -> None:
            try:
                await sdk.submit("a fox")
            except SubmissionUncertainError as exc:
                outcome.append(exc)

        started = anyio.current_time()
        async with anyio.create_task_group() as group:
            group.start_soon(submit)
            await anyio.sleep(0.05)
            group.cancel_scope.cancel()
        elapsed = anyio.current_time() - started
    assert elapsed < 1.3
    # The caller hears that the cancelled submit may have been paid for.
    assert len(outcome) == 1


async def test_a_submit_held_back_by_429s_ends_at_submit_timeout_unpaid(api: respx.MockRouter) -> None:
    """Every POST refused with 429 and a long Retry-After: the submit ends at its deadline, never paid for."""
    route = api.post("/api/generate").mock(return_value=_error(429, "slow down", **{"retry-after": "30"}))
    async with _client(submit_timeout=0.5, max_retries=10) as sdk:
        started = anyio.current_time()
        with pytest.raises(APITimeoutError) as caught:
            await sdk.submit("a fox")
        elapsed = anyio.current_time() - started
    assert caught.value.kind == "not-sent-in-time"
    assert "not paid for" in str(caught.value)
    assert isinstance(caught.value.__cause__, RateLimitError)
    assert 0.5 <= elapsed < 1.5
    assert route.call_count == 1


async def test_a_submit_waiting_for_a_slot_ends_at_submit_timeout() -> None:
    """A submit that never gets one of the busy submit slots ends at its deadline, never sent."""
    release = anyio.Event()
    posts = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal posts
        posts += 1
        await release.wait()
        return _accepted("t1")

    options: dict[str, Any] = {"max_concurrent_submits": 1, "submit_timeout": 0.3, "request_timeout": 5.0}
    async with _client(transport=httpx.MockTransport(handler), **options) as sdk, anyio.create_task_group() as group:
        group.start_soon(sdk.submit, "first")
        await anyio.sleep(0.05)
        with pytest.raises(APITimeoutError, match="submit slot") as caught:
            await sdk.submit("second")
        release.set()
    assert caught.value.kind == "not-sent-in-time"
    assert posts == 1


@pytest.mark.parametrize(
    "task_id",
    ["x" * 10_000, "bad\\u0000id", "tab\\there", "\\ud800", "a\\udfffb", "", "\\u0085"],
    ids=["10k", "nul", "tab", "lone-high", "lone-low", "empty", "nel"],
)
async def test_a_submit_answer_with_an_unusable_task_id_is_uncertain(api: respx.MockRouter, task_id: str) -> None:
    """An accepted submit whose task id cannot be polled is `SubmissionUncertainError`, naming the id."""
    body = '{"code":200,"data":{"task_id":"' + task_id + '","status":"IN_PROGRESS"}}'
    route = api.post("/api/generate").mock(return_value=httpx.Response(200, content=body.encode()))
    async with _client() as sdk:
        with pytest.raises(SubmissionUncertainError) as caught:
            await sdk.submit("a fox")
    assert route.call_count == 1
    assert isinstance(caught.value.__cause__, APIResponseError)


async def test_status_refuses_an_answer_about_another_task(api: respx.MockRouter) -> None:
    """``status("t1")`` answered with task t2's data raises `APIResponseError`, never t2's info as t1's."""
    api.get("/api/status").mock(return_value=_running("t2"))
    with pytest.raises(APIResponseError, match="another task"):
        await _client(max_retries=0).status("t1")


@pytest.mark.parametrize(
    "task_id",
    ["a\x00b", "line\nbreak", "x" * 513, "\ud800", " ", "\x7f", "\u2028"],
    ids=["nul", "newline", "long", "surrogate", "blank", "del", "line-separator"],
)
async def test_status_and_track_refuse_a_task_id_no_url_can_hold(api: respx.MockRouter, task_id: str) -> None:
    """A task id with control characters, a lone surrogate, or over 512 characters is refused before any I/O."""
    route = api.get("/api/status").mock(return_value=_running())
    async with _client() as sdk:
        with pytest.raises(InvalidRequestError) as caught:
            await sdk.status(task_id)
        assert caught.value.field == "task_id"
        with pytest.raises(InvalidRequestError):
            sdk.track(task_id)
    assert route.call_count == 0


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("timeout", float("nan")),
        ("timeout", -1),
        ("timeout", 0),
        ("timeout", "30"),
        ("timeout", True),
        ("timeout", httpx.Timeout(5.0, read=float("nan"))),
        ("timeout", httpx.Timeout(5.0, connect=-1.0)),
        ("request_timeout", 0),
        ("request_timeout", float("inf")),
        ("request_timeout", None),
        ("submit_timeout", -5),
        ("submit_timeout", float("nan")),
        ("not_found_grace", float("nan")),
        ("max_retries", -1),
    ],
    ids=lambda value: value if isinstance(value, str) else type(value).__name__,
)
def test_timeouts_are_checked_at_construction(option: str, value: object) -> None:
    """A timeout that is NaN, negative, zero, infinite or of the wrong type is refused by the constructor."""
    options: dict[str, Any] = {option: value}
    with pytest.raises(InvalidRequestError) as caught:
        AsyncBanana2(KEY, base_url=BASE, **options)
    assert caught.value.field is not None
    assert caught.value.field.startswith(option)


async def test_a_huge_poll_pool_costs_nothing_until_used(api: respx.MockRouter) -> None:
    """Entering a client with ``max_concurrent_polls=10**9`` starts no worker; polls start only as many as due."""
    api.get("/api/status").mock(side_effect=lambda request: _running(request.url.params["task_id"]))
    before = len(anyio.get_running_tasks())
    async with _client(max_concurrent_polls=10**9, poll_interval=0.01) as sdk:
        assert len(anyio.get_running_tasks()) - before <= 2
        handles = [sdk.track(f"t{n}") for n in range(3)]
        await anyio.sleep(0.1)
        assert len(anyio.get_running_tasks()) - before <= 2 + 3
        for handle in handles:
            assert not handle.done()


async def test_generate_cancelled_after_the_post_names_the_task(
    api: respx.MockRouter, caplog: pytest.LogCaptureFixture
) -> None:
    """``generate()`` cancelled while waiting for a submitted task logs a WARNING with its id and ``track()``."""
    api.post("/api/generate").mock(return_value=_accepted("paid-1"))
    api.get("/api/status").mock(return_value=_running("paid-1"))
    async with _client(poll_interval=0.01) as sdk:
        with anyio.move_on_after(0.2):
            await sdk.generate("a fox")
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert any("paid-1" in record.getMessage() and "track(" in record.getMessage() for record in warnings)
