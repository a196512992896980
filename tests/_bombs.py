"""Compression bombs for the tests of the body reader and of downloads: streams of zeros, never ended."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Final

import brotli  # type: ignore[import-untyped]
import zstandard

__all__ = ["BOMBS", "MIB", "brotli_bomb", "gzip_bomb", "zstd_bomb"]

MIB: Final = 1024 * 1024


def gzip_bomb(mebibytes: int, *, wbits: int = 31) -> bytes:
    """A gzip (or zlib, or raw deflate) stream of ``mebibytes`` MiB of zeros, never ended, about a KiB per MiB."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, wbits)
    zeros = bytes(MIB)
    first = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    # After a full flush nothing refers back: every further MiB of zeros compresses alike.
    again = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    return first + again * (mebibytes - 1)


def brotli_bomb(mebibytes: int) -> bytes:
    """A br stream of ``mebibytes`` MiB of zeros (a multiple of 16), never ended, about 3 KiB per 16 MiB."""
    compressor = brotli.Compressor(quality=1)
    zeros = bytes(16 * MIB)
    first: bytes = compressor.process(zeros) + compressor.flush()
    again: bytes = compressor.process(zeros) + compressor.flush()
    return first + again * (mebibytes // 16 - 1)


def zstd_bomb(mebibytes: int) -> bytes:
    """Frames of 64 MiB of zeros each, ``mebibytes`` MiB (a multiple of 64) in all, about 2 KiB a frame."""
    return zstandard.ZstdCompressor(level=1).compress(bytes(64 * MIB)) * (mebibytes // 64)


BOMBS: Final[dict[str, Callable[[int], bytes]]] = {
    "gzip": gzip_bomb,
    "deflate": lambda mebibytes: gzip_bomb(mebibytes, wbits=15),
    "br": brotli_bomb,
    "zstd": zstd_bomb,
}
