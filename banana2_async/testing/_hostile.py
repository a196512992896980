"""What hostile answers are made of: compression bombs, echoed keys, values no client expects.

Pure functions over bytes and text, for the replies of the hostile faults,
and the catalogues of poisoned values to test a client against.
"""

from __future__ import annotations

import functools
import importlib
import json
import zlib
from typing import Any, Final
from urllib.parse import quote

from ._faults import MISSING, BombEncoding, EchoForm

__all__ = [
    "BOMB_PIECE",
    "EMPTY_RESPONSES",
    "MARKER",
    "POISONED_CODES",
    "POISONED_RESULT_URLS",
    "POISONED_RETRY_AFTERS",
    "POISONED_TASK_IDS",
    "echo_text",
    "inflating_body",
    "json_text",
]

BOMB_PIECE: Final = 64 * 1024
"""A compression bomb travels in pieces of this many bytes, as a socket would deliver it."""

MARKER: Final = "@@banana2-simulator-marker@@"
"""A placeholder written into an answer's JSON and replaced by text ``json.dumps`` would not write."""

POISONED_CODES: Final[tuple[Any, ...]] = (
    "\u0662\u0660\u0660",  # Arabic-Indic digits: str.isdigit() holds and int() reads 200
    "\u00b2\u2070\u2070",  # superscript digits: str.isdigit() holds, int() refuses
    "\uff12\uff10\uff10",  # fullwidth digits
    10**5000 - 1,  # 5,000 digits: past what int() and str() convert by default
    -(10**5000 - 1),
    200.0,
    200.5,
    1e308,
    True,
    False,
    None,
    "",
    "200 OK",
    [200],
    {"value": 200},
)
"""Envelope codes for `Fault.poisoned_code`: no client should read them as a plain 200."""

POISONED_RETRY_AFTERS: Final[tuple[str, ...]] = (
    "Fri, 31 Dec 99999999999 23:59:59 GMT",
    "Sat, 01 Jan 0000 00:00:00 GMT",
    "Mon, 30 Feb 2026 25:61:61 GMT",
    "Thu, 01 Jan 1970 00:00:00",
    "9" * 5000,
    "99999999999999999999",
    "1e309",
    "-1",
    "nan",
    "inf",
    "0x10",
    "soon",
    "",
)
"""``Retry-After`` values for `Fault.poisoned_retry_after`: dates no calendar holds, numbers no clock waits."""

POISONED_RESULT_URLS: Final[tuple[str, ...]] = (
    "https://example.com/\ud800.png",
    "https://example.com/a\x00b.png",
    "https://example.com/a\r\nb.png",
    "https://exa\tmple.com/x.png",
    "https://example.com:99999/x.png",
    "http://[::1/x.png",
    "https://example.com/" + "a" * 70_000 + ".png",
)
"""Result URLs for `Fault.poisoned_result_url`: a lone surrogate, control characters, no valid URL at all."""

POISONED_TASK_IDS: Final[tuple[str, ...]] = (
    "t" * 9000,
    "t" * 70_000,
    "task\x00id",
    "task\r\nid",
    "task\x7fid",
    "task\ud800id",
)
"""Task ids for `Fault.poisoned_task_id`: over the URL limits, with control characters, a lone surrogate."""

EMPTY_RESPONSES: Final[tuple[Any, ...]] = (
    MISSING,
    None,
    [],
    "",
    [""],
    ["ftp://example.com/x.png"],
    [123],
    [None],
    ["not a url"],
    {},
)
"""``response`` values for `Fault.empty_success`: a success that holds no http(s) image URL."""

# str() refuses an int of more digits than sys.set_int_max_str_digits allows, which is never below 640.
_INT_BLOCK_DIGITS: Final = 600
_INT_BLOCK: Final = 10**_INT_BLOCK_DIGITS

_PADDING: Final = b" "
_PADDING_UNIT: Final = 1 << 20
_GZIP_HEADER: Final = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
_ZLIB_HEADER: Final = b"\x78\x9c"
_BROTLI_LAST: Final = b"\x03"  # ISLAST and ISLASTEMPTY: the end of the stream
_BROTLI_STORED: Final = 1 << 16


def json_text(value: Any) -> str:
    """``value`` as JSON text, written in ASCII; an int of any length included."""
    if isinstance(value, int) and not isinstance(value, bool):
        return _int_text(value)
    return json.dumps(value, separators=(",", ":"))


def _int_text(number: int) -> str:
    if -_INT_BLOCK < number < _INT_BLOCK:
        return str(number)
    head, tail = divmod(abs(number), _INT_BLOCK)
    return ("-" if number < 0 else "") + _int_text(head) + f"{tail:0{_INT_BLOCK_DIGITS}d}"


def echo_text(key: str, form: EchoForm, *, in_json: bool) -> str:
    """``key`` written in ``form``: inside a JSON string when ``in_json``, else as it would stand in a header."""
    if form == "percent_encoded":
        return quote(key, safe="")
    if form == "unicode_escapes":
        return "".join(_unicode_escape(char) for char in key)
    if form == "some_unicode_escapes":
        return "".join(
            _unicode_escape(char) if index % 2 else _plain(char, in_json=in_json) for index, char in enumerate(key)
        )
    text = _plain(key, in_json=in_json)
    return text.replace("/", "\\/") if form == "escaped_slashes" else text


def _plain(text: str, *, in_json: bool) -> str:
    # Inside a JSON string, a quote or a backslash of the key is escaped as JSON must; nothing else is.
    return json.dumps(text, ensure_ascii=False)[1:-1] if in_json else text


def _unicode_escape(char: str) -> str:
    units = char.encode("utf-16-be", "surrogatepass")
    return "".join(f"\\u{int.from_bytes(units[i : i + 2], 'big'):04x}" for i in range(0, len(units), 2))


def inflating_body(body: bytes, encoding: BombEncoding, size: int) -> bytes:
    """``body`` behind ``size`` bytes of spaces, compressed with ``encoding``: a small answer that inflates.

    The compressed spaces are built once per (encoding, size) and kept; each
    answer then costs the compression of ``body`` alone.
    """
    head, check = _padding(encoding, size)
    if encoding in ("gzip", "deflate"):
        compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        blocks = compressor.compress(body) + compressor.flush(zlib.Z_FINISH)
        if encoding == "gzip":
            total = (size + len(body)) & 0xFFFFFFFF
            return head + blocks + zlib.crc32(body, check).to_bytes(4, "little") + total.to_bytes(4, "little")
        return head + blocks + zlib.adler32(body, check).to_bytes(4, "big")
    if encoding == "br":
        return head + _brotli_stored(body) + _BROTLI_LAST
    # zstd: a stream may hold frames one after the other; the answer is a frame of its own.
    zstandard: Any = importlib.import_module("zstandard")
    return head + bytes(zstandard.ZstdCompressor().compress(body))


@functools.lru_cache(maxsize=8)
def _padding(encoding: BombEncoding, size: int) -> tuple[bytes, int]:
    """The compressed stream of ``size`` spaces, open for more; and the checksum so far (gzip, deflate)."""
    if encoding in ("gzip", "deflate"):
        return _deflate_padding(size, gzip=encoding == "gzip")
    spaces = _PADDING * _PADDING_UNIT
    pieces: list[bytes] = []
    if encoding == "br":
        brotli: Any = _import_brotli()
        compressor = brotli.Compressor(quality=5)
        feed = getattr(compressor, "process", None) or compressor.compress
        pieces.extend(feed(spaces[: min(_PADDING_UNIT, size - start)]) for start in range(0, size, _PADDING_UNIT))
        # A flush ends on a byte boundary, where a stored meta-block may follow (RFC 7932, 9.2).
        pieces.append(compressor.flush())
        return b"".join(pieces), 0
    zstandard: Any = importlib.import_module("zstandard")
    compressor = zstandard.ZstdCompressor(level=3).compressobj()
    pieces.extend(
        compressor.compress(spaces[: min(_PADDING_UNIT, size - start)]) for start in range(0, size, _PADDING_UNIT)
    )
    pieces.append(compressor.flush())
    return b"".join(pieces), 0


def _deflate_padding(size: int, *, gzip: bool) -> tuple[bytes, int]:
    # After a full flush a compressor starts afresh: every megabyte of spaces compresses to the same
    # bytes, so they are compressed once and repeated, and another compressor's blocks may follow.
    full, rest = divmod(size, _PADDING_UNIT)
    spaces = _PADDING * _PADDING_UNIT
    blocks = _deflate_flushed(spaces) * full + (_deflate_flushed(spaces[:rest]) if rest else b"")
    checksum = zlib.crc32 if gzip else zlib.adler32
    check = 0 if gzip else 1
    for _ in range(full):
        check = checksum(spaces, check)
    check = checksum(spaces[:rest], check)
    return (_GZIP_HEADER if gzip else _ZLIB_HEADER) + blocks, check


def _deflate_flushed(data: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush(zlib.Z_FULL_FLUSH)


def _brotli_stored(data: bytes) -> bytes:
    """``data`` as uncompressed brotli meta-blocks, none of them the last (RFC 7932, 9.2)."""
    out = bytearray()
    for start in range(0, len(data), _BROTLI_STORED):
        piece = data[start : start + _BROTLI_STORED]
        # ISLAST 0, MNIBBLES 0 (four nibbles), MLEN - 1 in 16 bits, ISUNCOMPRESSED 1; zero bits to the byte.
        header = ((len(piece) - 1) << 3) | (1 << 19)
        out += header.to_bytes(3, "little") + piece
    return bytes(out)


def _import_brotli() -> Any:
    try:
        return importlib.import_module("brotli")
    except ImportError:
        return importlib.import_module("brotlicffi")
