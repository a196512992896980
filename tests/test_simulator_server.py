"""The simulator served over real loopback sockets: uvicorn in its own thread, the ASGI app, the command line."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from banana2_async.testing import DROPPED, Fault, Simulator, SimulatorServer
from banana2_async.testing.__main__ import main

pytestmark = pytest.mark.anyio

AUTH = {"Authorization": "Bearer sk-sim-test"}
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def server() -> Iterator[SimulatorServer]:
    """One fast simulator served for the whole module; the tests only add to its state."""
    with Simulator(speed=1000, seed=3).serve() as running:
        yield running


@pytest.fixture
async def http(server: SimulatorServer) -> AsyncIterator[httpx.AsyncClient]:
    """Raw httpx over loopback to the server, authenticated."""
    async with httpx.AsyncClient(base_url=server.base_url, headers=AUTH) as client:
        yield client


async def _finished(http: httpx.AsyncClient, task_id: str) -> dict[str, Any]:
    while True:
        data: dict[str, Any] = (await http.get("/api/status", params={"task_id": task_id})).json()["data"]
        if data["status"] != "IN_PROGRESS":
            return data


async def test_serves_the_api_over_loopback_with_result_urls_at_itself(
    http: httpx.AsyncClient, server: SimulatorServer
) -> None:
    """The server listens on 127.0.0.1 and runs a task to SUCCESS; its result URL points at it and serves the image."""
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", server.base_url)
    assert server.port != 0
    submitted = await http.post("/api/generate", json={"prompt": "over the wire", "output_format": "jpeg"})
    assert submitted.status_code == 200
    data = await _finished(http, submitted.json()["data"]["task_id"])
    assert data["status"] == "SUCCESS"
    url = data["response"][0]
    assert url.startswith(f"{server.base_url}/results/")
    async with httpx.AsyncClient() as anonymous:
        image = await anonymous.get(url)
    assert image.headers["content-type"] == "image/jpeg"
    assert image.content.startswith(b"\xff\xd8")


async def test_documented_errors_travel_over_the_wire(http: httpx.AsyncClient) -> None:
    """401, 400 and 404 arrive as real HTTP statuses with the envelope."""
    async with httpx.AsyncClient(base_url=str(http.base_url)) as anonymous:
        assert (await anonymous.post("/api/generate", json={"prompt": "x"})).status_code == 401
    bad = await http.post("/api/generate", json={"prompt": "x", "resolution": "8k"})
    assert (bad.status_code, bad.json()["code"]) == (400, 400)
    assert "resolution" in bad.json()["message"]
    assert (await http.get("/api/status", params={"task_id": "nope"})).status_code == 404


async def test_only_documented_values_are_accepted_over_the_wire(
    http: httpx.AsyncClient, server: SimulatorServer
) -> None:
    """Over loopback, every documented value answers 200 and each spelling the SDK would normalise answers 400."""
    documented = [
        *(
            ("aspect_ratio", ratio)
            for ratio in ("1:1", "3:2", "2:3", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9")
        ),
        *(("resolution", resolution) for resolution in ("1k", "2k", "4k")),
        *(("output_format", output_format) for output_format in ("png", "jpeg")),
        ("type", "text-to-image"),
    ]
    for field, value in documented:
        response = await http.post("/api/generate", json={"prompt": "documented", field: value})
        assert response.status_code == 200, (field, value, response.text)
    created = server.simulator.stats.tasks_created
    spellings = [("resolution", "2K"), ("output_format", "jpg"), ("aspect_ratio", " 16:9 "), ("type", "EDIT")]
    for field, value in spellings:
        body = {"prompt": "undocumented", "images": ["https://example.com/cat.jpg"], field: value}
        if field != "type":
            del body["images"]
        response = await http.post("/api/generate", json=body)
        assert (response.status_code, response.json()["code"]) == (400, 400)
        assert response.json()["message"].startswith(f"{field}: ")
    raw = await http.post("/api/generate", content=b'{"prompt": "x", "resolution": NaN}')
    assert raw.status_code == 400
    assert raw.json()["message"].startswith("body: ")
    assert server.simulator.stats.tasks_created == created


async def test_a_dropped_connection_is_a_transport_error_not_a_500(
    http: httpx.AsyncClient, server: SimulatorServer
) -> None:
    """Fault.drop closes the TCP connection without an answer: httpx raises RemoteProtocolError; the next call works."""
    rule = server.simulator.inject(Fault.drop(), on="status", times=1)
    dropped_before = server.simulator.stats.count("status", DROPPED)
    with pytest.raises(httpx.RemoteProtocolError):
        await http.get("/api/status", params={"task_id": "any"})
    assert rule.fired == 1
    assert server.simulator.stats.count("status", DROPPED) == dropped_before + 1
    assert (await http.get("/api/status", params={"task_id": "any"})).status_code == 404


async def test_a_generate_dropped_after_create_is_paid_for(http: httpx.AsyncClient, server: SimulatorServer) -> None:
    """Over the wire too, drop(after_create=True) loses the answer of a task that exists and was charged."""
    before = server.simulator.stats
    server.simulator.inject(Fault.drop(after_create=True), times=1)
    with pytest.raises(httpx.RemoteProtocolError):
        await http.post("/api/generate", json={"prompt": "lost answer"})
    after = server.simulator.stats
    assert after.tasks_created == before.tasks_created + 1
    assert after.credits_spent == before.credits_spent + 20


async def test_a_slow_answer_times_out_at_the_client_and_the_server_moves_on(
    http: httpx.AsyncClient, server: SimulatorServer
) -> None:
    """A slow answer past the client's read timeout raises ReadTimeout; the server keeps serving."""
    server.simulator.inject(Fault.slow(30), on="status", times=1)
    with pytest.raises(httpx.ReadTimeout):
        await http.get("/api/status", params={"task_id": "slow"}, timeout=httpx.Timeout(5.0, read=0.05))
    assert (await http.get("/api/status", params={"task_id": "slow"})).status_code == 404


async def test_a_server_starts_and_stops_inside_async_with() -> None:
    """async with starts the server on a free port and stops it on exit, on asyncio and trio alike."""
    sim = Simulator(speed=1000)
    async with sim.serve() as server, httpx.AsyncClient() as http:
        response = await http.get(f"{server.base_url}/api/status", headers=AUTH)
        assert response.status_code == 400
        url = server.base_url
    assert repr(server) == "SimulatorServer(stopped)"
    async with httpx.AsyncClient() as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(url)


async def test_a_cancelled_block_still_stops_the_server() -> None:
    """Leaving async with through a cancellation stops the server thread all the same."""
    with anyio.CancelScope() as scope:
        async with Simulator().serve() as server:
            scope.cancel()
            await anyio.sleep(5)
    assert repr(server) == "SimulatorServer(stopped)"


def test_the_server_works_from_synchronous_code() -> None:
    """with starts and stops the server from plain synchronous code; two servers get different ports."""
    sim = Simulator(speed=1000)
    with sim.serve() as first, sim.serve() as second, httpx.Client(headers=AUTH) as http:
        assert first.port != second.port
        assert repr(first) == f"SimulatorServer({first.base_url})"
        for server in (first, second):
            assert http.post(f"{server.base_url}/api/generate", json={"prompt": "sync"}).status_code == 200
    assert sim.stats.tasks_per_prompt == {"sync": 2}


def test_a_server_refuses_a_second_start_and_stops_idempotently() -> None:
    """start while running raises, stop twice is harmless, base_url needs a running server."""
    server = Simulator().serve()
    with pytest.raises(RuntimeError, match="not running"):
        _ = server.base_url
    server.start()
    try:
        with pytest.raises(RuntimeError, match="already running"):
            server.start()
    finally:
        server.stop()
    server.stop()


def test_a_busy_port_fails_to_start() -> None:
    """Asking for a port already in use raises OSError and leaves nothing running."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = Simulator().serve(port=taken.getsockname()[1])
        with pytest.raises(OSError, match="in use"):
            server.start()
    with pytest.raises(RuntimeError):
        _ = server.port


async def test_the_asgi_app_serves_any_asgi_server() -> None:
    """The ASGI app answers through httpx's ASGI transport, which has no sockets."""
    sim = Simulator(speed=1000)
    transport = httpx.ASGITransport(app=sim.asgi_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://asgi.test", headers=AUTH) as http:
        response = await http.post("/api/generate", json={"prompt": "asgi"})
    assert response.status_code == 200
    assert response.headers["content-length"] == str(len(response.content))


async def test_without_a_server_that_can_close_sockets_a_drop_aborts_the_answer() -> None:
    """Under another ASGI server a drop starts an answer and then fails, so no complete answer is delivered."""
    sim = Simulator()
    sim.inject(Fault.drop(), on="status", times=1)
    transport = httpx.ASGITransport(app=sim.asgi_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://asgi.test", headers=AUTH) as http:
        with pytest.raises(ConnectionAbortedError):
            await http.get("/api/status", params={"task_id": "x"})


async def test_the_asgi_app_speaks_lifespan() -> None:
    """The ASGI app completes the lifespan startup and shutdown handshake."""
    messages = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: Any) -> None:
        sent.append(dict(message))

    await Simulator().asgi_app()({"type": "lifespan"}, receive, send)
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


def _run_cli(*arguments: str) -> subprocess.Popen[str]:
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "banana2_async.testing", *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
        cwd=REPO,
    )


def test_the_command_line_serves_until_interrupted() -> None:
    """'python -m banana2_async.testing serve' prints its base URL, serves with the given key, and exits 0 on Ctrl-C."""
    process = _run_cli("serve", "--port", "0", "--api-key", "sk-cli", "--credits", "20", "--speed", "1000")
    try:
        assert process.stdout is not None
        match = re.search(r"http://127\.0\.0\.1:\d+", process.stdout.readline())
        assert match is not None
        with httpx.Client(base_url=match.group(), headers={"Authorization": "Bearer sk-cli"}) as http:
            assert http.post("/api/generate", json={"prompt": "from the cli"}).status_code == 200
            assert http.post("/api/generate", json={"prompt": "one too many"}).status_code == 402
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
    finally:
        process.kill()
        process.communicate()


def test_main_serves_until_its_stop_event_is_set(capsys: pytest.CaptureFixture[str]) -> None:
    """main() serves on the given port with the given key until stop is set, then returns 0."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    stop = threading.Event()
    answers: list[int] = []

    def use_it() -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": "Bearer sk-main"}) as http:
            for _ in range(500):
                try:
                    answers.append(http.post("/api/generate", json={"prompt": "in-process"}).status_code)
                    break
                except httpx.ConnectError:
                    time.sleep(0.01)
        stop.set()

    helper = threading.Thread(target=use_it)
    helper.start()
    try:
        assert main(["serve", "--port", str(port), "--api-key", "sk-main", "--speed", "1000"], stop=stop) == 0
    finally:
        stop.set()
        helper.join()
    assert answers == [200]
    assert f"Serving the NanoBanana 2 simulator at http://127.0.0.1:{port}" in capsys.readouterr().out


def test_main_reports_a_busy_port(capsys: pytest.CaptureFixture[str]) -> None:
    """main() returns 1 with an error message when its port is taken."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert main(["serve", "--port", str(taken.getsockname()[1])]) == 1
    assert capsys.readouterr().err.startswith("error:")


class _Peer:
    """Plays the ASGI server's side of one connection: feeds messages in, keeps what the app sends."""

    def __init__(self, *incoming: dict[str, Any]) -> None:
        self.incoming = list(incoming)
        self.sent: list[dict[str, Any]] = []

    async def receive(self) -> dict[str, Any]:
        return self.incoming.pop(0) if self.incoming else {"type": "http.disconnect"}

    async def send(self, message: Any) -> None:
        self.sent.append(dict(message))


def _scope(method: str, path: str, query: bytes = b"", *, host: bool = True) -> dict[str, Any]:
    headers = [(b"authorization", b"Bearer sk-sim-test")] + ([(b"host", b"sim.example:81")] if host else [])
    return {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": query,
        "headers": headers,
        "scheme": "http",
        "server": ("10.0.0.1", 8080),
    }


async def test_the_asgi_app_ignores_scopes_other_than_http() -> None:
    """A websocket scope gets nothing from the app, which speaks plain HTTP only."""
    peer = _Peer()
    await Simulator().asgi_app()({"type": "websocket"}, peer.receive, peer.send)
    assert peer.sent == []


async def test_a_client_that_leaves_before_its_body_arrives_gets_no_answer() -> None:
    """If the client disconnects while the body is read, nothing is handled or sent."""
    sim = Simulator()
    peer = _Peer({"type": "http.request", "body": b'{"prompt"', "more_body": True}, {"type": "http.disconnect"})
    await sim.asgi_app()(_scope("POST", "/api/generate"), peer.receive, peer.send)
    assert peer.sent == []
    assert sim.stats.count() == 0


async def test_result_urls_follow_the_host_header_or_else_the_server_address() -> None:
    """Result URLs use the Host the client called, or the server's own address when there is none."""
    sim = Simulator(speed=float("inf"))
    app = sim.asgi_app()
    assert app.simulator is sim
    created = _Peer({"type": "http.request", "body": b'{"prompt": "where"}'})
    await app(_scope("POST", "/api/generate"), created.receive, created.send)
    task_id = json.loads(created.sent[1]["body"])["data"]["task_id"]
    urls = []
    for host in (True, False):
        polled = _Peer({"type": "http.request", "body": b""})
        await app(_scope("GET", "/api/status", f"task_id={task_id}".encode(), host=host), polled.receive, polled.send)
        urls.append(json.loads(polled.sent[1]["body"])["data"]["response"][0])
    assert urls[0].startswith("http://sim.example:81/results/")
    assert urls[1].startswith("http://10.0.0.1:8080/results/")


def test_serving_without_uvicorn_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without uvicorn, starting a server raises ImportError that names the 'simulator' extra."""
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    with pytest.raises(ImportError, match=r"banana2-async\[simulator\]"):
        Simulator().serve().start()
