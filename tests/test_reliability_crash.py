"""``banana2 batch`` killed with SIGKILL at three random points of one job, a fresh process each time.

The run after the third kill goes to the end: every prompt ends with its image
or is reported as uncertain (its POST may have been paid for without an
answer); no prompt is paid for twice; and the key shows in no output, log
line or journal of any of the four processes.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import anyio
import pytest

from banana2_async import GenerationRequest
from banana2_async._journal import JournalRow, read_journal
from banana2_async.cli._app import JOURNAL_NAME
from banana2_async.testing import Fault, Simulator, SimulatorServer, render_image

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")

KEY: Final = "sk-crash-3e8d1b6f90a2c574"
PROMPTS: Final = [f"crash {index:02d}: a paper boat on a flooded street" for index in range(30)]
SEED: Final = 20250321
DEADLINE: Final = 60.0


@pytest.fixture
def server() -> Iterator[SimulatorServer]:
    """A simulator in this process, so it outlives each killed command; tasks take about 0.3 s, some polls fail."""
    simulator = Simulator(api_key=KEY, speed=40, seed=SEED)
    simulator.inject(Fault.server_error(), on="status", probability=0.05)
    with simulator.serve() as running:
        yield running


def _command(server: SimulatorServer, source: Path, out: Path) -> list[str]:
    return [
        *(sys.executable, "-m", "banana2_async.cli", "-vv", "batch", str(source), "--out", str(out)),
        *("--concurrency", "4", "--poll-interval", "0.05", "--base-url", server.base_url, "--json"),
    ]


def _env() -> dict[str, str]:
    # The key travels in the environment, as a user would set it; nothing on the command line.
    return {**os.environ, "FORCE_COLOR": "", "BANANA2_API_KEY": KEY, "BANANA2_BASE_URL": ""}


def _finished(out: Path) -> int:
    return sum(1 for path in out.glob("*-0.png") if not path.name.startswith("."))


def _rows(out: Path) -> list[JournalRow]:
    rows = anyio.run(read_journal, out / JOURNAL_NAME, [GenerationRequest(prompt=prompt) for prompt in PROMPTS])
    assert rows is not None
    return rows


def _kill_when(command: list[str], out: Path, finished: int, pause: float, log: Path) -> None:
    """Start a fresh run, and SIGKILL it ``pause`` seconds after ``finished`` images are on disk."""
    with log.open("wb") as stderr, log.with_suffix(".out").open("wb") as stdout:
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr, env=_env())
        deadline = time.monotonic() + DEADLINE
        while not (out.is_dir() and _finished(out) >= finished):
            assert process.poll() is None, f"the run ended before {finished} images were done"
            assert time.monotonic() < deadline, "the run made no progress"
            time.sleep(0.005)
        time.sleep(pause)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=DEADLINE)
    assert process.returncode == -signal.SIGKILL


@pytest.mark.slow
def test_three_kills_at_random_points_then_the_job_completes_without_paying_twice(
    server: SimulatorServer, tmp_path: Path
) -> None:
    """Killed three times at seeded random points, the job then finishes: done or uncertain, each paid once."""
    sim = server.simulator
    source = tmp_path / "prompts.txt"
    source.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    command = _command(server, source, out)
    rng = random.Random(SEED)
    # Three growing numbers of finished images, and a random moment after each: mid-POST, mid-poll, mid-download.
    points = sorted(rng.sample(range(2, len(PROMPTS) - 6), 3))
    logs = [tmp_path / f"run-{number}.err" for number in range(4)]
    for number, (finished, log) in enumerate(zip(points, logs, strict=False)):
        _kill_when(command, out, finished, rng.uniform(0.0, 0.15), log)
        # A journal cut off mid-way: a row is written before its POST, so a task exists only for a row past pending.
        rows = _rows(out)
        assert sum(row.state == "succeeded" for row in rows) >= finished, f"kill {number + 1}"
        assert {task.prompt for task in sim.tasks()} <= {PROMPTS[row.index] for row in rows if row.state != "pending"}
        assert max(sim.stats.tasks_per_prompt.values()) == 1

    with logs[3].open("wb") as stderr:
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=stderr, env=_env(), timeout=DEADLINE, check=False)
    document: dict[str, Any] = json.loads(done.stdout)
    rows = _rows(out)
    uncertain = {outcome["prompt"] for outcome in document["outcomes"] if outcome["status"] == "uncertain"}

    # Every prompt is done or reported uncertain; uncertain are exactly the rows whose POST had no answer.
    assert done.returncode == (1 if uncertain else 0)
    assert uncertain == {PROMPTS[row.index] for row in rows if row.state == "submitting"}
    assert document["summary"]["uncertain"] == len(uncertain)
    assert document["summary"]["succeeded"] == len(PROMPTS) - len(uncertain)
    succeeded = [row for row in rows if row.state == "succeeded"]
    assert {PROMPTS[row.index] for row in succeeded} == set(PROMPTS) - uncertain
    for row in succeeded:
        (file,) = row.files
        assert Path(file).read_bytes() == render_image(PROMPTS[row.index], "1:1", "1k", "png")
    assert _finished(out) == len(succeeded)

    # Nothing paid twice: one task per prompt at most, one for every prompt that is not uncertain.
    paid = sim.stats.tasks_per_prompt
    assert max(paid.values()) == 1
    assert set(PROMPTS) - uncertain <= set(paid)
    assert sim.stats.credits_spent == 20 * sim.stats.tasks_created

    # The key is in no output of any run (with -vv logging), nor in the journal or the files beside it.
    outputs = [
        done.stdout,
        *(log.read_bytes() for log in logs),
        *(log.with_suffix(".out").read_bytes() for log in logs[:3]),
    ]
    assert any(b"banana2:" in output for output in outputs), "-vv logged nothing"
    for output in outputs:
        assert KEY.encode() not in output
    for path in out.iterdir():
        assert KEY.encode() not in path.read_bytes()
