"""The benchmarks, each run once at tiny sizes: they must keep working and report every figure.

No timing is asserted here: these sizes measure nothing. The figures come from
``python -m benchmarks`` (see README's Performance section).
"""

from __future__ import annotations

import json
import math

import pytest

from benchmarks._b1 import B1Config, run_b1
from benchmarks._first_poll import FirstPollConfig, run_b5
from benchmarks._hostile import HostileConfig, run_b6
from benchmarks._report import Record, machine, render_table
from benchmarks._wire import OURS_IMPORTS, WireConfig, http2_available, run_b2, run_b3, run_b4

TINY_B1 = B1Config(
    sizes=(20, 40), main_size=40, rounds=1, capacity_max=80, memory_size=40, scale=0.05, sustained_ladder=()
)
# The sustained round alone, one rung per arm: tasks 0.8 s long, 0.6 s measured.
TINY_SUSTAINED = B1Config(burst=False, scale=0.02, sustained_ladder=(40,), sustained_targets=(40, 40))
TINY_WIRE = WireConfig(
    polls_in_process=20,
    polls_loopback=10,
    poll_rounds=1,
    submits=16,
    concurrency=4,
    submit_rounds=1,
    http2_submit_rounds=1,
    imports=1,
)


TINY_HOSTILE = HostileConfig(bombs=4, bomb_size=8 << 20, drip_every=0.02, drip_deadline=0.1, pending=20, page=4096)
TINY_FIRST_POLL = FirstPollConfig(seeds=(1,), stream_minutes=2, users=(2,), warmup_minutes=0.5, loop_minutes=2, bulk=12)


def _quiet(line: str) -> None:
    """Drop the benchmarks' progress lines."""


def _check(records: list[Record], expected: list[str], *, may_be_missing: frozenset[str] = frozenset()) -> None:
    """Exactly the expected figures, each a number (a comparison also with its baseline's), and JSON-able."""
    assert [record.name for record in records] == expected
    for record in records:
        if record.name in may_be_missing:
            continue
        assert record.value is not None, record
        if "capacity" not in record.name:  # NaN: no size in the searched range kept slip under the limit
            assert math.isfinite(record.value), record
        if record.target is not None:
            assert record.met is not None, record
    json.dumps([record.as_json() for record in records], allow_nan=False)
    assert len(render_table(records).splitlines()) == len(records) + 2


@pytest.mark.slow
def test_b1_reports_every_figure() -> None:
    """B1 reports, per size, polls per task, slip, notice latency, CPU and loop lag; then memory and capacity."""
    per_size = [
        "status requests per task / ideal",
        "schedule slip p50",
        "schedule slip p99",
        "notice latency mean",
        "notice latency p99",
        "client CPU per 1,000 polls",
    ]
    expected = [f"B1 @20 {name}" for name in [*per_size, "event-loop lag p99"]]
    expected += [f"B1 @40 {name}" for name in [*per_size, "client CPU per poll, ours / baseline", "event-loop lag p99"]]
    expected += [
        "B1 @40 client memory per in-flight task",
        "B1 client memory per in-flight task, ours / baseline",
        "B1 burst capacity: largest N with slip p99 < 250 ms (scaled)",
    ]
    records = run_b1(TINY_B1, _quiet)
    _check(records, expected)
    assert all(record.baseline is not None for record in records)


def test_b1_sustained_climbs_the_ladder_with_and_without_the_learned_first_poll() -> None:
    """The sustained round runs each arm in a fresh interpreter and reports its capacity and its figures there."""
    lines: list[str] = []
    records = run_b1(TINY_SUSTAINED, lines.append)
    arms = ["learned first poll", "fixed schedule (learn_first_poll=False)"]
    figures = [
        "schedule slip p99",
        "polls later than 5 ms",
        "status requests per task",
        "status requests per task, busiest 5 s",
        "client CPU, share of one core",
    ]
    expected = []
    for arm in arms:
        expected.append(f"B1 sustained capacity, {arm}: largest N in flight with slip p99 < 5 ms (scaled)")
        expected += [f"B1 sustained @40, {arm}: {figure}" for figure in figures]
    _check(records, expected)
    assert [line.split()[2] for line in lines if line.startswith("B1 sustained")] == ["learned", "fixed"]
    for arm in arms:
        capacity = records[
            expected.index(f"B1 sustained capacity, {arm}: largest N in flight with slip p99 < 5 ms (scaled)")
        ]
        assert capacity.value == 40 or math.isnan(capacity.value or 0.0)
        assert capacity.note is not None
        assert "40: slip p99" in capacity.note
        by_name = {
            record.name.split(": ", 1)[1]: record.value or 0.0
            for record in records
            if record.name.startswith(f"B1 sustained @40, {arm}")
        }
        assert 0 <= by_name["polls later than 5 ms"] <= 100
        # Every task is polled at least once; no task is polled more often than every low interval.
        assert 0 < by_name["status requests per task"] <= 0.8 / 0.04 + 1
        assert by_name["status requests per task, busiest 5 s"] > 0
        assert by_name["client CPU, share of one core"] > 0


def test_b2_reports_in_process_and_loopback() -> None:
    """B2 reports the SDK's status poll and its ratio to raw httpx, in-process and over loopback."""
    in_process = "B2 status poll in-process (table transport)"
    loopback = "B2 status poll over loopback (simulator, uvicorn)"
    expected = [in_process, f"{in_process}, ours / raw httpx", loopback, f"{loopback}, ours / raw httpx"]
    _check(run_b2(TINY_WIRE, _quiet), expected)


def test_b3_reports_http1_and_http2() -> None:
    """B3 reports submit wall time over HTTP/1.1, and HTTP/2 where hypercorn and h2 are installed."""
    label = "B3 16 submits at concurrency 4"
    records = run_b3(TINY_WIRE, _quiet)
    expected = [f"{label}, HTTP/1.1 (uvicorn)", f"{label}, HTTP/1.1 (uvicorn), ours / raw httpx"]
    if http2_available():
        expected += [f"{label}, HTTP/2 (hypercorn, h2c)", f"{label}, HTTP/2 (hypercorn, h2c), ours / raw httpx"]
        _check(records, expected)
    else:
        _check(records, [*expected, f"{label}, HTTP/2"], may_be_missing=frozenset({f"{label}, HTTP/2"}))


@pytest.mark.slow
def test_b4_reports_every_import() -> None:
    """B4 reports each import it measures, and the first request after it, against the baseline."""
    expected = []
    for _, label, _ in OURS_IMPORTS:
        name = f"B4 {label}, import CPU"
        expected += [name, f"{name}, ours / import httpx, anyio, pydantic"]
    _check(run_b4(TINY_WIRE, _quiet), expected)


@pytest.mark.slow
def test_b6_reports_bombs_drips_and_error_pages() -> None:
    """B6 reports memory and loop lag per bomb coding installed, the time to a drip's error, and bytes per task."""
    records = run_b6(TINY_HOSTILE, _quiet)
    bombs = [record for record in records if "bombs" in record.name]
    assert bombs
    assert len(bombs) % 2 == 0
    assert [record.name for record in records[len(bombs) :]] == [
        "B6 status answer dripped a byte every 0.02 s, seconds to APITimeoutError",
        "B6 20 pending tasks after a 4 KiB 502 page, bytes per task over baseline",
    ]
    _check(records, [record.name for record in records])


def test_b5_reports_every_figure_and_sane_ones() -> None:
    """B5 reports the stream per resolution and each rate-limited run, with figures in their ranges."""
    records = run_b5(TINY_FIRST_POLL, _quiet)
    stream = ["status requests per task", "notice latency p50", "notice latency p99"]
    expected = [
        "B5 stream: status requests per task",
        "B5 stream: status requests per task, learned / fixed",
        "B5 stream: notice latency p50",
        "B5 stream: notice latency p99",
        "B5 stream: notice latency p99, learned - fixed",
        "B5 stream: tasks found done at their first poll",
    ]
    expected += [f"B5 stream {resolution}: {name}" for resolution in ("1k", "2k", "4k") for name in stream]
    for label in ("rate_limit=1, 2 users in closed loops", "rate_limit=1, batch of 12"):
        expected += [
            f"B5 {label}: tasks per minute",
            f"B5 {label}: tasks per minute, learned / fixed",
            f"B5 {label}: status requests per task",
            f"B5 {label}: notice latency p99",
        ]
    _check(records, expected)
    for record in records:
        ours, theirs = _figures(record)
        if record.unit == "polls/task":
            assert all(1 <= figure <= 60 for figure in (ours, theirs)), record
        if record.name.endswith(("p50", "p99")):
            # Never before the task finished; within a few poll intervals of it.
            assert all(0 <= figure <= 30 for figure in (ours, theirs)), record
    figures = {record.name: _figures(record) for record in records}
    # A first poll 2-3 s after the submit never finds a task done: the simulator's tasks take 6 s or more.
    learned, fixed = figures["B5 stream: tasks found done at their first poll"]
    assert fixed == 0
    assert 0 <= learned <= 100
    # At 1 request a second, each task costing a submit and a poll at least: 30 a minute at most.
    assert all(0 < tasks <= 30 for tasks in figures["B5 rate_limit=1, batch of 12: tasks per minute"])


def _figures(record: Record) -> tuple[float, float]:
    """A record's value and baseline, both there."""
    assert record.value is not None, record
    assert record.baseline is not None, record
    return record.value, record.baseline


def test_b5_runs_in_virtual_time_and_repeats_itself() -> None:
    """B5 runs in virtual time: the same config gives the very same figures again."""
    first = [record.as_json() for record in run_b5(TINY_FIRST_POLL, _quiet)]
    assert [record.as_json() for record in run_b5(TINY_FIRST_POLL, _quiet)] == first


def test_machine_names_cpu_python_and_packages() -> None:
    """The machine record names the CPU, the cores, Python and the package versions."""
    info = machine()
    assert info["cpu"]
    assert info["cores"]
    assert info["python"]
    assert {"httpx", "anyio", "pydantic", "banana2-async"} <= set(info["packages"])


@pytest.mark.parametrize("value", [math.nan, None])
def test_a_missing_value_is_null_in_json(value: float | None) -> None:
    """A figure that could not be measured is written as JSON null, never as NaN."""
    record = Record("x", value, "ms", baseline=math.nan)
    assert json.loads(json.dumps(record.as_json(), allow_nan=False))["value"] is None
