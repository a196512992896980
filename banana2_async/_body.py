"""Reading a response body: decoded as httpx decodes it, the cap counted on decoded bytes as they come.

httpx decodes each raw chunk whole, so a small compressed answer may expand
to gigabytes before any cap sees a byte. Here the raw bytes are read with
``aiter_raw`` and ``Content-Encoding`` is undone step by step, every step's
output bounded (about `STEP` bytes), the cap checked after each: a body
costs about its cap plus a step in memory, whatever its compression ratio.

The codings are httpx's, as far as the installed environment can decode
them within bounds: ``identity``, ``gzip``, ``deflate`` (zlib-wrapped, else
raw deflate, as httpx falls back to), ``br`` with brotli or brotlicffi 1.2
or later, ``zstd`` with zstandard. A list of codings is undone last one
first; an unknown coding (``x-gzip`` too) is skipped, as httpx skips it. As
with httpx, only the first member of a gzip body is read, and zstd frames
are read one after another. Where this module is stricter:

- a ``br`` body is `BodyUndecodable` when the brotli installed cannot bound
  its output (before 1.2); `ACCEPT_ENCODING` then leaves ``br`` out;
- a zstd frame may ask for a window of at most 8 MiB (the limit RFC 9659
  sets for the ``zstd`` content coding);
- at most `MAX_CODINGS` codings are undone, and no step's output may pass
  the cap either: for any real body the last step's output is the largest.

A zstd body that ends inside a frame yields the bytes it held, as a gzip or
br body cut short does (httpx raises `httpx.DecodingError` for zstd only).

Besides the cap and a step, a decoder holds its window: 32 KiB for gzip and
deflate, what the stream asks for br (up to 16 MiB), up to 8 MiB for zstd.
"""

from __future__ import annotations

import contextlib
import importlib
import zlib
from collections.abc import AsyncGenerator, Callable, Iterator
from typing import Any, Final, Protocol, cast

import anyio
import httpx

__all__ = [
    "ACCEPT_ENCODING",
    "MAX_CODINGS",
    "STEP",
    "BodyTooLarge",
    "BodyUndecodable",
    "decoded_chunks",
    "read_body",
]

STEP: Final = 64 * 1024
MAX_CODINGS: Final = 4
# How much of a body's start `BodyTooLarge` keeps, for an error's excerpt.
_HEAD: Final = 1024
# brotli grows its output buffer in blocks of 32 KiB and more, and stops growing it once the
# limit is reached: a limit below the first block gives one block per call.
_BROTLI_LIMIT: Final = 16 * 1024
_ZSTD_MAX_WINDOW: Final = 8 * 1024 * 1024
# Reads of a body left early, to finish the generators under it (see `_leave`).
_PULLS: Final = 8


class BodyTooLarge(Exception):
    """The body passed its cap.

    ``size`` is how many decoded bytes had come when it did (or, past an
    intermediate coding, how many that step had made); ``head`` is the
    body's first bytes, up to a KiB.
    """

    def __init__(self, limit: int, size: int, head: bytes = b"") -> None:
        super().__init__(f"the body is larger than {limit} bytes")
        self.limit = limit
        self.size = size
        self.head = head


class BodyUndecodable(Exception):
    """The body's ``Content-Encoding`` cannot be undone: corrupt data, or a coding that cannot be bounded."""


def _optional(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _bounded_brotli() -> tuple[Any, bool]:
    """The brotli module httpx would use (brotli, else brotlicffi), and whether it bounds its output."""
    module = _optional("brotli") or _optional("brotlicffi")
    if module is None:
        return None, False
    decompressor = module.Decompressor()
    process = getattr(decompressor, "process", None) or decompressor.decompress
    try:
        process(b"", output_buffer_limit=_BROTLI_LIMIT)
    except TypeError:
        return module, False
    return module, hasattr(decompressor, "can_accept_more_data")


_brotli, _BROTLI_BOUNDED = _bounded_brotli()
_zstandard = _optional("zstandard")


class _Decoder(Protocol):
    def feed(self, data: bytes) -> Iterator[bytes]:
        """The output of ``data`` (never empty), a step at a time."""

    def finish(self) -> Iterator[bytes]:
        """The output the end of the input releases."""


class _Zlib:
    """gzip or deflate: ``decompress(data, STEP)``, then its ``unconsumed_tail`` a step at a time."""

    __slots__ = ("_coding", "_decompressor", "_fallback", "_start")

    def __init__(self, coding: str, wbits: int, fallback: int | None = None) -> None:
        self._coding = coding
        self._decompressor = zlib.decompressobj(wbits)
        # deflate: a stream whose first bytes are not a zlib header is read as raw deflate, as httpx
        # reads it. Its first two bytes are kept until both have come, for zlib to judge them.
        self._fallback = fallback
        self._start = b""

    def _step(self, data: bytes) -> bytes:
        try:
            return self._decompressor.decompress(data, STEP)
        except zlib.error as exc:
            raise BodyUndecodable(f"the {self._coding} body is corrupt: {exc}") from exc

    def feed(self, data: bytes) -> Iterator[bytes]:
        if self._decompressor.eof:
            # What follows the end of the stream (a second gzip member, stray bytes) is ignored, as
            # httpx ignores it; it is not even kept, so trailing bytes cost nothing.
            return
        if self._fallback is None:
            piece = self._step(data)
        else:
            data = self._start + data
            if len(data) < 2:
                self._start = data
                return
            fallback, self._fallback, self._start = self._fallback, None, b""
            try:
                piece = self._decompressor.decompress(data, STEP)
            except zlib.error:
                self._decompressor = zlib.decompressobj(fallback)
                piece = self._step(data)
        while True:
            if piece:
                yield piece
            tail = self._decompressor.unconsumed_tail
            if not tail:
                return
            piece = self._step(tail)

    def finish(self) -> Iterator[bytes]:
        # The tail is always drained by `feed`: what is left is the little inflate holds back.
        try:
            piece = self._decompressor.flush()
        except zlib.error as exc:  # pragma: no cover - flush does not check a stream's end
            raise BodyUndecodable(f"the {self._coding} body is corrupt: {exc}") from exc
        if piece:
            yield piece


class _Brotli:
    """br: ``process(data, output_buffer_limit=...)``, then empty calls while output still comes."""

    __slots__ = ("_decompressor", "_process")

    def __init__(self) -> None:
        self._decompressor = _brotli.Decompressor()
        # brotli's method is `process`, brotlicffi's `decompress`.
        self._process: Callable[..., bytes] = (
            getattr(self._decompressor, "process", None) or self._decompressor.decompress
        )

    def feed(self, data: bytes) -> Iterator[bytes]:
        decompressor = self._decompressor
        while True:
            try:
                piece = self._process(data, output_buffer_limit=_BROTLI_LIMIT)
            except _brotli.error as exc:
                raise BodyUndecodable(f"the br body is corrupt: {exc}") from exc
            if piece:
                yield piece
            # A call may hold output back even once the decoder takes input again: it has
            # caught up only when a call gives nothing and it does.
            if decompressor.is_finished() or (not piece and decompressor.can_accept_more_data()):
                return
            data = b""

    def finish(self) -> Iterator[bytes]:
        # Nothing is held back once `feed` returns; a body cut short is what it held (as in httpx).
        return iter(())


class _Starved(Exception):
    """Raised to a zstandard stream reader that asks for input that has not come yet."""


class _ZstdInput:
    """What a zstandard stream reader reads from: the bytes fed, then, once `ended`, its end."""

    __slots__ = ("ended", "pending")

    def __init__(self) -> None:
        self.pending = b""
        self.ended = False

    def read(self, size: int) -> bytes:
        pending = self.pending
        if pending:
            self.pending = b""
            return pending
        if self.ended:
            return b""
        # An empty read would end the stream: the reader is left instead, waiting as it was.
        # (`read1` asks for input only before it has any output, so none is lost.)
        raise _Starved


class _Zstd:
    """zstd: a stream reader's ``read1(STEP)``, which reads input only until it has output."""

    __slots__ = ("_input", "_reader")

    def __init__(self) -> None:
        self._input = _ZstdInput()
        decompressor = _zstandard.ZstdDecompressor(max_window_size=_ZSTD_MAX_WINDOW)
        self._reader = decompressor.stream_reader(self._input, read_across_frames=True)

    def feed(self, data: bytes) -> Iterator[bytes]:
        self._input.pending = data
        return self._drain()

    def finish(self) -> Iterator[bytes]:
        self._input.ended = True
        return self._drain()

    def _drain(self) -> Iterator[bytes]:
        read1 = self._reader.read1
        while True:
            try:
                piece: bytes = read1(STEP)
            except _Starved:
                return
            except _zstandard.ZstdError as exc:
                raise BodyUndecodable(f"the zstd body is corrupt: {exc}") from exc
            if not piece:
                return
            yield piece


class _Unbounded:
    """br with a brotli too old to bound its output: refused rather than decoded whole."""

    __slots__ = ()

    def __init__(self) -> None:
        raise BodyUndecodable("a br body needs brotli or brotlicffi 1.2 or later to be decoded within bounds")

    def feed(self, data: bytes) -> Iterator[bytes]:  # pragma: no cover - never made
        return iter(())

    def finish(self) -> Iterator[bytes]:  # pragma: no cover - never made
        return iter(())


def _decoders() -> dict[str, Callable[[], _Decoder]]:
    found: dict[str, Callable[[], _Decoder]] = {
        "gzip": lambda: _Zlib("gzip", zlib.MAX_WBITS | 16),
        "deflate": lambda: _Zlib("deflate", zlib.MAX_WBITS, fallback=-zlib.MAX_WBITS),
    }
    if _brotli is not None:
        found["br"] = _Brotli if _BROTLI_BOUNDED else _Unbounded
    if _zstandard is not None:
        found["zstd"] = _Zstd
    return found


_DECODERS: Final = _decoders()
# The ``Accept-Encoding`` for the codings decoded within bounds (httpx's own, where brotli is recent).
ACCEPT_ENCODING: Final = ", ".join(
    coding for coding in ("gzip", "deflate", "br", "zstd") if _DECODERS.get(coding, _Unbounded) is not _Unbounded
)


class _Chain:
    """Decoders in the order they undo a body's codings; each one's output is the next one's input."""

    __slots__ = ("_decoders", "_limit", "_made")

    def __init__(self, decoders: list[_Decoder], limit: int) -> None:
        self._decoders = decoders
        self._limit = limit
        self._made = [0] * len(decoders)

    def feed(self, data: bytes) -> Iterator[bytes]:
        return self._onward(0, self._decoders[0].feed(data))

    def finish(self) -> Iterator[bytes]:
        for index, decoder in enumerate(self._decoders):
            yield from self._onward(index, decoder.finish())

    def _onward(self, index: int, pieces: Iterator[bytes]) -> Iterator[bytes]:
        """``pieces``, the output of decoder ``index``, through the decoders after it."""
        if index + 1 == len(self._decoders):
            return pieces
        return self._into(index, pieces)

    def _into(self, index: int, pieces: Iterator[bytes]) -> Iterator[bytes]:
        after = self._decoders[index + 1]
        for piece in pieces:
            made = self._made[index] = self._made[index] + len(piece)
            if made > self._limit:
                raise BodyTooLarge(self._limit, made)
            yield from self._onward(index + 1, after.feed(piece))


def _chain_for(headers: httpx.Headers, limit: int) -> _Chain | None:
    """The decoders of a body's ``Content-Encoding``; ``None`` when its raw bytes are the body."""
    makers = [
        maker
        for coding in reversed(headers.get_list("content-encoding", split_commas=True))
        if (maker := _DECODERS.get(coding.strip().lower())) is not None
    ]
    if not makers:
        return None
    if len(makers) > MAX_CODINGS:
        raise BodyUndecodable(f"the body has {len(makers)} content codings; at most {MAX_CODINGS} are undone")
    return _Chain([make() for make in makers], limit)


class _Tally:
    """The decoded bytes of a body so far, against its cap."""

    __slots__ = ("head", "limit", "size")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self.head = b""

    def add(self, piece: bytes) -> None:
        self.size += len(piece)
        if len(self.head) < _HEAD:
            self.head += piece[:_HEAD]
        if self.size > self.limit:
            raise BodyTooLarge(self.limit, self.size, self.head[:_HEAD])


async def _leave(raw: AsyncGenerator[bytes, None]) -> None:
    """Finish ``raw``, a response's ``aiter_raw`` left before its end, with every generator under it.

    ``aclose`` alone would finish ``raw`` and leave the transport's generators
    it reads from suspended, for trio to warn about when it collects them.
    Read on in a cancelled scope, the first read that waits for the network
    raises through all of them instead; only bytes already buffered come
    first, and a stream that never waits is given up after a few reads.
    """
    try:
        with contextlib.suppress(Exception), anyio.CancelScope() as scope:
            scope.cancel()
            for _ in range(_PULLS):
                await raw.__anext__()
    finally:
        await raw.aclose()


async def decoded_chunks(response: httpx.Response, *, limit: int) -> AsyncGenerator[bytes, None]:
    """The body of ``response``, decoded, in pieces of at most about `STEP` bytes.

    Use it in ``contextlib.aclosing``: leaving it early then finishes the
    response's raw stream at once. A body with no ``Content-Encoding``
    comes in its raw chunks. A response whose content was given up front
    (``httpx.Response(200, content=...)``, as respx and MockTransport make
    them) or read already is served from that content, which httpx decoded.

    Raises:
        BodyTooLarge: The decoded bytes passed ``limit``.
        BodyUndecodable: The ``Content-Encoding`` could not be undone.
    """
    if response.is_stream_consumed:
        content = response.content
        if len(content) > limit:
            raise BodyTooLarge(limit, len(content), content[:_HEAD])
        if content:
            yield content
        return
    chain = _chain_for(response.headers, limit)
    tally = _Tally(limit)
    raw = cast("AsyncGenerator[bytes, None]", response.aiter_raw())
    ended = False
    try:
        async for chunk in raw:
            for piece in (chunk,) if chain is None else chain.feed(chunk):
                tally.add(piece)
                yield piece
        ended = True
    finally:
        if not ended:
            await _leave(raw)
    for piece in () if chain is None else chain.finish():
        tally.add(piece)
        yield piece


async def read_body(response: httpx.Response, *, limit: int) -> bytes:
    """The whole body of ``response``, decoded; see `decoded_chunks`.

    A body with no ``Content-Encoding`` is read as its raw chunks and joined
    once, the cheapest way httpx offers.

    Raises:
        BodyTooLarge: The decoded bytes passed ``limit``.
        BodyUndecodable: The ``Content-Encoding`` could not be undone.
    """
    if response.is_stream_consumed or "content-encoding" in response.headers:
        async with contextlib.aclosing(decoded_chunks(response, limit=limit)) as pieces:
            return b"".join([piece async for piece in pieces])
    chunks: list[bytes] = []
    size = 0
    raw = cast("AsyncGenerator[bytes, None]", response.aiter_raw())
    ended = False
    try:
        async for chunk in raw:
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(limit, size, b"".join([*chunks, chunk[:_HEAD]])[:_HEAD])
            chunks.append(chunk)
        ended = True
    finally:
        if not ended:
            await _leave(raw)
    return b"".join(chunks)
