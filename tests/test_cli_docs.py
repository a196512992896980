"""The ``banana2 batch`` examples of README.md and docs/guides/bulk.md run, against a loopback simulator.

The companion of test_docs_examples.py (which runs the ```python blocks) for
the command line. An HTML comment on the line before a fenced block marks it:

- ``<!-- docs-test: batch-input NAME rows=N -->``: the block is an input file,
  saved as NAME; ``banana2 batch NAME`` must read N rows from it and run them.
- ``<!-- docs-test: manifest-line -->``: the block is a line of a manifest; it
  must have the fields a real manifest line has.
- ``<!-- docs-test: cli-session -->``: each ``banana2`` line of the block runs,
  in a directory holding the document's input files, and must exit 0.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from banana2_async.cli._app import app
from banana2_async.cli._formats import EXTENSIONS
from banana2_async.cli._manifest import STATUSES
from banana2_async.testing import DEFAULT_API_KEY, Simulator, SimulatorServer

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [ROOT / "README.md", ROOT / "docs" / "guides" / "bulk.md"]
MANIFEST_FIELDS = {
    *("row", "id", "line", "prompt", "options", "metadata", "status"),
    *("task_id", "error", "credits", "images", "files", "price"),
}

_MARKED = re.compile(
    r"^<!--\s*docs-test:\s*(?P<kind>batch-input|manifest-line|cli-session)(?P<args>[^>]*?)\s*-->\s*\n"
    r"```[\w-]*\n(?P<body>.*?)^```\s*$",
    re.S | re.M,
)


@dataclass(frozen=True)
class Block:
    """A marked block of a document."""

    path: Path
    line: int
    kind: str
    args: str
    body: str

    @property
    def id(self) -> str:
        """``file:line``, the test id."""
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def name(self) -> str:
        """The file name of an input block."""
        return self.args.split()[0]

    @property
    def rows(self) -> int:
        """The rows an input block holds."""
        found = re.search(r"rows=(\d+)", self.args)
        assert found is not None, f"{self.id}: a batch-input marker says how many rows: rows=N"
        return int(found.group(1))


def _blocks() -> Iterator[Block]:
    for path in SOURCES:
        text = path.read_text(encoding="utf-8")
        for match in _MARKED.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            yield Block(path, line, match["kind"], match["args"].strip(), match["body"])


BLOCKS = list(_blocks())


def _of(kind: str) -> list[Block]:
    return [block for block in BLOCKS if block.kind == kind]


def _format(block: Block) -> str:
    return EXTENSIONS.get(Path(block.name).suffix, "text")


def test_every_marker_is_found_and_every_format_is_shown() -> None:
    """Each docs-test marker of the documents is followed by its block; README and the guide each show every input
    format (CSV, TSV, JSON, JSON Lines, text) and the guide a manifest line and a session."""
    for path in SOURCES:
        text = path.read_text(encoding="utf-8")
        markers = len(re.findall(r"<!--\s*docs-test:\s*(batch-input|manifest-line|cli-session)", text))
        blocks = [block for block in BLOCKS if block.path == path]
        assert len(blocks) == markers, path
        assert {_format(block) for block in blocks if block.kind == "batch-input"} == {
            "csv",
            "tsv",
            "json",
            "jsonl",
            "text",
        }, path
    assert {block.path.name for block in _of("manifest-line") + _of("cli-session")} == {"bulk.md"}


@pytest.fixture(scope="module")
def server() -> Iterator[SimulatorServer]:
    """One loopback simulator for the module, fast."""
    with Simulator(speed=500, seed=61).serve() as served:
        yield served


def _run(args: list[str], server: SimulatorServer) -> tuple[int, str, str]:
    env = {"BANANA2_API_KEY": DEFAULT_API_KEY, "BANANA2_BASE_URL": server.base_url, "FORCE_COLOR": None}
    result = CliRunner().invoke(app, args, env=env, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("block", _of("batch-input"), ids=lambda block: block.id)
def test_an_input_example_runs(
    block: Block, server: SimulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An input file of the docs is read as its format with the rows it says, and every row succeeds."""
    monkeypatch.chdir(tmp_path)
    Path(block.name).write_text(block.body, encoding="utf-8")
    code, stdout, stderr = _run(["batch", block.name, "--out", "out", "--json", "--poll-interval", "0.005"], server)
    assert code == 0, stderr
    document = json.loads(stdout)
    assert document["input"]["format"] == _format(block)
    assert document["input"]["rows"] == block.rows
    assert document["summary"]["succeeded"] == block.rows


@pytest.mark.parametrize("block", _of("manifest-line"), ids=lambda block: block.id)
def test_a_manifest_example_has_the_fields_of_a_manifest(
    block: Block, server: SimulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A manifest line of the docs has exactly the fields of a line the command writes, with a status it uses."""
    monkeypatch.chdir(tmp_path)
    Path("p.txt").write_text("a prompt\n", encoding="utf-8")
    assert _run(["batch", "p.txt", "--out", "out", "--poll-interval", "0.005"], server)[0] == 0
    (written,) = [json.loads(line) for line in Path("out/manifest.jsonl").read_text(encoding="utf-8").splitlines()]
    for line in block.body.splitlines():
        shown = json.loads(line)
        assert set(shown) == set(written) == MANIFEST_FIELDS
        assert set(shown["options"]) <= {"type", "images", "aspect_ratio", "resolution", "output_format"}
        assert shown["status"] in STATUSES


@pytest.mark.parametrize("block", _of("cli-session"), ids=lambda block: block.id)
def test_a_session_example_runs(
    block: Block, server: SimulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each banana2 line of a session in the docs runs, in order, beside the document's input files, and exits 0."""
    monkeypatch.chdir(tmp_path)
    for example in _of("batch-input"):
        if example.path == block.path:
            Path(example.name).write_text(example.body, encoding="utf-8")
    commands = [line.split(" #")[0] for line in block.body.splitlines() if line.startswith("banana2 ")]
    assert commands
    for command in commands:
        code, _, stderr = _run([*shlex.split(command)[1:], "--poll-interval", "0.005"], server)
        assert code == 0, (command, stderr)
