"""Result downloads: names from the content type, atomic files, retries, typed errors, no credentials sent."""

from __future__ import annotations

import contextlib
import functools
import gzip
import inspect
import math
import os
import re
import socket
import sys
import threading
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Final

import anyio
import httpx
import pytest
from _bombs import MIB, brotli_bomb, gzip_bomb, zstd_bomb
from hypothesis import given
from hypothesis import strategies as st

from banana2_async import (
    AsyncBanana2,
    Banana2,
    ConfigurationError,
    DownloadError,
    GenerationResult,
    InvalidRequestError,
    ResultExpiredError,
    TaskInfo,
)
from banana2_async._download import extension_for, safe_stem
from banana2_async._types import DEFAULT_DOWNLOAD_TIMEOUT
from banana2_async.testing import ManualClock, Simulator, render_image

pytestmark = pytest.mark.anyio

KEY = "sk-download-test-secret"
PNG = render_image("a red bicycle", "1:1", "1k", "png")
JPEG = render_image("a red bicycle", "1:1", "1k", "jpeg")


@functools.cache
def _bomb(coding: str) -> bytes:
    """1 GiB of zeros from about 1 MiB of gzip; 256 MiB from some KiB of br or zstd."""
    if coding == "gzip":
        return gzip_bomb(1024)
    if coding == "br":
        return brotli_bomb(256)
    return zstd_bomb(256)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Host

    def log_message(self, format: str, *args: object) -> None:
        """Keep the test output quiet."""

    def do_GET(self) -> None:
        host = self.server
        with host.lock:
            path = self.path.split("?", 1)[0]
            host.seen.append((path, {name.lower(): value for name, value in self.headers.items()}))
            count = sum(1 for seen, _ in host.seen if seen == path)
        route = host.routes.get(path)
        if route is None:
            self.answer(404, "text/plain", b"no such image")
        else:
            route(self, count)

    def answer(self, status: int, content_type: str | None, body: bytes, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        if content_type is not None:
            self.send_header("Content-Type", content_type)
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def cut(self, body: bytes) -> None:
        """Declare the whole body, send a tenth of it, and hang up."""
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 10])
        self.wfile.flush()
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)

    def unsized(self, body: bytes) -> None:
        """Send a body with no declared length, ended by closing the connection."""
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def drip(self, head: bytes, body: bytes) -> None:
        """Send ``head`` at once, then ``body`` a byte every half second."""
        self.wfile.write(head)
        self.wfile.flush()
        for byte in body:
            time.sleep(0.5)
            self.wfile.write(bytes([byte]))
            self.wfile.flush()
        self.close_connection = True

    def streamed(self, coding: str, body: bytes) -> None:
        """Send an encoded body of no declared length, ended by closing the connection."""
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Encoding", coding)
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def gated(self, body: bytes) -> None:
        """Send half the body, wait for the host's gate to open, then send the rest."""
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])
        self.wfile.flush()
        self.server.gate.wait(5)
        self.wfile.write(body[len(body) // 2 :])


Route = Callable[[_Handler, int], None]


def _refusal(status: int) -> Route:
    def route(handler: _Handler, count: int) -> None:
        handler.answer(status, "text/plain", b"expired")

    return route


def _redirect(location: str) -> Route:
    def route(handler: _Handler, count: int) -> None:
        handler.answer(302, "text/plain", b"", {"Location": location})

    return route


def _encoded(coding: str, body: Callable[[], bytes]) -> Route:
    def route(handler: _Handler, count: int) -> None:
        handler.answer(200, "image/png", body(), {"Content-Encoding": coding})

    return route


HEAD: Final = b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 40\r\n\r\n"


class _Host(ThreadingHTTPServer):
    """A loopback result host that records every request's headers and answers from scripted routes."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.gate = threading.Event()
        self.seen: list[tuple[str, dict[str, str]]] = []
        self.routes: dict[str, Route] = {
            "/ok.png": lambda h, n: h.answer(200, "image/png", PNG),
            "/photo.jpg": lambda h, n: h.answer(200, "image/png", PNG),
            "/photo.png": lambda h, n: h.answer(200, "image/jpeg; charset=binary", JPEG),
            "/untyped": lambda h, n: h.answer(200, "application/octet-stream", PNG),
            "/noise": lambda h, n: h.answer(200, None, b"0123456789abcdef" * 4),
            "/html": lambda h, n: h.answer(200, "text/html", b"<html>sign in</html>"),
            "/bad": lambda h, n: h.answer(400, "text/plain", b"bad"),
            "/flaky": lambda h, n: (
                h.answer(503, "text/plain", b"busy", {"Retry-After": "0"})
                if n <= 2
                else h.answer(200, "image/png", PNG)
            ),
            "/cut": lambda h, n: h.cut(PNG),
            "/cut-once": lambda h, n: h.cut(PNG) if n == 1 else h.answer(200, "image/png", PNG),
            "/big": lambda h, n: h.answer(200, "image/png", PNG),
            "/unsized": lambda h, n: h.unsized(PNG),
            "/redirect": lambda h, n: h.answer(302, "text/plain", b"", {"Location": "/ok.png"}),
            "/drip-body": lambda h, n: h.drip(HEAD, PNG[:40]),
            "/drip-head": lambda h, n: h.drip(b"", HEAD + PNG[:40]),
            "/gated": lambda h, n: h.gated(PNG) if n == 1 else h.answer(200, "image/png", PNG),
            "/gzip.png": _encoded("gzip", lambda: gzip.compress(PNG)),
            "/to-file": _redirect("file:///etc/passwd"),
            "/to-ftp": _redirect("ftp://127.0.0.1/ok.png"),
            "/to-javascript": _redirect("javascript:alert(1)"),
            "/to-bad-port": _redirect("http://127.0.0.1:99999/ok.png"),
            "/loop": _redirect("/loop"),
        }
        for status in (403, 404, 410):
            self.routes[f"/expired-{status}"] = _refusal(status)
        for coding in ("gzip", "br", "zstd"):
            self.routes[f"/bomb-{coding}"] = functools.partial(lambda c, h, n: h.streamed(c, _bomb(c)), coding)

    def handle_error(self, request: object, client_address: object) -> None:
        """Stay quiet when a client hangs up early: the tests make them."""

    @property
    def base_url(self) -> str:
        """Where the host listens."""
        return f"http://127.0.0.1:{self.server_address[1]}"

    def hits(self, path: str) -> int:
        """How many requests reached ``path``."""
        with self.lock:
            return sum(1 for seen, _ in self.seen if seen == path)


@pytest.fixture
def host() -> Iterator[_Host]:
    """A fresh recording result host on a loopback port."""
    server = _Host()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
async def client() -> AsyncIterator[AsyncBanana2]:
    """A client with a secret key and an API host that is never contacted."""
    async with AsyncBanana2(api_key=KEY, base_url="https://api.banana2.invalid") as sdk:
        yield sdk


def _result(task_id: str, *urls: str) -> GenerationResult:
    return GenerationResult.from_info(TaskInfo(task_id=task_id, status="SUCCESS", response=list(urls)))


def _names(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir()) if directory.exists() else []


async def test_files_are_named_by_task_index_and_content_type(
    client: AsyncBanana2, host: _Host, tmp_path: Path
) -> None:
    """Each image is saved as <task_id>-<n>.<ext>, the extension from the content type, never the URL path."""
    result = _result("task1", f"{host.base_url}/photo.jpg", f"{host.base_url}/photo.png?sig=abc")
    paths = await client.download(result, tmp_path / "new" / "dir")
    assert [path.name for path in paths] == ["task1-0.png", "task1-1.jpg"]
    assert paths[0].read_bytes() == PNG
    assert paths[1].read_bytes() == JPEG
    assert _names(tmp_path / "new" / "dir") == ["task1-0.png", "task1-1.jpg"]


async def test_an_untyped_answer_is_named_by_its_bytes(client: AsyncBanana2, host: _Host, tmp_path: Path) -> None:
    """application/octet-stream is named from the image's magic bytes; unknown bytes are refused."""
    (path,) = await client.download(_result("t2", f"{host.base_url}/untyped"), tmp_path)
    assert path.name == "t2-0.png"
    with pytest.raises(DownloadError, match="not an image"):
        await client.download(_result("t3", f"{host.base_url}/noise"), tmp_path)
    assert _names(tmp_path) == ["t2-0.png"]


async def test_the_api_key_never_reaches_a_result_host(host: _Host, tmp_path: Path) -> None:
    """No Authorization header reaches the result host, even from a caller's http client with auth defaults."""
    async with (
        httpx.AsyncClient(headers={"Authorization": f"Bearer {KEY}"}, auth=("user", "password")) as http,
        AsyncBanana2(api_key=KEY, base_url="https://api.banana2.invalid", http_client=http) as client,
    ):
        await client.download(_result("t4", f"{host.base_url}/ok.png", f"{host.base_url}/redirect"), tmp_path)
    requests = host.seen
    assert [path for path, _ in requests] == ["/ok.png", "/redirect", "/ok.png"]
    for _, headers in requests:
        assert "authorization" not in headers
        assert all(KEY not in value for value in headers.values())
        assert headers["user-agent"].startswith("banana2-async/")


async def test_a_download_cut_off_leaves_no_file(client: AsyncBanana2, host: _Host, tmp_path: Path) -> None:
    """A body cut short on every attempt raises DownloadError; no final file and no partial file remain."""
    with pytest.raises(DownloadError, match="after 2 attempt") as caught:
        await client.download(_result("t5", f"{host.base_url}/cut"), tmp_path, max_retries=1)
    assert not isinstance(caught.value, ResultExpiredError)
    assert caught.value.task_id == "t5"
    assert host.hits("/cut") == 2
    assert _names(tmp_path) == []


async def test_a_cut_off_download_is_retried_whole(client: AsyncBanana2, host: _Host, tmp_path: Path) -> None:
    """A body cut short once is downloaded again from the start; the file holds the whole image."""
    (path,) = await client.download(_result("t6", f"{host.base_url}/cut-once"), tmp_path)
    assert path.read_bytes() == PNG
    assert _names(tmp_path) == ["t6-0.png"]


async def test_transient_statuses_are_retried(client: AsyncBanana2, host: _Host, tmp_path: Path) -> None:
    """503s with Retry-After are retried until the image comes."""
    (path,) = await client.download(_result("t7", f"{host.base_url}/flaky"), tmp_path)
    assert path.read_bytes() == PNG
    assert host.hits("/flaky") == 3


@pytest.mark.parametrize("status", [403, 404, 410])
async def test_an_expired_url_is_a_typed_error_without_retries(
    client: AsyncBanana2, host: _Host, tmp_path: Path, status: int
) -> None:
    """403, 404 and 410 raise ResultExpiredError at once, naming the URL without its query string."""
    path = f"/expired-{status}"
    with pytest.raises(ResultExpiredError) as caught:
        await client.download(_result("t8", f"{host.base_url}{path}?signature=secret"), tmp_path)
    assert caught.value.status_code == status
    assert caught.value.url == f"{host.base_url}{path}"
    assert "secret" not in str(caught.value)
    assert host.hits(path) == 1


@pytest.mark.parametrize(("path", "message"), [("/html", "not an image"), ("/bad", "answered 400")])
async def test_definite_refusals_are_not_retried(
    client: AsyncBanana2, host: _Host, tmp_path: Path, path: str, message: str
) -> None:
    """A page that is not an image, or a 400, raises DownloadError after one request."""
    with pytest.raises(DownloadError, match=message):
        await client.download(_result("t9", f"{host.base_url}{path}"), tmp_path)
    assert host.hits(path) == 1
    assert _names(tmp_path) == []


@pytest.mark.parametrize("path", ["/big", "/unsized"])
async def test_the_size_cap_holds_declared_or_not(client: AsyncBanana2, host: _Host, tmp_path: Path, path: str) -> None:
    """An image over max_bytes is refused, whether its length is declared up front or only streamed."""
    with pytest.raises(DownloadError, match="cap of 1000 bytes"):
        await client.download(_result("t10", f"{host.base_url}{path}"), tmp_path, max_bytes=1000)
    assert _names(tmp_path) == []
    (saved,) = await client.download(_result("t10", f"{host.base_url}/unsized"), tmp_path)
    assert saved.read_bytes() == PNG


async def test_a_hostile_task_id_stays_inside_the_directory(client: AsyncBanana2, host: _Host, tmp_path: Path) -> None:
    """A task id with path separators or a leading dot cannot name a file outside dest_dir."""
    (path,) = await client.download(_result("../../etc/passwd", f"{host.base_url}/ok.png"), tmp_path / "out")
    assert path.parent == tmp_path / "out"
    assert re.fullmatch(r"______etc_passwd~[a-z2-7]{16}-0\.png", path.name)
    assert re.fullmatch(r"___~[a-z2-7]{16}", safe_stem("..."))


@contextlib.contextmanager
def _held(path: Path) -> Iterator[None]:
    """Hold ``path`` open and locked, as a download writing it does."""
    import fcntl

    with open(path, "rb") as file:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield


@pytest.mark.skipif(sys.platform == "win32", reason="a download's lock is its open file there")
async def test_stale_partial_files_of_the_image_are_removed(client: AsyncBanana2, host: _Host, tmp_path: Path) -> None:
    """A partial file nobody holds and nobody wrote to for a minute is removed once the image is complete."""
    stale = tmp_path / ".t11-0.dead0000.part"
    fresh = tmp_path / ".t11-0.live0000.part"
    held = tmp_path / ".t11-0.held0000.part"
    for path in (stale, fresh, held, tmp_path / ".t11-01.keep0000.part"):
        path.write_bytes(b"half an image")
    an_hour_ago = time.time() - 3600
    for path in (stale, held):
        os.utime(path, (an_hour_ago, an_hour_ago))
    with _held(held):
        await client.download(_result("t11", f"{host.base_url}/ok.png"), tmp_path)
    assert _names(tmp_path) == [".t11-0.held0000.part", ".t11-0.live0000.part", ".t11-01.keep0000.part", "t11-0.png"]


async def test_an_unreachable_host_is_retried_then_a_download_error(client: AsyncBanana2, tmp_path: Path) -> None:
    """A refused connection is retried, then raised as DownloadError chained to the connection error."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(DownloadError, match="after 2 attempt") as caught:
        await client.download(_result("t12", f"http://127.0.0.1:{port}/x.png"), tmp_path, max_retries=1)
    assert caught.value.__cause__ is not None


async def test_bad_arguments_and_urls(client: AsyncBanana2, tmp_path: Path) -> None:
    """Invalid limits raise InvalidRequestError; a URL that is not http(s), or a file as dest_dir, DownloadError."""
    result = _result("t13", "https://example.invalid/a.png")
    with pytest.raises(InvalidRequestError):
        await client.download(result, tmp_path, max_bytes=0)
    with pytest.raises(InvalidRequestError):
        await client.download(result, tmp_path, max_retries=-1)
    with pytest.raises(DownloadError, match="not an http"):
        await client.download(_result("t13", "ftp://example.invalid/a.png"), tmp_path)
    with pytest.raises(DownloadError, match="not a valid URL"):
        await client.download(_result("t13", "http://[::1"), tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(DownloadError, match="cannot create"):
        await client.download(result, blocker / "sub")


async def test_a_closed_client_refuses_to_download(tmp_path: Path) -> None:
    """download on a closed client raises RuntimeError."""
    client = AsyncBanana2(api_key=KEY)
    await client.aclose()
    with pytest.raises(RuntimeError):
        await client.download(_result("t14", "https://example.invalid/a.png"), tmp_path)


async def test_simulator_results_download_in_process(tmp_path: Path) -> None:
    """A task run in the in-process simulator downloads as the exact bytes of its image."""
    sim = Simulator(speed=1000, seed=5)
    async with sim.client() as client:
        result = await client.generate("a lighthouse", aspect_ratio="16:9", output_format="jpeg")
        (path,) = await client.download(result, tmp_path)
    assert path.name == f"{result.task_id}-0.jpg"
    assert path.read_bytes() == render_image("a lighthouse", "16:9", "1k", "jpeg")


async def test_an_expired_simulator_result_is_a_typed_error(tmp_path: Path) -> None:
    """Once the simulator's result_ttl has passed, downloading raises ResultExpiredError."""
    clock = ManualClock()
    sim = Simulator(speed=1000, seed=6, clock=clock, result_ttl=60)
    async with sim.client() as client:
        handle = await client.submit("short-lived")
        clock.advance(1)
        result = await handle
        clock.advance(120)
        with pytest.raises(ResultExpiredError) as caught:
            await client.download(result, tmp_path)
    assert caught.value.status_code == 403
    assert _names(tmp_path) == []


@pytest.mark.parametrize(
    ("content_type", "head", "expected"),
    [
        ("image/webp", b"", "webp"),
        ("IMAGE/JPEG; q=1", b"", "jpg"),
        ("", b"GIF89a....", "gif"),
        ("application/octet-stream", b"RIFF\x00\x00\x00\x00WEBPVP8 ", "webp"),
        (None, b"\xff\xd8\xff\xe0", "jpg"),
        ("text/plain", b"\x89PNG\r\n\x1a\n", None),
        (None, b"plain text", None),
    ],
)
def test_extension_for(content_type: str | None, head: bytes, expected: str | None) -> None:
    """The extension comes from the content type; only an untyped answer is judged by its bytes."""
    assert extension_for(content_type, head) == expected


async def test_failures_seen_through_a_custom_transport(tmp_path: Path) -> None:
    """A short body without a hang-up is retried; a local protocol error, a vanished or blocked target fail typed."""
    big = b"\x89PNG\r\n\x1a\n" + bytes(200_000)
    target = tmp_path / "out"
    calls: dict[str, int] = {}

    def answer(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        calls[path] = calls.get(path, 0) + 1
        assert "authorization" not in request.headers
        if path == "/short.png":
            return httpx.Response(200, headers={"content-length": "100", "content-type": "image/png"}, content=b"x")
        if path == "/local.png":
            raise httpx.LocalProtocolError("cannot send")
        if path == "/vanish.png":
            target.rmdir()
        return httpx.Response(200, headers={"content-type": "image/png"}, content=big)

    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http,
        AsyncBanana2(api_key=KEY, base_url="https://api.banana2.invalid", http_client=http) as client,
    ):
        (path,) = await client.download(_result("t15", "https://cdn.invalid/big.png"), target)
        assert path.read_bytes() == big
        with pytest.raises(DownloadError, match="cut short: 1 of 100 bytes"):
            await client.download(_result("t15", "https://cdn.invalid/short.png"), target, max_retries=0)
        with pytest.raises(DownloadError, match="could not be sent"):
            await client.download(_result("t15", "https://cdn.invalid/local.png"), target)
        assert calls["/local.png"] == 1
        (target / "t16-0.png").mkdir()
        with pytest.raises(DownloadError, match="cannot write"):
            await client.download(_result("t16", "https://cdn.invalid/big.png"), target)
        assert sorted(p.name for p in target.iterdir()) == ["t15-0.png", "t16-0.png"]
        (target / "t16-0.png").rmdir()
        (target / "t15-0.png").unlink()
        with pytest.raises(DownloadError, match="cannot write into"):
            await client.download(_result("t17", "https://cdn.invalid/vanish.png"), target)


@pytest.mark.parametrize("coding", ["gzip", "br", "zstd"])
async def test_a_compression_bomb_costs_about_the_cap(
    client: AsyncBanana2, host: _Host, tmp_path: Path, coding: str
) -> None:
    """A small answer that inflates far past max_bytes is stopped at the cap, holding about that much memory."""
    _bomb(coding)  # made before memory is traced
    tracemalloc.start()
    try:
        with pytest.raises(DownloadError, match="larger than the cap of 1048576 bytes") as caught:
            await client.download(_result("t20", f"{host.base_url}/bomb-{coding}"), tmp_path, max_bytes=MIB)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < MIB + 8 * MIB
    assert caught.value.status_code == 200
    assert host.hits(f"/bomb-{coding}") == 1
    assert _names(tmp_path) == []


async def test_an_encoded_image_is_saved_decoded(client: AsyncBanana2, host: _Host, tmp_path: Path) -> None:
    """A gzip-encoded image is saved as its decoded bytes; the request names only codings decoded within bounds."""
    (path,) = await client.download(_result("t21", f"{host.base_url}/gzip.png"), tmp_path, max_bytes=len(PNG))
    assert path.read_bytes() == PNG
    (_, headers) = host.seen[-1]
    assert headers["accept-encoding"] == "gzip, deflate, br, zstd"


@pytest.mark.parametrize("path", ["/drip-body", "/drip-head"])
async def test_a_dripping_host_is_a_download_error_within_the_timeout(
    client: AsyncBanana2, host: _Host, tmp_path: Path, path: str
) -> None:
    """A host that sends a byte every half second ends in DownloadError once the attempt's timeout has passed."""
    started = anyio.current_time()
    with pytest.raises(DownloadError, match=r"took more than 0\.3 s") as caught:
        await client.download(_result("t22", f"{host.base_url}{path}?sig=secret"), tmp_path, timeout=0.3)
    assert anyio.current_time() - started < 1.0
    assert "secret" not in str(caught.value)
    assert caught.value.url == f"{host.base_url}{path}"
    assert host.hits(path) == 1
    assert _names(tmp_path) == []


def test_the_blocking_client_passes_the_timeout_on(host: _Host, tmp_path: Path) -> None:
    """Banana2.download takes the same timeout, with the same default, as AsyncBanana2.download."""
    for download in (AsyncBanana2.download, Banana2.download):
        assert inspect.signature(download).parameters["timeout"].default == DEFAULT_DOWNLOAD_TIMEOUT
    with Banana2(api_key=KEY, base_url="https://api.banana2.invalid") as client:
        with pytest.raises(DownloadError, match="took more than"):
            client.download(_result("t23", f"{host.base_url}/drip-body"), tmp_path, timeout=0.2)
        with pytest.raises(InvalidRequestError):
            client.download(_result("t23", f"{host.base_url}/ok.png"), tmp_path, timeout=-1)


@pytest.mark.parametrize("value", [0, -1.0, math.nan, math.inf, "5", True, None])
async def test_a_bad_timeout_is_refused_before_any_request(
    client: AsyncBanana2, host: _Host, tmp_path: Path, value: object
) -> None:
    """timeout must be a positive, finite number of seconds; anything else is InvalidRequestError, nothing sent."""
    with pytest.raises(InvalidRequestError) as caught:
        await client.download(_result("t24", f"{host.base_url}/ok.png"), tmp_path, timeout=value)  # type: ignore[arg-type]
    assert caught.value.field == "timeout"
    assert host.seen == []


HOSTILE_URLS: Final = [
    "{base}/ok.png?sig=secret\ud800",
    "{base}/ok\x00.png?sig=secret",
    "{base}/ok.png?sig=secret\r\nX-Injected: 1",
    "{base}/ok .png?sig=secret",
    " {base}/ok.png?sig=secret",
    "{base}/ok.png?sig=secret\u2028",
    "{base}/ok.png?sig=secret\x85",
    "{base}/ok.png?sig=secret\t",
    "http://127.0.0.1:99999/ok.png?sig=secret",
    "http://127.0.0.1:0/ok.png?sig=secret",
    "http://127.0.0.1:-1/ok.png?sig=secret",
    "http://127.0.0.1:\u0663/ok.png?sig=secret",
    "http://127.0.0.1:port/ok.png?sig=secret",
    "ftp://127.0.0.1/ok.png?sig=secret",
    "file:///etc/passwd?sig=secret",
    "javascript:alert(1)//?sig=secret",
    "data:image/png;base64,iVBORw0KGgo=?sig=secret",
    "http:///ok.png?sig=secret",
    "http://xn--/ok.png?sig=secret",
    "http://[::1/ok.png?sig=secret",
]


@pytest.mark.parametrize("template", HOSTILE_URLS)
async def test_a_hostile_result_url_is_a_download_error_before_any_request(
    client: AsyncBanana2, host: _Host, tmp_path: Path, template: str
) -> None:
    """Lone surrogates, controls, whitespace, bad ports and other schemes are DownloadError, never sent or echoed."""
    url = template.format(base=host.base_url)
    with pytest.raises(DownloadError) as caught:
        await client.download(_result("t25", url), tmp_path, max_retries=0)
    assert type(caught.value) is DownloadError
    assert "secret" not in str(caught.value)
    assert "secret" not in caught.value.url
    assert host.seen == []


@pytest.mark.parametrize("path", ["/to-file", "/to-ftp", "/to-javascript", "/to-bad-port"])
async def test_a_redirect_off_http_is_a_download_error(
    client: AsyncBanana2, host: _Host, tmp_path: Path, path: str
) -> None:
    """A Location that is not an http(s) URL is a DownloadError naming the redirect, never a ConfigurationError."""
    with pytest.raises(DownloadError, match="was redirected to") as caught:
        await client.download(_result("t26", f"{host.base_url}{path}?sig=secret"), tmp_path)
    assert not isinstance(caught.value.__cause__, ConfigurationError)
    assert "secret" not in str(caught.value)
    assert host.hits(path) == 1


async def test_a_redirect_loop_is_a_download_error(host: _Host, tmp_path: Path) -> None:
    """Redirects past the http client's max_redirects end in DownloadError, after that many requests."""
    async with (
        httpx.AsyncClient(max_redirects=3) as http,
        AsyncBanana2(api_key=KEY, base_url="https://api.banana2.invalid", http_client=http) as client,
    ):
        with pytest.raises(DownloadError, match="more than 3 redirects"):
            await client.download(_result("t27", f"{host.base_url}/loop"), tmp_path)
    assert host.hits("/loop") == 4


async def test_garbled_headers_from_a_result_host_are_read_safely(tmp_path: Path) -> None:
    """A Content-Length of 5,000 digits and a Retry-After no calendar holds give typed outcomes, not ValueErrors."""
    calls: dict[str, int] = {}

    def answer(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        calls[path] = calls.get(path, 0) + 1
        if path == "/huge.png":
            return httpx.Response(200, headers={"content-type": "image/png", "content-length": "9" * 5000}, content=PNG)
        if calls[path] == 1:
            return httpx.Response(503, headers={"retry-after": "Fri, 31 Dec 99999999999 23:59:59 GMT"})
        return httpx.Response(200, headers={"content-type": "image/png"}, content=PNG)

    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http,
        AsyncBanana2(api_key=KEY, base_url="https://api.banana2.invalid", http_client=http) as client,
    ):
        with pytest.raises(DownloadError, match="declares"):
            await client.download(_result("t28", "https://cdn.invalid/huge.png"), tmp_path)
        (path,) = await client.download(_result("t28", "https://cdn.invalid/busy.png"), tmp_path)
    assert path.read_bytes() == PNG
    assert calls["/busy.png"] == 2


async def test_two_downloads_of_one_image_at_once_both_succeed(
    client: AsyncBanana2, host: _Host, tmp_path: Path
) -> None:
    """A download finishing while another of the same image is half-written leaves the other's file alone."""
    result = _result("t29", f"{host.base_url}/gated")
    paths: list[Path] = []

    async def download() -> None:
        paths.extend(await client.download(result, tmp_path))

    async with anyio.create_task_group() as group:
        group.start_soon(download)
        with anyio.fail_after(5):
            # The first download's temporary file appearing is the event waited for.
            while not any(name.endswith(".part") for name in _names(tmp_path)):  # noqa: ASYNC110
                await anyio.sleep(0.01)
        await download()
        host.gate.set()
    assert paths == [tmp_path / "t29-0.png"] * 2
    assert paths[0].read_bytes() == PNG
    assert _names(tmp_path) == ["t29-0.png"]


ID_CHARACTERS: Final = "aAzZ09_.-~/\\ :\x00\ud800\u00e9\u0130"


@pytest.mark.slow
@given(first=st.text(ID_CHARACTERS, max_size=6) | st.text(), second=st.text(ID_CHARACTERS, max_size=6) | st.text())
def test_distinct_task_ids_never_share_a_file_name(first: str, second: str) -> None:
    """safe_stem is injective, even on a disk blind to case, and its names are plain ASCII of bounded length."""
    for stem in (safe_stem(first), safe_stem(second)):
        assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,63}|[A-Za-z0-9_][A-Za-z0-9_-]{0,47}~[a-z2-7]{16}", stem)
    if first != second:
        assert safe_stem(first).lower() != safe_stem(second).lower()


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("Task1", "task1"),
        ("a/b", "a_b"),
        ("a.b", "a_b"),
        ("x" * 100, "x" * 101),
        ("\ud800", "\udc00"),
        ("\ud83d\ude00", "\U0001f600"),
        ("", "task"),
    ],
)
def test_ids_that_sanitise_alike_get_distinct_names(first: str, second: str) -> None:
    """Ids that differ only in case, in characters a file name cannot hold, or past a length keep apart."""
    assert safe_stem(first).lower() != safe_stem(second).lower()


@pytest.mark.parametrize(
    ("task_id", "stem"),
    [("n1a2b3c4d5e6f7nb2", "n1a2b3c4d5e6f7nb2"), ("task_1-2", "task_1-2"), ("t" * 64, "t" * 64)],
)
def test_a_plain_task_id_is_its_own_stem(task_id: str, stem: str) -> None:
    """An id of lower-case letters, digits, _ and - (the API's kind) names its files as it is."""
    assert safe_stem(task_id) == stem


@pytest.mark.parametrize("task_id", ["nul", "con.png", "nul.tar", "-rf", ".hidden", "COM1"])
def test_no_stem_is_a_device_name_an_option_or_hidden(task_id: str) -> None:
    """No file name is a Windows device name (before its first dot), starts with - or ., whatever the id."""
    name = f"{safe_stem(task_id)}-0.png"
    assert name.split(".", 1)[0].upper() not in {"NUL", "CON", "PRN", "AUX", "COM1", "LPT1"}
    assert not name.startswith(("-", "."))
