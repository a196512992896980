"""Reading bodies: decoded as httpx decodes them, capped on decoded bytes a step at a time, closed when left."""

from __future__ import annotations

import contextlib
import gc
import gzip
import importlib.util
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final

import anyio
import anyio.abc
import anyio.lowlevel
import brotli  # type: ignore[import-untyped]
import httpx
import pytest
import zstandard
from _bombs import BOMBS, MIB, gzip_bomb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from banana2_async._body import (
    ACCEPT_ENCODING,
    MAX_CODINGS,
    STEP,
    BodyTooLarge,
    BodyUndecodable,
    decoded_chunks,
    read_body,
)

pytestmark = pytest.mark.anyio

# Each decoding step gives at most about a step; brotli's output buffer grows a block past its limit.
ONE_STEP: Final = 2 * STEP


CODERS: Final[dict[str, Callable[[bytes], bytes]]] = {
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "br": brotli.compress,
    "zstd": zstandard.ZstdCompressor().compress,
    "identity": bytes,
    "x-unknown": bytes,
    # Not a coding httpx knows: passed through as it is.
    "x-gzip": bytes,
}


class _Chunks(httpx.AsyncByteStream):
    """A response body that arrives in the given chunks, each after a checkpoint, as from a socket."""

    def __init__(self, body: bytes, size: int) -> None:
        self._body = memoryview(body)
        self._size = size
        self.reads = 0

    def __aiter__(self) -> _Chunks:
        return self

    async def __anext__(self) -> bytes:
        await anyio.lowlevel.checkpoint()
        start = self.reads * self._size
        if start >= len(self._body):
            raise StopAsyncIteration
        self.reads += 1
        return bytes(self._body[start : start + self._size])


def _streamed(body: bytes, coding: str | None = None, *, size: int = STEP) -> httpx.Response:
    headers = {"content-encoding": coding} if coding else {}
    return httpx.Response(200, headers=headers, stream=_Chunks(body, size))


def _encoded(data: bytes, codings: list[str]) -> bytes:
    for coding in codings:
        data = CODERS[coding](data)
    return data


Answer = Callable[[anyio.abc.SocketStream], Awaitable[None]]


@contextlib.asynccontextmanager
async def _serving(answer: Answer) -> AsyncIterator[str]:
    """A loopback HTTP/1.1 server answering every request with ``answer``; yields its base URL."""

    async def handle(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            request = b""
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream):
                while b"\r\n\r\n" not in request:
                    request += await stream.receive()
                await answer(stream)

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    async with listener, anyio.create_task_group() as group:
        group.start_soon(listener.serve, handle)
        yield f"http://127.0.0.1:{listener.extra(anyio.abc.SocketAttribute.local_port)}"
        group.cancel_scope.cancel()


def _head(length: int | None = None, **headers: str) -> bytes:
    lines = ["HTTP/1.1 200 OK", "Content-Type: application/octet-stream", "Connection: close"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.mark.parametrize(
    "codings",
    [
        ["gzip"],
        ["deflate"],
        ["br"],
        ["zstd"],
        ["identity"],
        ["x-unknown"],
        ["zstd", "gzip"],
        ["gzip", "identity", "br"],
        ["deflate", "x-unknown", "zstd"],
        ["x-gzip"],
    ],
)
@pytest.mark.parametrize("size", [1, 7, 4096, STEP])
async def test_every_coding_decodes_as_httpx_does(codings: list[str], size: int) -> None:
    """Each coding httpx decodes, and lists of them undone last first, give httpx's bytes however the body is cut."""
    data = b"".join(bytes([n]) * 300 + bytes(range(n)) for n in range(0, 256, 8))
    body = _encoded(data, codings)
    header = ", ".join(codings)
    if "zstd" not in codings or len(codings) == 1:
        # (httpx fails on zstd in a list: it feeds the finished frame once more when the body ends.)
        assert httpx.Response(200, content=body, headers={"content-encoding": header}).content == data
    assert await read_body(_streamed(body, header, size=size), limit=len(data)) == data


async def test_raw_deflate_and_codings_on_several_header_lines_decode_as_httpx_does() -> None:
    """deflate without its zlib wrapper is read as raw deflate; Content-Encoding lines combine in order."""
    data = b"raw deflate, as some servers send it" * 50
    raw = zlib.compress(data)[2:-4]
    for size in (1, 2, 3, len(raw)):
        assert await read_body(_streamed(raw, "deflate", size=size), limit=MIB) == data
    body = brotli.compress(gzip.compress(data))
    headers = [("content-encoding", "gzip"), ("content-encoding", "br")]
    assert httpx.Response(200, content=body, headers=headers).content == data
    response = httpx.Response(200, headers=headers, stream=_Chunks(body, 100))
    assert await read_body(response, limit=MIB) == data


async def test_only_the_first_gzip_member_is_read_and_what_follows_is_not_kept() -> None:
    """A second gzip member or trailing bytes are ignored, as httpx ignores them, without being held in memory."""
    body = gzip.compress(b"first") + gzip.compress(b"second")
    assert httpx.Response(200, content=body, headers={"content-encoding": "gzip"}).content == b"first"
    assert await read_body(_streamed(body, "gzip", size=3), limit=MIB) == b"first"
    trailing = _streamed(gzip.compress(b"first") + bytes(16 * MIB), "gzip")
    tracemalloc.start()
    try:
        assert await read_body(trailing, limit=MIB) == b"first"
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * MIB


async def test_zstd_frames_are_read_one_after_another() -> None:
    """Concatenated zstd frames, and a skippable frame between them, decode as httpx decodes them."""
    compressor = zstandard.ZstdCompressor()
    skippable = b"\x50\x2a\x4d\x18" + (4).to_bytes(4, "little") + b"skip"
    body = compressor.compress(b"one ") + skippable + compressor.compress(b"two")
    assert httpx.Response(200, content=body, headers={"content-encoding": "zstd"}).content == b"one two"
    for size in (1, 5, len(body)):
        assert await read_body(_streamed(body, "zstd", size=size), limit=MIB) == b"one two"


@given(data=st.binary(max_size=20_000), size=st.integers(1, 5000), coding=st.sampled_from(sorted(CODERS)))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
async def test_any_body_decodes_whole(data: bytes, size: int, coding: str) -> None:
    """Whatever the bytes and wherever the chunks end, the decoded body is the original."""
    body = _encoded(data, [coding])
    assert await read_body(_streamed(body, coding, size=size), limit=len(data)) == data


@pytest.mark.parametrize("coding", sorted(BOMBS))
async def test_a_bomb_is_stopped_one_step_past_its_cap(coding: str) -> None:
    """A body that inflates to 256 MiB raises BodyTooLarge a step past the cap, holding about the cap in memory."""
    bomb = BOMBS[coding](256)
    tracemalloc.start()
    try:
        with pytest.raises(BodyTooLarge) as caught:
            await read_body(_streamed(bomb, coding), limit=MIB)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert caught.value.limit == MIB
    assert MIB < caught.value.size <= MIB + ONE_STEP
    assert caught.value.head == bytes(1024)
    assert peak < 3 * MIB


@pytest.mark.parametrize("coding", sorted(BOMBS))
async def test_decoded_pieces_are_a_step_at_most(coding: str) -> None:
    """`decoded_chunks` hands a bomb over a step at a time, and stops at the cap."""
    sizes: list[int] = []

    async def read() -> None:
        async with contextlib.aclosing(decoded_chunks(_streamed(BOMBS[coding](64), coding), limit=4 * MIB)) as body:
            async for piece in body:
                sizes.append(len(piece))  # noqa: PERF401 - the sizes seen before the error are wanted

    with pytest.raises(BodyTooLarge):
        await read()
    assert max(sizes) <= ONE_STEP
    assert sum(sizes) <= 4 * MIB


async def test_an_intermediate_step_is_capped_too() -> None:
    """A coding whose output decodes to little (empty deflate blocks under gzip) cannot run past the cap."""
    empty_blocks = b"\x78\x01" + b"\x00\x00\x00\xff\xff" * (4 * MIB)
    body = gzip.compress(empty_blocks)
    with pytest.raises(BodyTooLarge) as caught:
        await read_body(_streamed(body, "deflate, gzip"), limit=MIB)
    assert MIB < caught.value.size <= MIB + ONE_STEP


async def test_too_many_codings_are_refused() -> None:
    """More than MAX_CODINGS codings that would be undone is BodyUndecodable before anything is read."""
    codings = ["gzip"] * (MAX_CODINGS + 1)
    stream = _Chunks(_encoded(b"x", codings), STEP)
    response = httpx.Response(200, headers={"content-encoding": ", ".join(codings)}, stream=stream)
    with pytest.raises(BodyUndecodable, match="content codings"):
        await read_body(response, limit=MIB)
    assert stream.reads == 0
    body = _encoded(b"x", ["gzip"] * MAX_CODINGS)
    assert await read_body(_streamed(body, ", ".join(["gzip"] * MAX_CODINGS)), limit=MIB) == b"x"


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "zstd"])
async def test_corrupt_data_is_undecodable_where_httpx_refuses_it(coding: str) -> None:
    """Bytes that are not the named coding raise BodyUndecodable, as httpx raises DecodingError."""
    garbage = b"this is not compressed at all, whatever the header says" * 20
    with pytest.raises(httpx.DecodingError):
        httpx.Response(200, content=garbage, headers={"content-encoding": coding})
    with pytest.raises(BodyUndecodable, match=coding):
        await read_body(_streamed(garbage, coding), limit=MIB)


async def test_a_zstd_window_over_8_mib_is_refused() -> None:
    """A zstd frame that asks for more than an 8 MiB window is BodyUndecodable; 8 MiB is read."""
    for window_log, fits in ((23, True), (24, False)):
        params = zstandard.ZstdCompressionParameters.from_level(3, window_log=window_log)
        compressor = zstandard.ZstdCompressor(compression_params=params)
        # Streamed, of no declared size: the frame asks for the whole window.
        stream = compressor.compressobj()
        body = stream.compress(b"a" * 1000) + stream.flush()
        assert zstandard.get_frame_parameters(body).window_size == 1 << window_log
        if fits:
            assert await read_body(_streamed(body, "zstd"), limit=MIB) == b"a" * 1000
        else:
            with pytest.raises(BodyUndecodable, match="zstd"):
                await read_body(_streamed(body, "zstd"), limit=MIB)


async def test_a_plain_body_is_read_raw_and_capped_with_its_head() -> None:
    """Without a coding the raw chunks are the body; past the cap, BodyTooLarge carries its first KiB."""
    body = b"<html>" + b"x" * (3 * STEP)
    assert await read_body(_streamed(body, size=1000), limit=len(body)) == body
    stream = _Chunks(body, 1000)
    with pytest.raises(BodyTooLarge) as caught:
        await read_body(httpx.Response(200, stream=stream), limit=5000)
    assert caught.value.size == 6000
    assert caught.value.head == body[:1024]
    assert stream.reads == 6


async def test_content_given_up_front_or_read_already_is_served_and_capped() -> None:
    """A response made with content (as respx makes it) or already read gives its decoded content, under the cap."""
    given_up_front = httpx.Response(200, content=gzip.compress(b"hello"), headers={"content-encoding": "gzip"})
    assert await read_body(given_up_front, limit=5) == b"hello"
    with pytest.raises(BodyTooLarge) as caught:
        await read_body(httpx.Response(200, content=b"hello"), limit=4)
    assert (caught.value.size, caught.value.head) == (5, b"hello")
    read = _streamed(b"streamed then read")
    await read.aread()
    assert await read_body(read, limit=MIB) == b"streamed then read"
    async with contextlib.aclosing(decoded_chunks(httpx.Response(200, content=b""), limit=1)) as body:
        assert [piece async for piece in body] == []


def test_accept_encoding_names_what_is_decoded() -> None:
    """ACCEPT_ENCODING lists gzip and deflate, and br and zstd where their modules are installed."""
    expected = ["gzip", "deflate"]
    expected += ["br"] if importlib.util.find_spec("brotli") or importlib.util.find_spec("brotlicffi") else []
    expected += ["zstd"] if importlib.util.find_spec("zstandard") else []
    assert ", ".join(expected) == ACCEPT_ENCODING


async def _drip_forever(stream: anyio.abc.SocketStream) -> None:
    await stream.send(_head(10 * MIB))
    while True:
        await stream.send(b"x" * 16384)
        await anyio.sleep(0.01)


@pytest.mark.parametrize("coding", [None, "gzip"])
async def test_leaving_a_real_body_early_finishes_httpx_generators(coding: str | None) -> None:
    """Past the cap on a real connection, every generator under the body is finished then (trio warns otherwise)."""

    async def answer(stream: anyio.abc.SocketStream) -> None:
        if coding is None:
            await _drip_forever(stream)
        else:
            await stream.send(_head(None, content_encoding=coding) + gzip_bomb(64))
            await anyio.sleep_forever()

    async with _serving(answer) as base_url, httpx.AsyncClient() as client:
        response = await client.send(client.build_request("GET", base_url), stream=True)
        try:
            with pytest.raises(BodyTooLarge):
                await read_body(response, limit=100_000)
        finally:
            await response.aclose()
        gc.collect()
        await anyio.sleep(0.01)


async def test_a_cancelled_read_leaves_nothing_suspended() -> None:
    """A read cancelled while the server is silent ends at once, its generators finished."""

    async def answer(stream: anyio.abc.SocketStream) -> None:
        await stream.send(_head(MIB) + b"partial")
        await anyio.sleep_forever()

    async with _serving(answer) as base_url, httpx.AsyncClient() as client:
        response = await client.send(client.build_request("GET", base_url), stream=True)
        with anyio.move_on_after(0.1) as scope:
            await read_body(response, limit=2 * MIB)
        await response.aclose()
        assert scope.cancelled_caught
        gc.collect()
        await anyio.sleep(0.01)


@pytest.mark.parametrize("coding", sorted(BOMBS))
async def test_a_bomb_over_a_real_connection_costs_about_the_cap(coding: str) -> None:
    """A 256 MiB bomb sent over loopback HTTP is stopped at a 1 MiB cap with about that much memory held."""
    bomb = BOMBS[coding](256)

    async def answer(stream: anyio.abc.SocketStream) -> None:
        await stream.send(_head(len(bomb), content_encoding=coding) + bomb)

    async with _serving(answer) as base_url, httpx.AsyncClient() as client:
        tracemalloc.start()
        try:
            response = await client.send(client.build_request("GET", base_url), stream=True)
            try:
                with pytest.raises(BodyTooLarge):
                    await read_body(response, limit=MIB)
            finally:
                await response.aclose()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < MIB + 8 * MIB
