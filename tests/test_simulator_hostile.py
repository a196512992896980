"""The simulator's hostile faults on the wire, over both faces: bombs, drips, echoed keys, poisoned values."""

from __future__ import annotations

import io
import json
import math
import time
import zlib
from collections.abc import AsyncIterator, Iterator, MutableMapping
from typing import Any, Final

import anyio
import httpx
import pytest

from banana2_async.testing import (
    ECHO_FORMS,
    EMPTY_RESPONSES,
    MISSING,
    POISONED_CODES,
    POISONED_RESULT_URLS,
    POISONED_RETRY_AFTERS,
    POISONED_TASK_IDS,
    BombEncoding,
    EchoForm,
    Fault,
    Simulator,
    SimulatorServer,
)

pytestmark = pytest.mark.anyio

KEY: Final = "sk-test/abc+def/123+XYZ"
AUTH: Final = {"Authorization": f"Bearer {KEY}"}
MiB: Final = 1 << 20
ENCODINGS: Final[tuple[BombEncoding, ...]] = ("gzip", "deflate", "br", "zstd")
# How each form writes KEY, spelled out by hand.
ECHOED: Final[dict[EchoForm, str]] = {
    "verbatim": "sk-test/abc+def/123+XYZ",
    "escaped_slashes": "sk-test\\/abc+def\\/123+XYZ",
    "unicode_escapes": "".join(f"\\u{ord(char):04x}" for char in KEY),
    "some_unicode_escapes": "".join(f"\\u{ord(char):04x}" if i % 2 else char for i, char in enumerate(KEY)),
    "percent_encoded": "sk-test%2Fabc%2Bdef%2F123%2BXYZ",
}


def _short(value: object) -> str:
    """A test id for a poisoned value: its repr, or its start and length (a 5,000-digit int has no repr)."""
    if isinstance(value, int) and abs(value) > 10**4000:
        return f"{'-' if value < 0 else ''}9x5000"
    if isinstance(value, str) and len(value) > 40:
        return f"{value[:12]!r}..{len(value)}-chars"
    return repr(value)[:40]


def _needs(encoding: str) -> None:
    if encoding == "br":
        pytest.importorskip("brotli")
    if encoding == "zstd":
        pytest.importorskip("zstandard")


@pytest.fixture(scope="module")
def sim() -> Simulator:
    """One simulator for the module, whose tasks finish at once; each test clears its faults."""
    return Simulator(api_key=KEY, speed=math.inf, seed=13)


@pytest.fixture(scope="module")
def server(sim: Simulator) -> Iterator[SimulatorServer]:
    """That simulator on a loopback port."""
    with sim.serve() as running:
        yield running


@pytest.fixture(params=["in-process", "loopback"])
async def http(
    request: pytest.FixtureRequest, sim: Simulator, server: SimulatorServer
) -> AsyncIterator[httpx.AsyncClient]:
    """Raw httpx to the simulator, authenticated with KEY: in-process, then over loopback."""
    sim.clear_faults()
    if request.param == "in-process":
        client = httpx.AsyncClient(transport=sim.transport(), base_url=sim.base_url, headers=AUTH)
    else:
        client = httpx.AsyncClient(base_url=server.base_url, headers=AUTH)
    async with client:
        yield client
    sim.clear_faults()


async def _task(http: httpx.AsyncClient, prompt: str = "a harbour") -> str:
    response = await http.post("/api/generate", json={"prompt": prompt})
    assert response.status_code == 200, response.text
    return str(response.json()["data"]["task_id"])


async def _poll(http: httpx.AsyncClient, task_id: str) -> httpx.Response:
    return await http.get("/api/status", params={"task_id": task_id})


async def _raw(http: httpx.AsyncClient, method: str, url: str, **kwargs: Any) -> tuple[httpx.Response, list[bytes]]:
    """An answer and the bytes of its body as they came, still encoded."""
    async with http.stream(method, url, **kwargs) as response:
        return response, [chunk async for chunk in response.aiter_raw()]


def _inflated_size(raw: bytes, encoding: str) -> int:
    """How many bytes ``raw`` decodes to, counted a megabyte at a time."""
    if encoding in ("gzip", "deflate"):
        decompressor = zlib.decompressobj(31 if encoding == "gzip" else 15)
        size, pending = 0, raw
        while pending and not decompressor.eof:
            size += len(decompressor.decompress(pending, MiB))
            pending = decompressor.unconsumed_tail
        assert decompressor.eof
        return size
    if encoding == "br":
        return len(pytest.importorskip("brotli").Decompressor().process(raw))
    zstandard = pytest.importorskip("zstandard")
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw), read_across_frames=True)
    size = 0
    while piece := reader.read(MiB):
        size += len(piece)
    return size


# Compression bombs


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_a_bomb_on_status_inflates_past_its_size_to_the_real_answer(
    http: httpx.AsyncClient, sim: Simulator, encoding: BombEncoding
) -> None:
    """A status answer travels small and decodes to `size` spaces followed by the real envelope."""
    _needs(encoding)
    task_id = await _task(http)
    size = 3 * MiB + 5
    rule = sim.inject(Fault.compression_bomb(size, encoding=encoding), on="status", times=1)
    answer, raw = await _raw(http, "GET", "/api/status", params={"task_id": task_id})
    assert answer.headers["content-encoding"] == encoding
    assert int(answer.headers["content-length"]) == len(b"".join(raw)) < size // 100
    assert _inflated_size(b"".join(raw), encoding) > size
    sim.inject(Fault.compression_bomb(size, encoding=encoding), on="status", times=1)
    inflated = await _poll(http, task_id)
    assert len(inflated.content) > size
    assert inflated.content[:size] == b" " * size
    assert inflated.json()["data"]["task_id"] == task_id
    assert rule.fired == 1


async def test_a_bomb_on_generate_comes_after_the_task_was_paid_for(http: httpx.AsyncClient, sim: Simulator) -> None:
    """A bomb is an answer fault: the task behind a bombed generate answer is created and charged."""
    before = sim.stats.tasks_created
    sim.inject(Fault.compression_bomb(MiB), on="generate", times=1)
    answer = await http.post("/api/generate", json={"prompt": "bombed"})
    assert answer.headers["content-encoding"] == "gzip"
    assert len(answer.content) > MiB
    assert answer.json()["data"]["status"] == "IN_PROGRESS"
    assert sim.stats.tasks_created == before + 1


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_a_bomb_on_a_result_download_keeps_its_image_type(
    http: httpx.AsyncClient, sim: Simulator, encoding: BombEncoding
) -> None:
    """A bombed image answers image/png, compressed, and decodes to padding followed by the PNG."""
    _needs(encoding)
    url = (await _poll(http, await _task(http))).json()["data"]["response"][0]
    sim.inject(Fault.compression_bomb(2 * MiB, encoding=encoding), on="result", times=1)
    image = await http.get(url)
    assert image.headers["content-type"] == "image/png"
    assert image.headers["content-encoding"] == encoding
    assert len(image.content) > 2 * MiB
    assert image.content[2 * MiB :].startswith(b"\x89PNG")


def test_the_default_bomb_inflates_past_a_gibibyte_from_about_a_mebibyte() -> None:
    """Fault.compression_bomb() answers about 1 MiB of gzip that decodes to more than 1 GiB."""
    sim = Simulator(api_key=KEY)
    sim.inject(Fault.compression_bomb(), on="status")
    reply = sim.handle("GET", "/api/status", query="task_id=x", headers=AUTH)
    assert ("content-encoding", "gzip") in reply.headers
    assert len(reply.body) < 2 * MiB
    assert _inflated_size(reply.body, "gzip") > 1 << 30


async def test_a_bomb_travels_in_socket_sized_pieces(sim: Simulator) -> None:
    """In-process, a bomb's compressed body arrives 64 KiB at a time, as from a socket."""
    sim.clear_faults()
    sim.inject(Fault.compression_bomb(128 * MiB), on="status", times=1)
    async with httpx.AsyncClient(transport=sim.transport(), base_url=sim.base_url, headers=AUTH) as http:
        _, raw = await _raw(http, "GET", "/api/status", params={"task_id": "whatever"})
    assert len(raw) > 1
    assert max(len(piece) for piece in raw) == 64 * 1024
    assert _inflated_size(b"".join(raw), "gzip") > 128 * MiB


def test_a_bomb_refuses_a_size_or_an_encoding_it_cannot_make() -> None:
    """A bomb needs a positive size and a known encoding."""
    for size in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="size"):
            Fault.compression_bomb(size)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="encoding"):
        Fault.compression_bomb(encoding="lzma")  # type: ignore[arg-type]


# Slow drips


async def test_a_drip_is_slow_on_the_wire(http: httpx.AsyncClient, sim: Simulator) -> None:
    """Fault.drip sends the head at once, then the body in pieces of at most `size` bytes, `every` seconds apart."""
    task_id = await _task(http)
    length = len((await _poll(http, task_id)).content)
    sim.inject(Fault.drip(0.02, size=40), on="status", times=1)
    pieces = math.ceil(length / 40)
    started = time.perf_counter()
    async with http.stream("GET", "/api/status", params={"task_id": task_id}) as answer:
        head = time.perf_counter() - started
        raw = [chunk async for chunk in answer.aiter_raw()]
    elapsed = time.perf_counter() - started
    assert head < elapsed / 2
    assert elapsed >= 0.8 * pieces * 0.02
    assert max(len(chunk) for chunk in raw) <= 40 * 2  # a socket may join two pieces
    assert len(raw) >= pieces // 2
    assert json.loads(b"".join(raw))["data"]["task_id"] == task_id


async def test_a_dripping_download_takes_every_pause(http: httpx.AsyncClient, sim: Simulator) -> None:
    """A dripping image arrives whole, no sooner than its pauses add up to."""
    url = (await _poll(http, await _task(http))).json()["data"]["response"][0]
    image = (await http.get(url)).content
    sim.inject(Fault.drip(0.03, size=len(image) // 4 + 1), on="result", times=1)
    started = time.perf_counter()
    assert (await http.get(url)).content == image
    assert time.perf_counter() - started >= 0.1


async def test_a_pause_longer_than_the_read_timeout_times_out(http: httpx.AsyncClient, sim: Simulator) -> None:
    """A drip whose pause outlasts the read timeout raises httpx.ReadTimeout on both faces."""
    task_id = await _task(http)
    sim.inject(Fault.drip(5.0), on="status", times=1)
    started = time.perf_counter()
    with pytest.raises(httpx.ReadTimeout):
        await http.get("/api/status", params={"task_id": task_id}, timeout=httpx.Timeout(5.0, read=0.05))
    assert time.perf_counter() - started < 2.0


async def test_a_dripping_generate_has_created_the_task(http: httpx.AsyncClient, sim: Simulator) -> None:
    """A drip acts on the answer: the task exists and is paid for while its answer still drips."""
    before = sim.stats.tasks_created
    sim.inject(Fault.drip(5.0), on="generate", times=1)
    with anyio.move_on_after(0.2):
        await http.post("/api/generate", json={"prompt": "dripping"})
    assert sim.stats.tasks_created == before + 1


def test_a_drip_refuses_negative_pauses_and_empty_pieces() -> None:
    """A drip needs a pause of 0 or more seconds and pieces of at least one byte."""
    with pytest.raises(ValueError, match="negative"):
        Fault.drip(-1)
    with pytest.raises(ValueError, match="size"):
        Fault.drip(0.1, size=0)


# Echoed keys


@pytest.mark.parametrize("form", ECHO_FORMS)
async def test_an_error_echoes_the_key_in_each_form(http: httpx.AsyncClient, sim: Simulator, form: EchoForm) -> None:
    """echo_key(form) answers an error whose raw body holds the key written in that form, and only so."""
    before = sim.stats.tasks_created
    sim.inject(Fault.echo_key(form, status=500), on="generate", times=1)
    answer = await http.post("/api/generate", json={"prompt": "echo"})
    assert answer.status_code == 500
    assert ECHOED[form] in answer.text
    if form != "verbatim":
        assert KEY not in answer.text
    assert sim.stats.tasks_created == before


@pytest.mark.parametrize("form", ECHO_FORMS)
async def test_a_json_form_decodes_back_to_the_key(http: httpx.AsyncClient, sim: Simulator, form: EchoForm) -> None:
    """Every form but percent-encoding is JSON that decodes to the key itself."""
    sim.inject(Fault.echo_key(form), on="status", times=1)
    message = (await _poll(http, "any")).json()["message"]
    assert (KEY if form != "percent_encoded" else ECHOED[form]) in message


@pytest.mark.parametrize("form", ECHO_FORMS)
async def test_a_header_echoes_the_key_in_each_form(http: httpx.AsyncClient, sim: Simulator, form: EchoForm) -> None:
    """echo_key(where="header") puts the key, in that form, into x-request-id, on any answer."""
    task_id = await _task(http)
    sim.inject(Fault.echo_key(form, where="header"), on="status", times=1)
    sim.inject(Fault.server_error(503), on="status", times=1)
    answer = await _poll(http, task_id)
    assert answer.status_code == 503
    assert answer.headers.get_list("x-request-id") == [f"req-{ECHOED[form]}"]


@pytest.mark.parametrize("form", ECHO_FORMS)
async def test_a_200_field_echoes_the_key_in_each_form(http: httpx.AsyncClient, sim: Simulator, form: EchoForm) -> None:
    """echo_key(where="field") adds data.api_key holding the key, in that form, to a successful answer."""
    task_id = await _task(http)
    sim.inject(Fault.echo_key(form, where="field"), on="status", times=1)
    answer = await _poll(http, task_id)
    assert answer.status_code == 200
    assert f'"api_key":"{ECHOED[form]}"' in answer.text
    assert answer.json()["data"]["status"] == "SUCCESS"


async def test_a_field_goes_into_the_envelope_when_data_is_not_an_object(
    http: httpx.AsyncClient, sim: Simulator
) -> None:
    """On an answer whose data is null (an error), the echoed api_key field sits in the envelope."""
    sim.inject(Fault.envelope_error(500, "oops"), on="status", times=1)
    sim.inject(Fault.echo_key(where="field"), on="status", times=1)
    body = (await _poll(http, "any")).json()
    assert body["api_key"] == KEY
    assert body["data"] is None


@pytest.mark.parametrize("form", ECHO_FORMS)
async def test_a_failed_task_echoes_the_key_in_its_error(
    http: httpx.AsyncClient, sim: Simulator, form: EchoForm
) -> None:
    """echo_key(where="failed_task") makes the next task fail with the key, in that form, in data.error."""
    sim.inject(Fault.echo_key(form, where="failed_task"), times=1)
    answer = await _poll(http, await _task(http))
    assert answer.json()["data"]["status"] == "FAILED"
    assert ECHOED[form] in answer.text
    assert "api_key" not in answer.json()["data"]


async def test_the_echo_is_whatever_key_the_caller_sent(http: httpx.AsyncClient, sim: Simulator) -> None:
    """The key comes from the request's Authorization header, even one the simulator does not know."""
    sim.inject(Fault.echo_key(), on="status", times=1)
    answer = await http.get("/api/status", params={"task_id": "x"}, headers={"Authorization": "Bearer sk-other/1"})
    assert answer.status_code == 400
    assert "sk-other/1" in answer.json()["message"]


def test_an_echo_refuses_unknown_forms_places_and_statuses() -> None:
    """echo_key checks its form, its place and its error status."""
    with pytest.raises(ValueError, match="form"):
        Fault.echo_key("rot13")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="where"):
        Fault.echo_key(where="cookie")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="status"):
        Fault.echo_key(status=200)


# Poisoned values


def _json(value: Any) -> str:
    """``value`` as JSON text, written out by hand for the numbers json.dumps cannot write."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**4000:
        return ("-" if value < 0 else "") + "9" * 5000
    return json.dumps(value, separators=(",", ":"))


@pytest.mark.parametrize("code", POISONED_CODES, ids=_short)
async def test_a_poisoned_code_is_written_as_given(http: httpx.AsyncClient, sim: Simulator, code: Any) -> None:
    """poisoned_code(value) writes exactly that JSON value as the envelope's code, the answer otherwise intact."""
    task_id = await _task(http)
    sim.inject(Fault.poisoned_code(code), on="status", times=1)
    answer = await _poll(http, task_id)
    assert answer.status_code == 200
    assert answer.text.startswith(f'{{"code":{_json(code)},"message":"success","data":{{"task_id":"{task_id}"')


async def test_a_poisoned_code_on_generate_follows_a_paid_task(http: httpx.AsyncClient, sim: Simulator) -> None:
    """A poisoned code is an answer fault: the task behind it is created and charged."""
    before = sim.stats.tasks_created
    sim.inject(Fault.poisoned_code("\u00b2\u2070\u2070"), on="generate", times=1)
    answer = await http.post("/api/generate", json={"prompt": "poisoned"})
    assert answer.json()["code"] == "\u00b2\u2070\u2070"
    assert sim.stats.tasks_created == before + 1


@pytest.mark.parametrize("value", POISONED_RETRY_AFTERS, ids=_short)
async def test_a_poisoned_retry_after_is_sent_as_given(http: httpx.AsyncClient, sim: Simulator, value: str) -> None:
    """poisoned_retry_after(value) answers 429 with exactly that Retry-After."""
    sim.inject(Fault.poisoned_retry_after(value), on="status", times=1)
    answer = await _poll(http, "any")
    assert answer.status_code == 429
    assert answer.headers["retry-after"] == value


async def test_a_poisoned_retry_after_defaults_to_a_year_no_calendar_holds(
    http: httpx.AsyncClient, sim: Simulator
) -> None:
    """Fault.poisoned_retry_after() sends a date in year 99999999999, with the status asked for."""
    sim.inject(Fault.poisoned_retry_after(status=503), on="generate", times=1)
    answer = await http.post("/api/generate", json={"prompt": "later"})
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "Fri, 31 Dec 99999999999 23:59:59 GMT"


def test_a_retry_after_that_no_header_can_carry_is_refused() -> None:
    """A Retry-After value must be printable ASCII, and go with an error status."""
    for value in ("1\r\nx-injected: 1", "\u0662", "\x00"):
        with pytest.raises(ValueError, match="ASCII"):
            Fault.poisoned_retry_after(value)
    with pytest.raises(ValueError, match="status"):
        Fault.poisoned_retry_after("1", status=200)


@pytest.mark.parametrize("url", POISONED_RESULT_URLS, ids=_short)
async def test_a_poisoned_result_url_is_the_whole_response(http: httpx.AsyncClient, sim: Simulator, url: str) -> None:
    """poisoned_result_url(url) makes the next task succeed with exactly [url], escaped as JSON escapes it."""
    sim.inject(Fault.poisoned_result_url(url), times=1)
    answer = await _poll(http, await _task(http))
    assert f'"response":{json.dumps([url])}' in answer.text
    data = answer.json()["data"]
    assert (data["status"], data["response"], data["consumed_credits"]) == ("SUCCESS", [url], 20)


@pytest.mark.parametrize("task_id", POISONED_TASK_IDS, ids=_short)
async def test_a_poisoned_task_id_names_no_task(http: httpx.AsyncClient, sim: Simulator, task_id: str) -> None:
    """poisoned_task_id(value) answers generate with exactly that task id; the real task is created and paid."""
    before = sim.stats.tasks_created
    sim.inject(Fault.poisoned_task_id(task_id), times=1)
    answer = await http.post("/api/generate", json={"prompt": "which task"})
    assert f'"task_id":{json.dumps(task_id)}' in answer.text
    assert answer.json()["data"]["task_id"] == task_id
    assert sim.stats.tasks_created == before + 1
    assert task_id not in {task.task_id for task in sim.tasks()}


@pytest.mark.parametrize("response", EMPTY_RESPONSES, ids=_short)
async def test_an_empty_success_holds_no_image(http: httpx.AsyncClient, sim: Simulator, response: Any) -> None:
    """empty_success(value) makes the next task report SUCCESS, charged, with that response or none at all."""
    sim.inject(Fault.empty_success(response), times=1)
    task_id = await _task(http)
    data = (await _poll(http, task_id)).json()["data"]
    assert (data["status"], data["consumed_credits"]) == ("SUCCESS", 20)
    if response is MISSING:
        assert "response" not in data
    else:
        assert data["response"] == response
    assert (await http.get(f"/results/{task_id}/0.png")).status_code == 200


# Hostile faults are rules like any other


@pytest.mark.parametrize(
    ("fault", "endpoints"),
    [
        (Fault.compression_bomb(), {"generate", "status", "result"}),
        (Fault.drip(), {"generate", "status", "result"}),
        (Fault.echo_key(), {"generate", "status", "result"}),
        (Fault.echo_key(where="header"), {"generate", "status", "result"}),
        (Fault.echo_key(where="field"), {"generate", "status"}),
        (Fault.echo_key(where="failed_task"), {"generate"}),
        (Fault.poisoned_code(None), {"generate", "status"}),
        (Fault.poisoned_retry_after(), {"generate", "status", "result"}),
        (Fault.poisoned_result_url("x"), {"generate"}),
        (Fault.poisoned_task_id(None), {"generate"}),
        (Fault.empty_success(), {"generate"}),
    ],
)
def test_each_hostile_fault_acts_on_its_endpoints(fault: Fault, endpoints: set[str]) -> None:
    """Each hostile fault names the endpoints it can act on; inject without 'on' covers exactly those."""
    assert fault.endpoints == endpoints
    assert Simulator().inject(fault).endpoints == endpoints


async def test_hostile_rules_count_and_stop_like_any_other(http: httpx.AsyncClient, sim: Simulator) -> None:
    """A hostile rule limited by times fires that often, counts it, then lets answers through unharmed."""
    task_id = await _task(http)
    rule = sim.inject(Fault.poisoned_code(True), on="status", times=2)
    codes = [(await _poll(http, task_id)).json()["code"] for _ in range(3)]
    assert codes == [True, True, 200]
    assert (rule.fired, rule.remaining, rule.active) == (2, 0, False)


async def test_hostile_rules_fire_by_probability(http: httpx.AsyncClient, sim: Simulator) -> None:
    """A hostile rule with a probability fires on some requests only, and counts those."""
    task_id = await _task(http)
    rule = sim.inject(Fault.echo_key(where="header"), on="status", probability=0.5)
    echoed = [(await _poll(http, task_id)).headers["x-request-id"].startswith("req-") for _ in range(40)]
    assert 5 < sum(echoed) < 35
    assert rule.fired == sum(echoed)


async def test_the_asgi_app_stops_dripping_when_the_client_leaves() -> None:
    """Under any ASGI server, a drip stops sending once the client disconnects, and the app returns."""
    sim = Simulator(api_key=KEY)
    sim.inject(Fault.drip(0.01), on="status")
    sent: list[MutableMapping[str, Any]] = []
    left = anyio.Event()
    requests = [{"type": "http.request", "body": b""}]

    async def receive() -> MutableMapping[str, Any]:
        if requests:
            return requests.pop()
        await left.wait()
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)
        if len(sent) == 4:
            left.set()

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/api/status",
        "query_string": b"task_id=x",
        "headers": [(b"authorization", f"Bearer {KEY}".encode())],
    }
    with anyio.fail_after(2):
        await sim.asgi_app()(scope, receive, send)
    assert sent[0]["type"] == "http.response.start"
    assert [message["body"] for message in sent[1:4]] == [b"{", b'"', b"c"]
    assert len(sent) <= 5
    assert all(message.get("more_body") for message in sent[1:])
