"""The API key over real sockets: it reaches the base URL's host only, and no log line, repr or error.

Two small recording HTTP servers on loopback ports stand in for the API and
for "elsewhere": the API redirects there, and result images live there.
Whatever "elsewhere" receives is recorded and searched for the key.
"""

from __future__ import annotations

import json
import logging
import threading
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Final
from urllib.parse import parse_qs, urlsplit

import anyio
import pytest
from click.testing import CliRunner

from banana2_async import (
    AsyncBanana2,
    AuthenticationError,
    Banana2Error,
    GenerationResult,
    SubmissionUncertainError,
    TaskFailedError,
)
from banana2_async.cli._app import app
from banana2_async.testing import Fault, Simulator, SimulatorServer, render_image

pytestmark = pytest.mark.anyio

KEY: Final = "sk-secret-7c2e9f14a05b3d68e1"


@dataclass(frozen=True)
class Seen:
    """One request as a recording server received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def shows(self, secret: str) -> bool:
        """Whether ``secret`` is anywhere in the request: path, query, any header, the body."""
        text = self.path + json.dumps(self.headers) + self.body.decode("utf-8", errors="replace")
        return secret in text


Reply = tuple[int, dict[str, str], bytes]


class Recorder:
    """A threaded HTTP server on a loopback port that records each request and answers with ``respond``."""

    def __init__(self, respond: Callable[[Seen], Reply]) -> None:
        self.seen: list[Seen] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                seen = Seen(self.command, self.path, dict(self.headers.items()), self.rfile.read(length))
                recorder.seen.append(seen)
                status, headers, body = respond(seen)
                self.send_response(status)
                for name, value in {**headers, "content-length": str(len(body))}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _serve

            def log_message(self, format: str, *args: object) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        # A short poll interval, so that shutdown() returns at once rather than after half a second.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, name="recorder", daemon=True
        )

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self._server.server_address[1])

    def __enter__(self) -> Recorder:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


def _json(data: object, status: int = 200) -> Reply:
    return status, {"content-type": "application/json"}, json.dumps(data).encode()


def _elsewhere(origin: Callable[[], str]) -> Callable[[Seen], Reply]:
    """The other host: it accepts tasks, reports them done with images it serves itself."""

    def respond(seen: Seen) -> Reply:
        url = urlsplit(seen.path)
        if url.path == "/api/generate":
            return _json({"code": 200, "message": "success", "data": {"task_id": "t-1", "status": "IN_PROGRESS"}})
        if url.path == "/api/status":
            task_id = parse_qs(url.query).get("task_id", [""])[0]
            images = [f"{origin()}/results/{task_id}/0.png"]
            return _json({"code": 200, "data": {"task_id": task_id, "status": "SUCCESS", "response": images}})
        if url.path.startswith("/results/"):
            return 200, {"content-type": "image/png"}, render_image("a result", "1:1", "1k", "png")
        return _json({"code": 404, "message": "no such path"}, status=404)

    return respond


@pytest.fixture
def elsewhere() -> Iterator[Recorder]:
    """The host the API redirects to, and where result images live: it records what it gets."""
    recorder: Recorder

    def origin() -> str:
        return f"http://127.0.0.1:{recorder.port}"

    with Recorder(_elsewhere(origin)) as recorder:
        yield recorder


def _redirecting(target: Callable[[], str], code: int) -> Callable[[Seen], Reply]:
    def respond(seen: Seen) -> Reply:
        return code, {"location": f"{target()}{seen.path}"}, b""

    return respond


def _no_key_in(*texts: str) -> None:
    for text in texts:
        assert KEY not in text


def _exception_texts(exc: BaseException) -> list[str]:
    return [str(exc), repr(exc), "".join(traceback.format_exception(exc))]


@pytest.mark.parametrize(
    ("host", "code"),
    [("127.0.0.1", 301), ("localhost", 302), ("127.0.0.1", 303), ("localhost", 307), ("127.0.0.1", 308)],
)
async def test_a_redirect_to_another_loopback_port_carries_no_key(
    elsewhere: Recorder, host: str, code: int, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The API redirecting submits and polls to another port: that server never sees the key, nor does a download."""
    with (
        caplog.at_level(logging.DEBUG),
        Recorder(_redirecting(lambda: f"http://{host}:{elsewhere.port}", code)) as api,
    ):
        async with AsyncBanana2(KEY, base_url=f"http://127.0.0.1:{api.port}", poll_interval=0.01) as client:
            with anyio.fail_after(20):
                result = await client.generate("a red fox")
                paths = await client.download(result, tmp_path)
            _no_key_in(repr(client), repr(result), repr(client.http_client))

    assert [path.name for path in paths] == ["t-1-0.png"]
    assert paths[0].read_bytes().startswith(b"\x89PNG")
    # The base URL's host got the key with every request; the other port got every request, without it.
    assert {seen.headers.get("Authorization") for seen in api.seen} == {f"Bearer {KEY}"}
    assert {urlsplit(seen.path).path for seen in elsewhere.seen} == {
        "/api/generate",
        "/api/status",
        "/results/t-1/0.png",
    }
    assert [seen for seen in elsewhere.seen if seen.shows(KEY) or "authorization" in map(str.lower, seen.headers)] == []
    _no_key_in(caplog.text)


async def test_downloads_send_no_key_even_to_the_apis_own_host(tmp_path: Path) -> None:
    """Result images served by the API's own host are fetched without the Authorization header."""
    recorder: Recorder

    def origin() -> str:
        return f"http://127.0.0.1:{recorder.port}"

    with Recorder(_elsewhere(origin)) as recorder:
        async with AsyncBanana2(KEY, base_url=origin(), poll_interval=0.01) as client:
            with anyio.fail_after(20):
                result = await client.generate("a red fox")
                await client.download(result, tmp_path)
    downloads = [seen for seen in recorder.seen if seen.path.startswith("/results/")]
    assert len(downloads) == 1
    assert not downloads[0].shows(KEY)
    assert "authorization" not in map(str.lower, downloads[0].headers)


@pytest.mark.slow
async def test_a_faulty_run_over_loopback_shows_the_key_nowhere(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """Every fault at once and then a revoked key, over real sockets: no log line, repr or error shows the key."""
    # 4k tasks take 5 s (at speed 1000), so the ones submitted last are still running when the key is revoked.
    sim = Simulator(api_key=KEY, speed=1000, seed=4, latency={"1k": (8, 15), "2k": (12, 22), "4k": (5000, 5000)})
    for fault, on in (
        (Fault.server_error(), "status"),
        (Fault.drop(), "status"),
        (Fault.rate_limit(0.01), None),
        (Fault.envelope_error(500, "boom"), "status"),
        (Fault.extra_fields(), None),
    ):
        sim.inject(fault, on=on, probability=0.1)  # type: ignore[arg-type]
    sim.inject(Fault.server_error(after_create=True), probability=0.1)
    sim.inject(Fault.drop(after_create=True), probability=0.1)
    sim.inject(Fault.fail_task("blocked"), probability=0.1)
    sim.inject(Fault.slow(0.5), on="status", probability=0.05)
    texts: list[str] = []
    outcomes: list[BaseException | GenerationResult] = []
    with caplog.at_level(logging.DEBUG):
        async with sim.serve() as server, server.client(timeout=0.2, seed=2) as client:

            async def one(index: int) -> None:
                try:
                    handle = await client.submit(f"prompt {index}")
                    texts.append(repr(handle))
                    result = await handle
                    texts.append(repr(result))
                    if index % 10 == 0:
                        await client.download(result, tmp_path)
                    outcomes.append(result)
                except Banana2Error as exc:
                    outcomes.append(exc)

            with anyio.fail_after(60):
                async with anyio.create_task_group() as group:
                    for index in range(120):
                        group.start_soon(one, index)
                # The key is revoked while tasks are in flight: every pending handle fails, without showing it.
                sim.clear_faults()
                handles = [await client.submit(f"late {index}", resolution="4k") for index in range(5)]
                sim.remove_account(KEY)
                for handle in handles:
                    with pytest.raises(AuthenticationError) as refused:
                        await handle
                    outcomes.append(refused.value)
                with pytest.raises(AuthenticationError) as refused_submit:
                    await client.submit("after revocation")
                outcomes.append(refused_submit.value)
            texts += [repr(client), str(client), repr(client.statistics()), repr(server)]

    kinds = {type(outcome).__name__ for outcome in outcomes}
    assert {"GenerationResult", "TaskFailedError", "SubmissionUncertainError", "AuthenticationError"} <= kinds
    assert any(isinstance(outcome, TaskFailedError) for outcome in outcomes)
    assert any(isinstance(outcome, SubmissionUncertainError) for outcome in outcomes)
    for outcome in outcomes:
        texts += _exception_texts(outcome) if isinstance(outcome, BaseException) else [repr(outcome)]
    _no_key_in(*texts)
    assert caplog.records
    _no_key_in(caplog.text)
    _no_key_in(*(record.getMessage() + repr(record.args) for record in caplog.records))


@pytest.fixture(scope="module")
def cli_server() -> Iterator[SimulatorServer]:
    """A loopback simulator for the command line: a third of polls fail, some tasks fail, results downloadable."""
    sim = Simulator(api_key=KEY, speed=1000, seed=9)
    sim.inject(Fault.server_error(), on="status", probability=0.3)
    sim.inject(Fault.fail_task("refused by the moderation filter"), probability=0.3)
    with sim.serve() as server:
        yield server


CLI_RUNS: Final = {
    "generate": ["generate", "a red fox"],
    "generate-out": ["generate", "a red fox", "--out", "{tmp}/images"],
    "status-unknown": ["status", "no-such-task"],
    "wait-unknown": ["wait", "no-such-task"],
    "batch": ["batch", "{tmp}/prompts.txt", "--out", "{tmp}/batch"],
}


@pytest.mark.parametrize(("key_from", "as_json"), [("env", False), ("option", True), ("wrong", True)])
@pytest.mark.parametrize("run", sorted(CLI_RUNS))
def test_the_command_line_shows_the_key_nowhere(
    cli_server: SimulatorServer, run: str, key_from: str, as_json: bool, tmp_path: Path
) -> None:
    """banana2 with -vv, successes, failed tasks, 404s and a refused key: no stdout or stderr line holds the key."""
    (tmp_path / "prompts.txt").write_text("a red fox\na blue heron\na green frog\n", encoding="utf-8")
    key = KEY if key_from != "wrong" else KEY[:-4] + "beef"
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in CLI_RUNS[run]]
    # `status` polls nothing, so it takes no --poll-interval.
    polling = [] if args[0] == "status" else ["--poll-interval", "0.005"]
    args += ["--base-url", cli_server.base_url, *polling, *(["--json"] if as_json else [])]
    env = {"BANANA2_API_KEY": key if key_from != "option" else "", "BANANA2_BASE_URL": "", "FORCE_COLOR": ""}
    if key_from == "option":
        args += ["--api-key", key]
    result = CliRunner().invoke(app, ["-vv", *args], env=env, catch_exceptions=False)
    assert result.exit_code in (0, 1, 3), result.output
    assert result.exit_code == 3 or key_from != "wrong"
    for secret in (KEY, key):
        assert secret not in result.stdout
        assert secret not in result.stderr
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.name != "prompts.txt":
            assert KEY.encode() not in path.read_bytes()
