"""``gallery.html``: what a user or a server chose is escaped, nothing is fetched, and in a real browser (headless
Chromium, from ``file://``, with no network) every thumbnail is drawn and a failed row shows its error."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import zlib
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Final

import pytest
from click.testing import CliRunner

from banana2_async.cli._app import app
from banana2_async.cli._gallery import render_gallery
from banana2_async.testing import DEFAULT_API_KEY, Fault, Simulator, SimulatorServer

CHROMIUM: Final = next(
    (path for name in ("chromium", "chromium-browser", "google-chrome") if (path := shutil.which(name))), None
)
WINDOW: Final = (1280, 1000)
# The page's backgrounds: the thumbnail's, the card's, the page's. A thumbnail drawn is none of them.
BACKGROUNDS: Final = ((0xE8, 0xE6, 0xDF), (0xFF, 0xFF, 0xFF), (0xF4, 0xF3, 0xEF))


class _Page(HTMLParser):
    """Every tag of a page with its attributes, and the text of its scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.scripts.append(data)


def _parse(page: str) -> _Page:
    parser = _Page()
    parser.feed(page)
    return parser


def _record(**fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "row": 1,
        "id": None,
        "prompt": "a cat",
        "options": {"type": "text-to-image"},
        "metadata": {},
        "status": "succeeded",
        "task_id": "t-1",
        "error": None,
        "credits": 20,
        "images": [],
        "files": ["t-1-0.png"],
        "price": 20,
    }
    record.update(fields)
    return record


def test_everything_a_user_or_a_server_chose_is_escaped() -> None:
    """Prompts, ids, task ids, options, errors and file names cannot add markup, scripts or addresses to the page:
    its one script is its own, and every image and link is a relative path in the page's directory."""
    hostile = '"><script>alert(1)</script><img src=x onerror=alert(2)>'
    records = [
        _record(prompt=f"A cat {hostile}", id=hostile, task_id=f"t-{hostile}", files=['a "b" #1?.png']),
        _record(
            row=2,
            status="failed",
            prompt="<b>bold</b>",
            task_id="t-2",
            files=[],
            credits=None,
            options={"type": "edit", "images": ["https://example.com/x.png"], "aspect_ratio": hostile},
            error={"type": "TaskFailedError", "message": f"</p>{hostile}"},
        ),
    ]
    page = render_gallery(records, title=f"banana2 batch · {hostile}")
    parsed = _parse(page)
    assert [tag for tag, _ in parsed.tags].count("script") == 1
    assert "alert" not in "".join(parsed.scripts)
    assert not any(name.startswith("on") for _, attrs in parsed.tags for name in attrs)
    sources = [attrs[name] or "" for tag, attrs in parsed.tags for name in ("src", "href") if name in attrs]
    assert sources == ["a%20%22b%22%20%231%3F.png", "a%20%22b%22%20%231%3F.png"]
    assert "https://example.com" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "TaskFailedError: &lt;/p&gt;" in page
    assert "edit of 1 image" in page


def test_every_status_has_a_card_saying_why_it_has_no_image() -> None:
    """A row without an image says why in place of its thumbnail; the summary counts rows by status."""
    records = [
        _record(row=index + 1, status=status, files=[], task_id=None)
        for index, status in enumerate(("failed", "uncertain", "unsubmitted", "in_progress"))
    ]
    page = render_gallery(records, title="t")
    for why in ("no image", "not known if it was made", "not sent", "still being made"):
        assert f'<div class="empty">{why}</div>' in page
    assert "<b>4</b> rows · <b>1</b> failed · <b>1</b> uncertain · <b>1</b> unsubmitted · <b>1</b> in progress" in page


# -- in a browser ---------------------------------------------------------------------------------


def _png(data: bytes) -> tuple[int, int, list[bytearray], int]:
    """Width, height, rows of pixels and bytes per pixel of an 8-bit RGB or RGBA PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    position, chunks, header = 8, [], b""
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        body = data[position + 8 : position + 8 + length]
        position += 12 + length
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            chunks.append(body)
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert (depth, interlace, colour in (2, 6)) == (8, 0, True)
    size = 3 if colour == 2 else 4
    raw = zlib.decompress(b"".join(chunks))
    stride = width * size
    rows: list[bytearray] = []
    prior = bytearray(stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        if kind == 1:
            for x in range(size, stride):
                line[x] = (line[x] + line[x - size]) & 255
        elif kind == 2:
            line = bytearray((a + b) & 255 for a, b in zip(line, prior, strict=True))
        elif kind in (3, 4):
            for x in range(stride):
                left = line[x - size] if x >= size else 0
                if kind == 3:
                    line[x] = (line[x] + ((left + prior[x]) >> 1)) & 255
                    continue
                above, corner = prior[x], prior[x - size] if x >= size else 0
                guess = left + above - corner
                # Paeth: of left, above and corner, the nearest to the guess; on a tie, the first of them.
                nearest = min((abs(guess - value), order, value) for order, value in enumerate((left, above, corner)))
                line[x] = (line[x] + nearest[2]) & 255
        rows.append(line)
        prior = line
    return width, height, rows, size


def _mean(rows: list[bytearray], size: int, box: tuple[int, int, int, int], step: int = 3) -> tuple[float, ...]:
    left, top, width, height = box
    pixels = [
        rows[y][x * size : x * size + 3]
        for y in range(top, top + height, step)
        for x in range(left, left + width, step)
    ]
    return tuple(sum(pixel[channel] for pixel in pixels) / len(pixels) for channel in range(3))


@pytest.fixture(scope="module")
def chromium() -> str:
    """Chromium's path; the browser tests skip without it, except in CI, which installs it (.ci/run)."""
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is not installed: CI must run the browser tests (.ci/run installs it)")
        pytest.skip("Chromium is not installed")
    return CHROMIUM


def _browse(chromium: str, page: Path, profile: Path, *args: str) -> str:
    """Run headless Chromium on ``page`` from file:// with every network request sent nowhere."""
    command = [
        chromium,
        "--headless",
        "--disable-gpu",
        "--hide-scrollbars",
        "--no-first-run",
        "--disable-extensions",
        f"--user-data-dir={profile}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        "--proxy-server=http://127.0.0.1:9",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        "--virtual-time-budget=5000",
        *(["--no-sandbox"] if os.geteuid() == 0 else []),
        *args,
        page.as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


# Appended to a copy of the page: where each thumbnail is, so that the screenshot of the page can be looked at there.
_PROBE: Final = """<script>
addEventListener("load", function () {
  var boxes = [];
  document.querySelectorAll("figure img").forEach(function (image) {
    var box = image.getBoundingClientRect();
    boxes.push({src: image.getAttribute("src"),
                box: [box.left, box.top, box.width, box.height].map(Math.round)});
  });
  document.body.setAttribute("data-boxes", JSON.stringify(boxes));
});
</script>"""


@pytest.fixture(scope="module")
def server() -> Iterator[SimulatorServer]:
    """A fast simulator on loopback."""
    with Simulator(speed=200, seed=51).serve() as served:
        yield served


def _body(dom: str) -> dict[str, str | None]:
    return next(attrs for tag, attrs in _parse(dom).tags if tag == "body")


@pytest.mark.slow
def test_the_gallery_draws_every_thumbnail_from_file_without_a_network(
    chromium: str, server: SimulatorServer, tmp_path: Path
) -> None:
    """batch --gallery writes a page that headless Chromium, offline, draws with every thumbnail loaded and in
    place (the screenshot shows each image where its thumbnail is), a failed row showing its error, and no markup
    from a prompt; with an image file gone, the page says so."""
    server.simulator.inject(Fault.fail_task("content policy violation"), times=1)
    source = tmp_path / "shots.csv"
    source.write_text(
        "prompt\nthe failing one\nA koi pond <b>at night</b>\nA lighthouse at dusk\nA fox in the snow\n",
        encoding="utf-8",
    )
    out = tmp_path / "out"
    env = {"BANANA2_API_KEY": DEFAULT_API_KEY, "BANANA2_BASE_URL": server.base_url}
    result = CliRunner().invoke(
        app,
        ["batch", str(source), "--out", str(out), "--gallery", "--concurrency", "1", "--poll-interval", "0.02"],
        env=env,
        catch_exceptions=False,
    )
    assert result.exit_code == 1, result.output
    gallery = out / "gallery.html"
    page = gallery.read_text(encoding="utf-8")
    links = [attrs[name] or "" for _, attrs in _parse(page).tags for name in ("src", "href") if name in attrs]
    assert len(links) == 6
    assert not any(":" in link or link.startswith("/") for link in links)

    profile = tmp_path / "profile"
    dom = _browse(chromium, gallery, profile, "--dump-dom")
    body = _body(dom)
    assert (body["data-images-loaded"], body["data-images-missing"]) == ("3", "0")
    assert '<p class="error">TaskFailedError: content policy violation</p>' in dom
    assert "A koi pond &lt;b&gt;at night&lt;/b&gt;" in dom

    probe = out / "probe.html"
    probe.write_text(page.replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    boxes = json.loads(_body(_browse(chromium, probe, profile, "--dump-dom"))["data-boxes"] or "[]")
    probe.unlink()
    shot = tmp_path / "shot.png"
    _browse(chromium, gallery, profile, f"--screenshot={shot}")
    width, height, rows, size = _png(shot.read_bytes())
    assert (width, height) == WINDOW
    assert len(boxes) == 3
    for thumbnail in boxes:
        left, top, box_width, box_height = thumbnail["box"]
        assert box_width > 100
        assert box_height > 100
        assert top + box_height <= height, "every thumbnail fits in the window"
        inner = (left + 4, top + 4, box_width - 8, box_height - 8)
        seen = {
            tuple(rows[y][x * size : x * size + 3])
            for y in range(inner[1], inner[1] + inner[3], 5)
            for x in range(inner[0], inner[0] + inner[2], 5)
        }
        background = sum(1 for pixel in seen if pixel in BACKGROUNDS)
        assert len(seen) >= 8, "a thumbnail is drawn, not a blank or a broken-image icon"
        assert background <= len(seen) // 10
        # The very image, where its thumbnail is: the same colours on average as the file itself.
        image_width, image_height, image_rows, image_size = _png((out / thumbnail["src"]).read_bytes())
        expected = _mean(image_rows, image_size, (0, 0, image_width, image_height), step=16)
        drawn = _mean(rows, size, inner)
        assert all(abs(a - b) < 16 for a, b in zip(expected, drawn, strict=True)), (expected, drawn)

    (out / boxes[0]["src"]).unlink()
    missing = _body(_browse(chromium, gallery, profile, "--dump-dom"))
    assert (missing["data-images-loaded"], missing["data-images-missing"]) == ("2", "1")


def test_the_demo_always_writes_its_gallery(tmp_path: Path) -> None:
    """banana2 demo leaves gallery.html beside its images, one card per task, each thumbnail a file there."""
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--count", "3", "--speed", "100", "--out", str(out)], env={})
    assert result.exit_code == 0, result.output
    assert f"open {out / 'gallery.html'} in a browser" in result.stdout
    parsed = _parse((out / "gallery.html").read_text(encoding="utf-8"))
    sources = [attrs["src"] or "" for tag, attrs in parsed.tags if tag == "img"]
    assert len(sources) == 3
    assert all((out / source).is_file() for source in sources)
