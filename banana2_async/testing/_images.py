"""Result images: real PNG and JPEG bytes, deterministic for a prompt.

The picture is a grid of flat tiles whose colours come from a hash of the
prompt. Flat tiles keep both encoders cheap without any imaging library: a
PNG row repeats the row above it (filter "Up" turns it into zeros, which zlib
squeezes away), and a JPEG block holds a DC coefficient only (every AC
coefficient is zero), so a 4096-pixel image encodes in milliseconds.
"""

from __future__ import annotations

import functools
import hashlib
import struct
import zlib
from typing import Final

from ._validation import ASPECT_RATIOS, OUTPUT_FORMATS, RESOLUTIONS

__all__ = ["LONG_SIDE", "content_type", "image_size", "render_image"]

LONG_SIDE: Final = {"1k": 1024, "2k": 2048, "4k": 4096}
_TILES_ON_LONG_SIDE: Final = 8
_CONTENT_TYPES: Final = {"png": "image/png", "jpeg": "image/jpeg"}

Tile = tuple[int, int, int]


def image_size(aspect_ratio: str, resolution: str) -> tuple[int, int]:
    """Width and height for an aspect ratio such as ``"16:9"`` at a resolution tier.

    The long side is 1024, 2048 or 4096 pixels for ``1k``, ``2k`` and ``4k``.
    """
    if aspect_ratio not in ASPECT_RATIOS:
        raise ValueError(f"unknown aspect ratio {aspect_ratio!r}")
    if resolution not in RESOLUTIONS:
        raise ValueError(f"unknown resolution {resolution!r}")
    long_side = LONG_SIDE[resolution]
    across, down = (int(part) for part in aspect_ratio.split(":"))
    if across >= down:
        return long_side, round(long_side * down / across)
    return round(long_side * across / down), long_side


def content_type(output_format: str) -> str:
    """The media type of an output format."""
    return _CONTENT_TYPES[output_format]


@functools.lru_cache(maxsize=64)
def render_image(prompt: str, aspect_ratio: str, resolution: str, output_format: str) -> bytes:
    """Encoded image bytes for a task; the same arguments give the same bytes."""
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"unknown output format {output_format!r}")
    width, height = image_size(aspect_ratio, resolution)
    tile = LONG_SIDE[resolution] // _TILES_ON_LONG_SIDE
    colours = _palette(prompt, -(-width // tile), -(-height // tile))
    if output_format == "png":
        return _png(width, height, tile, colours)
    return _jpeg(width, height, tile, colours)


def _palette(prompt: str, columns: int, rows: int) -> list[list[Tile]]:
    digest = hashlib.sha256(prompt.encode("utf-8")).digest()
    red, green, blue = digest[0], digest[1], digest[2]
    step_x, step_y = 16 + digest[3] % 48, 16 + digest[4] % 48
    return [
        [
            ((red + step_x * column) % 256, (green + step_y * row) % 256, (blue + 7 * (column + row) * digest[5]) % 256)
            for column in range(columns)
        ]
        for row in range(rows)
    ]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(width: int, height: int, tile: int, colours: list[list[Tile]]) -> bytes:
    # Level 1: the rows are nearly all zeros, so more effort buys little.
    compressor = zlib.compressobj(1)
    parts: list[bytes] = []
    # Filter type 2 ("Up"): a row equal to the one above encodes as zeros.
    repeat_row = bytes(1 + 3 * width)
    repeat_row = b"\x02" + repeat_row[1:]
    for y in range(height):
        if y % tile:
            parts.append(compressor.compress(repeat_row))
            continue
        row = bytearray(b"\x00")
        for x_tile, colour in enumerate(colours[y // tile]):
            span = min(tile, width - x_tile * tile)
            row += bytes(colour) * span
        parts.append(compressor.compress(bytes(row)))
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            _png_chunk(b"IHDR", header),
            _png_chunk(b"IDAT", b"".join(parts)),
            _png_chunk(b"IEND", b""),
        )
    )


# Baseline JPEG, 4:4:4, one quantisation table of ones: a flat 8x8 block of
# value v has the single coefficient DC = 8 * (v - 128).
_DC_BITS: Final = (0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0)  # ITU T.81 table K.3
_DC_VALUES: Final = tuple(range(12))
# The only AC symbol ever written is end-of-block, so its table has one code: "0".
_AC_BITS: Final = (1,) + (0,) * 15
_AC_VALUES: Final = (0x00,)
_EOB: Final = "0"


def _huffman_codes(bits: tuple[int, ...], values: tuple[int, ...]) -> dict[int, str]:
    codes: dict[int, str] = {}
    code = 0
    index = 0
    for length, count in enumerate(bits, start=1):
        for _ in range(count):
            codes[values[index]] = format(code, f"0{length}b")
            code += 1
            index += 1
        code <<= 1
    return codes


_DC_CODES: Final = _huffman_codes(_DC_BITS, _DC_VALUES)


def _dc_bits(difference: int) -> str:
    size = abs(difference).bit_length()
    if size == 0:
        return _DC_CODES[0]
    value = difference if difference > 0 else difference + (1 << size) - 1
    return _DC_CODES[size] + format(value, f"0{size}b")


def _ycbcr_dc(colour: Tile) -> tuple[int, int, int]:
    red, green, blue = colour
    luma = 0.299 * red + 0.587 * green + 0.114 * blue
    blue_diff = 128 - 0.168736 * red - 0.331264 * green + 0.5 * blue
    red_diff = 128 + 0.5 * red - 0.418688 * green - 0.081312 * blue
    return tuple(round(8 * (min(255.0, max(0.0, c)) - 128)) for c in (luma, blue_diff, red_diff))  # type: ignore[return-value]


def _jpeg_segment(marker: int, payload: bytes) -> bytes:
    return struct.pack(">HH", marker, len(payload) + 2) + payload


def _jpeg(width: int, height: int, tile: int, colours: list[list[Tile]]) -> bytes:
    blocks_per_tile = tile // 8
    columns = -(-width // 8)
    same_block = (_DC_CODES[0] + _EOB) * 3
    previous = (0, 0, 0)
    pieces: list[str] = []
    for block_row in range(-(-height // 8)):
        remaining = columns
        for colour in colours[block_row // blocks_per_tile]:
            count = min(blocks_per_tile, remaining)
            if count <= 0:
                break
            remaining -= count
            dc = _ycbcr_dc(colour)
            pieces.append("".join(_dc_bits(now - before) + _EOB for now, before in zip(dc, previous, strict=True)))
            pieces.append(same_block * (count - 1))
            previous = dc
    bits = "".join(pieces)
    bits += "1" * (-len(bits) % 8)
    scan = int(bits, 2).to_bytes(len(bits) // 8, "big").replace(b"\xff", b"\xff\x00")

    components = b"".join(struct.pack(">BBB", ident, 0x11, 0) for ident in (1, 2, 3))
    return b"".join(
        (
            b"\xff\xd8",
            _jpeg_segment(0xFFE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"),
            _jpeg_segment(0xFFDB, b"\x00" + b"\x01" * 64),
            _jpeg_segment(0xFFC0, struct.pack(">BHHB", 8, height, width, 3) + components),
            _jpeg_segment(0xFFC4, b"\x00" + bytes(_DC_BITS) + bytes(_DC_VALUES)),
            _jpeg_segment(0xFFC4, b"\x10" + bytes(_AC_BITS) + bytes(_AC_VALUES)),
            _jpeg_segment(0xFFDA, b"\x03" + b"".join(struct.pack(">BB", i, 0x00) for i in (1, 2, 3)) + b"\x00\x3f\x00"),
            scan,
            b"\xff\xd9",
        )
    )
