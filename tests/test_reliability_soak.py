"""The soak at a small size: its invariants hold, and it does catch paying twice and a leak.

The long soak runs with ``nox -s soak``; these runs take seconds. Each starts
the simulator's server in a subprocess and drives its own event loop, so the
tests are plain functions parametrised over the backend.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from soak import FaultMix, SoakConfig, run_soak, verify
from soak.__main__ import main
from soak._verify import MAX_BLOCKS_PER_TASK, memory_trend

pytest.importorskip("uvicorn", reason="the soak serves the simulator over loopback")

# Faster than the soak's defaults: shorter tasks and read timeout, memory counted in blocks only.
FAST = ["--speed", "300", "--read-timeout", "0.5", "--no-tracemalloc"]
QUIET = FaultMix(server_error=0.0, drop=0.0, rate_limit=0.0, failed=0.0, slow=0.0, ambiguous=0.0)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_small_soak_holds_every_invariant(backend: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """150 tasks through every fault over loopback: the command exits 0 and every check passes."""
    report = tmp_path / "soak.json"
    status = main(
        [*FAST, "--tasks", "150", "--concurrency", "32", "--phases", "2", "--backend", backend, "--json", str(report)]
    )
    printed = capsys.readouterr()
    figures = json.loads(report.read_text(encoding="utf-8"))
    assert [check for check in figures["checks"] if not check["ok"]] == []
    assert status == 0
    assert figures["ok"] is True
    assert sum(figures["outcomes"].values()) == 150
    assert figures["tasks_created"] == 150
    assert "soak: OK" in printed.out
    assert "sk-soak-" not in printed.out + printed.err


@pytest.mark.slow
def test_retrying_uncertain_submits_is_caught_paying_twice() -> None:
    """With the client's opt-in to retry maybe-paid submits, the soak sees prompts paid twice and fails."""
    faults = dataclasses.replace(QUIET, ambiguous=0.3)
    config = SoakConfig(tasks=60, concurrency=16, phases=1, speed=300, trace_memory=False, faults=faults)
    run = run_soak(dataclasses.replace(config, retry_uncertain_submits=True))
    failed = {check.name for check in verify(run) if not check.ok}
    assert "nothing paid twice" in failed
    assert "tasks created == successful submits + uncertain" in failed


@pytest.mark.slow
def test_keeping_every_result_is_caught_as_a_leak() -> None:
    """A run that keeps every settled handle grows per task past the limit the soak judges memory by."""
    config = SoakConfig(tasks=120, concurrency=32, phases=3, speed=300, trace_memory=False, faults=QUIET)
    run = run_soak(dataclasses.replace(config, keep_results=True))
    assert memory_trend(run).blocks_per_task > MAX_BLOCKS_PER_TASK
    [memory] = [check for check in verify(run, min_tasks_for_memory=0) if check.name.startswith("memory")]
    assert not memory.ok
