"""A ``banana2 batch`` process killed with SIGKILL mid-run, then run again: every prompt done, none paid twice."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from banana2_async import GenerationRequest
from banana2_async._journal import JournalRow, read_journal
from banana2_async.cli._app import JOURNAL_NAME
from banana2_async.testing import DEFAULT_API_KEY, Fault, Simulator, SimulatorServer, render_image

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")

PROMPTS = [f"crash test {index}: a tin robot painting the sea" for index in range(24)]
_DEADLINE = 60.0


@pytest.fixture
def server() -> Iterator[SimulatorServer]:
    """A simulator in this process, so it outlives the command killed in the test; tasks take about 0.3 s."""
    with Simulator(speed=40, seed=17).serve() as running:
        yield running


def _batch(server: SimulatorServer, source: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "banana2_async.cli",
        "batch",
        str(source),
        "--out",
        str(out),
        "--concurrency",
        "3",
        "--poll-interval",
        "0.05",
        "--base-url",
        server.base_url,
        "--api-key",
        DEFAULT_API_KEY,
        "--json",
        *extra,
    ]


def _env() -> dict[str, str]:
    return {**os.environ, "FORCE_COLOR": "", "BANANA2_API_KEY": "", "BANANA2_BASE_URL": ""}


def _finished_images(out: Path) -> list[Path]:
    return [path for path in out.glob("*-0.png") if not path.name.startswith(".")]


def _rows(journal: Path) -> list[JournalRow]:
    requests = [GenerationRequest(prompt=prompt) for prompt in PROMPTS]
    rows = anyio.run(read_journal, journal, requests)
    assert rows is not None
    return rows


def _run_to_the_end(command: list[str]) -> tuple[int, dict[str, Any]]:
    done = subprocess.run(command, capture_output=True, text=True, timeout=_DEADLINE, env=_env(), check=False)
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)


@pytest.mark.slow
def test_a_killed_batch_resumes_without_paying_twice(server: SimulatorServer, tmp_path: Path) -> None:
    """SIGKILL mid-run, then the same command: every prompt gets its image, each paid for once; a row whose POST
    was cut off is reported as uncertain, not sent again, and sent only when asked."""
    sim = server.simulator
    source = tmp_path / "prompts.txt"
    source.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    command = _batch(server, source, out)

    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env())
    deadline = time.monotonic() + _DEADLINE
    while not (out.is_dir() and len(_finished_images(out)) >= 3):
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.01)
    # The next submit creates its task but its answer is held back: the kill lands while that POST is
    # unanswered, so at least one row is one whose POST may have been paid for.
    held = sim.inject(Fault.slow(_DEADLINE), on="generate", times=1)
    while held.fired == 0:
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "no submit came"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=_DEADLINE)
    assert process.returncode == -signal.SIGKILL
    assert process.stderr is not None
    process.stderr.close()

    # The journal survived the kill and shows a run cut off mid-way, where no task exists
    # for a row still pending: each row was written before its POST.
    rows = _rows(out / JOURNAL_NAME)
    states = collections.Counter(row.state for row in rows)
    assert states["succeeded"] >= 3
    assert states["pending"] > 0
    assert {task.prompt for task in sim.tasks()} <= {PROMPTS[row.index] for row in rows if row.state != "pending"}

    code, document = _run_to_the_end(command)
    uncertain = {outcome["prompt"] for outcome in document["outcomes"] if outcome["status"] == "uncertain"}
    assert uncertain == _prompts_of(_rows(out / JOURNAL_NAME), "submitting")
    assert uncertain & set(sim.stats.tasks_per_prompt), "the held POST landed and is reported as uncertain"
    assert code == 1
    assert document["summary"]["uncertain"] == len(uncertain)
    assert document["summary"]["succeeded"] == len(PROMPTS) - len(uncertain)

    # Never paid twice; every prompt is paid for once, save uncertain ones whose POST never landed.
    paid = sim.stats.tasks_per_prompt
    assert max(paid.values()) == 1
    assert set(PROMPTS) - uncertain <= set(paid)
    assert len(PROMPTS) - len(uncertain) <= sim.stats.tasks_created <= len(PROMPTS)
    _assert_every_image_whole(out, _rows(out / JOURNAL_NAME), expected=set(PROMPTS) - uncertain)

    # Asked to, the next run sends the uncertain rows again (paying again for those whose POST had landed).
    code, document = _run_to_the_end([*command, "--resubmit-uncertain"])
    assert code == 0
    assert {outcome["prompt"] for outcome in document["outcomes"]} == uncertain
    assert document["plan"]["credits"] == 20 * len(uncertain)
    _assert_every_image_whole(out, _rows(out / JOURNAL_NAME), expected=set(PROMPTS))
    assert {prompt for prompt, count in sim.stats.tasks_per_prompt.items() if count > 1} <= uncertain


def _prompts_of(rows: list[JournalRow], state: str) -> set[str]:
    return {PROMPTS[row.index] for row in rows if row.state == state}


def _assert_every_image_whole(out: Path, rows: list[JournalRow], *, expected: set[str]) -> None:
    """Each succeeded row names one file, holding exactly the image of its prompt; nothing else looks finished."""
    succeeded = [row for row in rows if row.state == "succeeded"]
    assert {PROMPTS[row.index] for row in succeeded} == expected
    named = set()
    for row in succeeded:
        (file,) = row.files
        assert Path(file).read_bytes() == render_image(PROMPTS[row.index], "1:1", "1k", "png")
        named.add(Path(file).name)
    assert {path.name for path in _finished_images(out)} == named
