"""Every ```python block of README.md and docs/ runs, against a loopback simulator.

The convention, for whoever writes docs: a ```python block is a complete
program. It is run as ``__main__`` in a fresh directory, with
``BANANA2_API_KEY`` and ``BANANA2_BASE_URL`` pointing at a simulator served
on loopback, and the clients' default poll interval cut to milliseconds (the
simulator runs a thousand times faster than the API). An HTML comment on the
line before a block changes that:

- ``<!-- docs-test: pytest -->``: the block is a test module; it is run by
  pytest in a fresh directory, with the banana2 pytest plugin, and must pass.
- ``<!-- docs-test: skip (why) -->``: not run, for a fragment that cannot be
  a program; the reason is required.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

import pytest

from banana2_async._options import CLIENT_DEFAULTS
from banana2_async.testing import Simulator, SimulatorServer

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FAST_POLLS = (0.003, 0.006)

_FENCE = re.compile(r"^(?P<indent>[ \t]*)```python[^\n]*\n(?P<code>.*?)^(?P=indent)```[ \t]*$", re.S | re.M)
_MARKER = re.compile(r"<!--\s*docs-test:\s*(?P<mode>[\w-]+)\s*(?P<why>.*?)-->\s*$")


@dataclass(frozen=True)
class Example:
    """One ```python block: where it is, how it is run, its code."""

    path: Path
    line: int
    mode: str
    reason: str
    code: str

    @property
    def id(self) -> str:
        """``file:line``, the test id."""
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def _examples() -> Iterator[Example]:
    for path in SOURCES:
        if not path.exists():
            continue
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        for match in _FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            previous = next((lines[i] for i in range(line - 2, -1, -1) if lines[i].strip()), "")
            marker = _MARKER.search(previous)
            mode, reason = ("program", "") if marker is None else (marker["mode"], marker["why"].strip(" ()"))
            indent = match["indent"]
            code = "".join(
                row[len(indent) :] if row.startswith(indent) else row for row in match["code"].splitlines(True)
            )
            yield Example(path, line, mode, reason, code)


EXAMPLES = list(_examples())


def test_every_python_block_is_found() -> None:
    """The extraction sees every ```python fence of the sources: none is silently left out."""
    fences = sum(path.read_text(encoding="utf-8").count("```python") for path in SOURCES if path.exists())
    assert len(EXAMPLES) == fences
    assert {example.mode for example in EXAMPLES} <= {"program", "pytest", "skip"}
    assert all(example.reason for example in EXAMPLES if example.mode == "skip")


@pytest.fixture(scope="module")
def server() -> Iterator[SimulatorServer]:
    """One loopback simulator for the module, a thousand times faster than the API."""
    with Simulator(speed=1000, seed=11).serve() as served:
        yield served


@pytest.mark.parametrize("example", [e for e in EXAMPLES if e.mode == "program"], ids=lambda e: e.id)
def test_program_runs(
    example: Example,
    server: SimulatorServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A program block runs to its end against the loopback simulator."""
    monkeypatch.setenv("BANANA2_API_KEY", server.simulator.api_key)
    monkeypatch.setenv("BANANA2_BASE_URL", server.base_url)
    monkeypatch.chdir(tmp_path)
    # Both clients take their defaults from the one table of them.
    monkeypatch.setitem(CLIENT_DEFAULTS, "poll_interval", FAST_POLLS)
    if re.search(r"^\s*(async\s+)?def test_", example.code, re.M):
        pytest.fail(f"{example.id} defines tests: mark it <!-- docs-test: pytest --> so they run")
    logger = logging.getLogger("banana2_async")
    level, root_handlers = logger.level, list(logging.getLogger().handlers)
    code = compile(example.code, f"{example.path}:{example.line}", "exec")
    try:
        exec(code, {"__name__": "__main__"})
    finally:
        # A program may configure logging; the next one starts from the same place.
        logger.setLevel(level)
        logging.getLogger().handlers[:] = root_handlers
    capsys.readouterr()


PYTEST_EXAMPLES = [example for example in EXAMPLES if example.mode == "pytest"]


@pytest.fixture(scope="module")
def pytest_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[tuple[str, str]]]:
    """Run every pytest block in one pytest process (one start-up, not one per block); outcomes per module."""
    directory = tmp_path_factory.mktemp("docs-pytest")
    for index, example in enumerate(PYTEST_EXAMPLES):
        (directory / f"test_docs_{index}.py").write_text(example.code, encoding="utf-8")
    env = {key: value for key, value in os.environ.items() if not key.startswith(("BANANA2_", "PYTEST_"))}
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error", "--junitxml=report.xml"],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    outcomes: dict[str, list[tuple[str, str]]] = {}
    for case in ElementTree.parse(directory / "report.xml").iter("testcase"):
        problems = [child for child in case if child.tag in ("failure", "error", "skipped")]
        outcome = "passed" if not problems else f"{problems[0].tag}: {problems[0].text or problems[0].get('message')}"
        outcomes.setdefault(case.get("classname", ""), []).append((case.get("name", ""), outcome))
    return outcomes


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(PYTEST_EXAMPLES)), ids=[e.id for e in PYTEST_EXAMPLES])
def test_pytest_example_passes(index: int, pytest_run: dict[str, list[tuple[str, str]]]) -> None:
    """A pytest block, saved as a test module, passes under pytest with the banana2 plugin."""
    cases = pytest_run.get(f"test_docs_{index}", [])
    assert cases, f"{PYTEST_EXAMPLES[index].id}: pytest collected no test from this block"
    assert [outcome for _, outcome in cases] == ["passed"] * len(cases), cases
