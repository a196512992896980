"""Result images are real PNG and JPEG files of the documented shape, decoded here independently."""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import pytest

from banana2_async._types import ASPECT_RATIOS, RESOLUTIONS
from banana2_async.testing import image_size, render_image

Pixel = tuple[int, int, int]


def _png_chunks(data: bytes) -> dict[bytes, bytes]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks: dict[bytes, bytes] = {}
    offset = 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        payload = data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])
        assert crc == zlib.crc32(kind + payload), f"bad CRC in {kind!r}"
        chunks[kind] = chunks.get(kind, b"") + payload
        offset += 12 + length
    return chunks


def _decode_png(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and RGB rows of an 8-bit truecolour PNG using filters None, Sub or Up."""
    chunks = _png_chunks(data)
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
    assert (depth, colour, interlace) == (8, 2, 0)
    raw = zlib.decompress(chunks[b"IDAT"])
    stride = 3 * width
    assert len(raw) == height * (stride + 1)
    rows: list[bytes] = []
    previous = bytes(stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        if kind == 1:
            for i in range(3, stride):
                line[i] = (line[i] + line[i - 3]) % 256
        elif kind == 2 and not any(line):
            line = bytearray(previous)
        elif kind == 2:
            line = bytearray((a + b) % 256 for a, b in zip(line, previous, strict=True))
        else:
            assert kind == 0, f"filter {kind} not expected"
        rows.append(bytes(line))
        previous = bytes(line)
    assert b"IEND" in chunks
    return width, height, rows


class _Bits:
    """Reads the entropy-coded segment of a JPEG scan, bit by bit, undoing byte stuffing."""

    def __init__(self, data: bytes) -> None:
        self.data = data.replace(b"\xff\x00", b"\xff")
        self.position = 0

    def bit(self) -> int:
        byte = self.data[self.position >> 3]
        value = (byte >> (7 - (self.position & 7))) & 1
        self.position += 1
        return value

    def bits(self, count: int) -> int:
        value = 0
        for _ in range(count):
            value = (value << 1) | self.bit()
        return value


def _huffman_table(lengths: bytes, values: bytes) -> dict[tuple[int, int], int]:
    table: dict[tuple[int, int], int] = {}
    code, index = 0, 0
    for length, count in enumerate(lengths, start=1):
        for _ in range(count):
            table[(length, code)] = values[index]
            code, index = code + 1, index + 1
        code <<= 1
    return table


def _read_symbol(bits: _Bits, table: dict[tuple[int, int], int]) -> int:
    code = 0
    for length in range(1, 17):
        code = (code << 1) | bits.bit()
        if (length, code) in table:
            return table[(length, code)]
    raise AssertionError("no Huffman code matched")


def _extend(value: int, size: int) -> int:
    return value - (1 << size) + 1 if size and value < (1 << (size - 1)) else value


def _decode_jpeg_dc(data: bytes) -> tuple[int, int, list[list[Pixel]]]:
    """Width, height and the mean RGB colour of every 8x8 block of a baseline, 4:4:4 JPEG.

    Reads the file's own quantisation and Huffman tables and decodes every
    coefficient of every block, so a malformed stream fails here.
    """
    assert data[:2] == b"\xff\xd8"
    assert data[-2:] == b"\xff\xd9"
    quant: dict[int, bytes] = {}
    dc_tables: dict[int, dict[tuple[int, int], int]] = {}
    ac_tables: dict[int, dict[tuple[int, int], int]] = {}
    components: list[tuple[int, int]] = []
    offset = 2
    while True:
        marker, length = struct.unpack(">HH", data[offset : offset + 4])
        payload = data[offset + 4 : offset + 2 + length]
        offset += 2 + length
        if marker == 0xFFDB:
            for start in range(0, len(payload), 65):
                quant[payload[start] & 0x0F] = payload[start + 1 : start + 65]
        elif marker == 0xFFC0:
            precision, height, width, count = struct.unpack(">BHHB", payload[:6])
            assert precision == 8
            for index in range(count):
                _, sampling, table = payload[6 + 3 * index : 9 + 3 * index]
                assert sampling == 0x11
                components.append((index, table))
        elif marker == 0xFFC4:
            start = 0
            while start < len(payload):
                kind, lengths = payload[start], payload[start + 1 : start + 17]
                values = payload[start + 17 : start + 17 + sum(lengths)]
                (ac_tables if kind >> 4 else dc_tables)[kind & 0x0F] = _huffman_table(lengths, values)
                start += 17 + sum(lengths)
        elif marker == 0xFFDA:
            selectors = [(payload[2 + 2 * i] >> 4, payload[2 + 2 * i] & 0x0F) for i in range(payload[0])]
            break
    bits = _Bits(data[offset:-2])
    predictors = [0] * len(components)
    blocks_x, blocks_y = -(-width // 8), -(-height // 8)
    grid: list[list[Pixel]] = []
    for _ in range(blocks_y):
        row: list[Pixel] = []
        for _ in range(blocks_x):
            means = []
            for index, table in components:
                dc_table, ac_table = selectors[index]
                size = _read_symbol(bits, dc_tables[dc_table])
                predictors[index] += _extend(bits.bits(size), size)
                position = 1
                while position < 64:
                    symbol = _read_symbol(bits, ac_tables[ac_table])
                    if symbol == 0x00:
                        break
                    bits.bits(symbol & 0x0F)
                    position += (symbol >> 4) + 1
                means.append(predictors[index] * quant[table][0] / 8 + 128)
            luma, blue, red = means
            row.append(
                (
                    round(luma + 1.402 * (red - 128)),
                    round(luma - 0.344136 * (blue - 128) - 0.714136 * (red - 128)),
                    round(luma + 1.772 * (blue - 128)),
                )
            )
        grid.append(row)
    return width, height, grid


@pytest.mark.parametrize("resolution", RESOLUTIONS)
@pytest.mark.parametrize("aspect_ratio", ASPECT_RATIOS)
def test_image_size_has_the_tier_long_side_and_the_aspect_ratio(aspect_ratio: str, resolution: str) -> None:
    """The long side is 1024/2048/4096 for 1k/2k/4k and the sides keep the aspect ratio to a pixel."""
    width, height = image_size(aspect_ratio, resolution)
    across, down = (int(part) for part in aspect_ratio.split(":"))
    assert max(width, height) == {"1k": 1024, "2k": 2048, "4k": 4096}[resolution]
    assert abs(width * down - height * across) <= max(across, down)


@pytest.mark.parametrize(("aspect_ratio", "resolution"), [("21:9", "1k"), ("2:3", "2k"), ("16:9", "4k")])
def test_png_decodes_to_the_requested_size_with_flat_tiles(aspect_ratio: str, resolution: str) -> None:
    """The PNG has valid chunks and CRCs, the requested size, and varies in colour across the picture."""
    width, height, rows = _decode_png(render_image("a harbour at dawn", aspect_ratio, resolution, "png"))
    assert (width, height) == image_size(aspect_ratio, resolution)
    assert len(rows) == height
    corners = {rows[0][:3], rows[0][-3:], rows[-1][:3], rows[-1][-3:]}
    assert len(corners) > 1


@pytest.mark.parametrize(("aspect_ratio", "resolution"), [("21:9", "1k"), ("9:16", "1k"), ("4:5", "1k")])
def test_jpeg_decodes_to_the_same_picture_as_the_png(aspect_ratio: str, resolution: str) -> None:
    """The JPEG is a valid baseline stream of the requested size whose blocks show the PNG's colours."""
    prompt = "a quiet forest"
    width, height, grid = _decode_jpeg_dc(render_image(prompt, aspect_ratio, resolution, "jpeg"))
    assert (width, height) == image_size(aspect_ratio, resolution)
    _, _, rows = _decode_png(render_image(prompt, aspect_ratio, resolution, "png"))
    for block_y in range(0, len(grid), 7):
        for block_x in range(0, len(grid[0]), 5):
            x, y = min(block_x * 8, width - 1), min(block_y * 8, height - 1)
            expected = rows[y][3 * x : 3 * x + 3]
            assert all(abs(a - b) <= 2 for a, b in zip(grid[block_y][block_x], expected, strict=True))


@pytest.mark.parametrize("resolution", ["2k", "4k"])
def test_large_jpegs_declare_their_size_and_end_cleanly(resolution: str) -> None:
    """2k and 4k JPEGs carry the tier's size in their frame header and end with EOI."""
    data = render_image("a wide valley", "16:9", resolution, "jpeg")
    frame = data.index(b"\xff\xc0")
    assert struct.unpack(">HH", data[frame + 5 : frame + 9])[::-1] == image_size("16:9", resolution)
    assert data.endswith(b"\xff\xd9")


def test_images_decode_with_pillow_when_it_is_installed() -> None:
    """Where Pillow is installed, it opens both formats at the requested size (Pillow is never required)."""
    image_module: Any = pytest.importorskip("PIL.Image")
    for fmt, name in (("png", "PNG"), ("jpeg", "JPEG")):
        image = image_module.open(io.BytesIO(render_image("p", "3:2", "1k", fmt)))
        image.load()
        assert (image.format, image.size) == (name, image_size("3:2", "1k"))


def test_images_are_deterministic_per_prompt() -> None:
    """The same prompt and options give the same bytes; another prompt gives other bytes."""
    assert render_image("a", "1:1", "1k", "png") == render_image("a", "1:1", "1k", "png")
    assert render_image("a", "1:1", "1k", "png") != render_image("b", "1:1", "1k", "png")
    render_image.cache_clear()
    assert render_image("a", "1:1", "1k", "jpeg") == render_image("a", "1:1", "1k", "jpeg")


@pytest.mark.parametrize("arguments", [("x", "7:3", "1k", "png"), ("x", "1:1", "8k", "png"), ("x", "1:1", "1k", "gif")])
def test_unknown_shapes_and_formats_are_refused(arguments: tuple[str, str, str, str]) -> None:
    """render_image raises ValueError for an unknown aspect ratio, resolution or format."""
    with pytest.raises(ValueError, match="unknown"):
        render_image(*arguments)
