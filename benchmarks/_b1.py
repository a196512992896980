"""B1: the shared poller at scale, against one polling coroutine per task.

Runs the rounds of `_rounds` (real time at 1,000 and 10,000 tasks, interleaved
with the baseline, the median of several at 10,000), measures memory per
in-flight task, searches the capacity, and turns it all into records.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from ._report import Record, median, ratio
from ._rounds import (
    B1Config,
    Kind,
    RoundResult,
    SustainedResult,
    calibrate_transport,
    memory_per_task,
    one_round,
    sustained_round,
)

__all__ = ["B1Config", "run_b1"]


def _capacity(
    kind: Kind, config: B1Config, calibration: float, known: dict[int, float], log: Callable[[str], None]
) -> float:
    """The largest N (doubling from the main size) whose slip p99 stays under the limit."""
    limit = config.scaled(config.slip_limit)

    def slip_at(n: int) -> float:
        if n not in known:
            result = one_round(kind, n, config, calibration)
            log(f"B1 capacity {kind} N={n:,}: slip p99 {result.slip_p99 * 1000:.0f} ms, wall {result.wall:.1f} s")
            known[n] = result.slip_p99 if not result.unresolved else math.inf
        return known[n]

    n = config.main_size
    if slip_at(n) >= limit:
        # Below the main size: halve, twice at most.
        while n > config.main_size // 4:
            n //= 2
            if slip_at(n) < limit:
                return float(n)
        return math.nan
    while n * 2 <= config.capacity_max and slip_at(n * 2) < limit:
        n *= 2
    return float(n)


def run_b1(config: B1Config, log: Callable[[str], None] = print) -> list[Record]:
    """Run B1 and return its records: the burst rounds, memory and capacity, then the sustained capacity."""
    calibration = calibrate_transport(2_000 if config.scale < 1 else 20_000)
    log(f"B1: the table transport costs {calibration * 1e6:.1f} us CPU per answer (subtracted)")
    records = _burst(config, calibration, log) if config.burst else []
    if config.sustained_ladder:
        records += _sustained_records(config, calibration, log)
    return records


def _burst(config: B1Config, calibration: float, log: Callable[[str], None]) -> list[Record]:
    """The burst rounds (N tasks of 5-15 s registered at once), memory, and the burst capacity."""
    rounds: dict[tuple[Kind, int], list[RoundResult]] = {}
    for n in config.sizes:
        count = config.rounds if n == config.main_size else 1
        for round_number in range(count):
            # Interleaved, alternating who goes first, so drift in the machine's load hits both.
            order: tuple[Kind, Kind] = ("sdk", "baseline") if round_number % 2 == 0 else ("baseline", "sdk")
            for kind in order:
                result = one_round(kind, n, config, calibration)
                rounds.setdefault((kind, n), []).append(result)
                log(
                    f"B1 {kind:8} N={n:>7,} round {round_number + 1}: polls/ideal {result.polls_vs_ideal:.4f} "
                    f"slip p99 {result.slip_p99 * 1000:.1f} ms, notice {result.notice_mean:.3f}/"
                    f"{result.notice_p99:.3f} s, cpu {result.cpu_per_1000 * 1000:.1f} ms/1000 polls, "
                    f"lag p99 {result.lag_p99 * 1000:.1f} ms, wall {result.wall:.1f} s, "
                    f"unresolved {result.unresolved}, mirror errors {result.mirror_errors}"
                )

    records: list[Record] = []
    for n in config.sizes:
        records += _figures(n, n == config.main_size, rounds, config)
        mirror = sum(result.mirror_errors for result in rounds[("sdk", n)])
        polls = sum(result.polls for result in rounds[("sdk", n)])
        if mirror > polls / 1000:
            log(f"B1 N={n:,}: {mirror:,} of {polls:,} polls came early by the mirrored schedule: slip figures suspect")

    memory_ours = memory_per_task("sdk", config.memory_size, config)
    memory_theirs = memory_per_task("baseline", config.memory_size, config)
    log(f"B1 memory @{config.memory_size:,}: sdk {memory_ours:.0f} B/task, baseline {memory_theirs:.0f} B/task")
    records.append(
        Record(
            f"B1 @{config.memory_size:,} client memory per in-flight task",
            memory_ours,
            "B",
            "<= 1024 B",
            memory_ours <= 1024,
            memory_theirs,
        )
    )
    memory_ratio = ratio(memory_ours, memory_theirs)
    records.append(
        Record(
            "B1 client memory per in-flight task, ours / baseline",
            memory_ratio,
            "x",
            "<= 0.3x",
            memory_ratio <= 0.3,
            1.0,
        )
    )

    known = {
        kind: {config.main_size: median(result.slip_p99 for result in rounds[(kind, config.main_size)])}
        for kind in ("sdk", "baseline")
    }
    capacity_ours = _capacity("sdk", config, calibration, known["sdk"], log)
    capacity_theirs = _capacity("baseline", config, calibration, known["baseline"], log)
    target_capacity = 2 * config.main_size
    records.append(
        Record(
            "B1 burst capacity: largest N with slip p99 < 250 ms" + (" (scaled)" if config.scale != 1 else ""),
            capacity_ours,
            "tasks",
            f">= {target_capacity:,}",
            capacity_ours >= target_capacity,
            capacity_theirs,
        )
    )
    return records


_ARMS: dict[bool, str] = {True: "learned first poll", False: "fixed schedule (learn_first_poll=False)"}


def _ladder(
    config: B1Config, calibration: float, *, learn: bool, log: Callable[[str], None]
) -> tuple[float, list[SustainedResult]]:
    """Climb the sustained ladder until a round fails; the largest N that kept up (NaN: none) and every round."""
    limit = config.scaled(config.slip_limit)
    capacity, results = math.nan, []
    for n in config.sustained_ladder:
        result = sustained_round(n, config, calibration, learn=learn)
        results.append(result)
        log(
            f"B1 sustained {'learned' if learn else 'fixed':7} N={n:>7,}: slip p99 {result.slip_p99 * 1000:.0f} ms "
            f"(p50 {result.slip_p50 * 1000:.1f}), behind {result.behind:.2%}, "
            f"polls/task {result.polls_per_task:.2f} (peak {result.polls_per_task_peak:.2f}), "
            f"{result.polls_per_second:,.0f} polls/s, first poll {result.first_poll:.1f} s, "
            f"CPU {result.cpu_share:.0%} of a core, {result.cpu_per_1000 * 1000:.0f} ms/1000 polls, "
            f"lag p99 {result.lag_p99 * 1000:.0f} ms, in flight {result.in_flight_min:,}-, "
            f"notice {result.notice_mean:.2f}/{result.notice_p99:.2f} s, wall {result.wall:.0f} s, "
            f"failed {result.failed}, mirror errors {result.mirror_errors}"
        )
        if not result.kept_up(limit):
            break
        capacity = float(n)
    return capacity, results


def _sustained_records(config: B1Config, calibration: float, log: Callable[[str], None]) -> list[Record]:
    """The sustained capacity with and without the learned first poll, and the figures of each at it."""
    scaled = " (scaled)" if config.scale != 1 else ""
    life = config.scaled(config.sustained_life)
    limit = config.scaled(config.slip_limit) * 1000
    records: list[Record] = []
    for learn, target, window in zip((True, False), config.sustained_targets, config.sustained_window, strict=True):
        capacity, results = _ladder(config, calibration, learn=learn, log=log)
        arm = _ARMS[learn]
        ladder = "; ".join(
            f"{result.n:,}: slip p99 {result.slip_p99 * 1000:.0f} ms, {result.polls_per_second:,.0f} polls/s"
            for result in results
        )
        records.append(
            Record(
                f"B1 sustained capacity, {arm}: largest N in flight with slip p99 < {limit:g} ms{scaled}",
                capacity,
                "tasks",
                f">= {target:,}",
                capacity >= target,
                note=f"each task {life:g} s in flight, {config.scaled(window):g} s measured; ladder: {ladder}",
            )
        )
        # The figures of the largest N that kept up; of the first rung if none did.
        at = next((result for result in results if result.n == capacity), results[0])
        label = f"B1 sustained @{at.n:,}, {arm}:"
        records += [
            Record(f"{label} schedule slip p99", at.slip_p99 * 1000, "ms"),
            Record(f"{label} polls later than {limit:g} ms", at.behind * 100, "%"),
            Record(f"{label} status requests per task", at.polls_per_task, "polls/task"),
            Record(f"{label} status requests per task, busiest 5 s", at.polls_per_task_peak, "polls/task"),
            Record(f"{label} client CPU, share of one core", at.cpu_share * 100, "%"),
        ]
    return records


def _figures(n: int, main: bool, rounds: dict[tuple[Kind, int], list[RoundResult]], config: B1Config) -> list[Record]:
    """The records of size ``n``: medians over its rounds; targets at the main size only."""
    ours_rounds, their_rounds = rounds[("sdk", n)], rounds[("baseline", n)]
    label = f"B1 @{n:,}"
    scale = config.scale
    slip_limit = config.scaled(config.slip_limit) * 1000
    # name, unit, the figure of a round, target text, whether a value meets it
    table: list[tuple[str, str, Callable[[RoundResult], float], str, Callable[[float], bool] | None]] = [
        (
            "status requests per task / ideal",
            "x",
            lambda r: r.polls_vs_ideal,
            "within 2%",
            lambda v: abs(v - 1) <= 0.02,
        ),
        ("schedule slip p50", "ms", lambda r: r.slip_p50 * 1000, "", None),
        ("schedule slip p99", "ms", lambda r: r.slip_p99 * 1000, f"<= {slip_limit:g} ms", lambda v: v <= slip_limit),
        ("notice latency mean", "s", lambda r: r.notice_mean, f"<= {1.35 * scale:g} s", lambda v: v <= 1.35 * scale),
        ("notice latency p99", "s", lambda r: r.notice_p99, f"<= {3.1 * scale:g} s", lambda v: v <= 3.1 * scale),
        ("client CPU per 1,000 polls", "ms", lambda r: r.cpu_per_1000 * 1000, "", None),
        ("event-loop lag p99", "ms", lambda r: r.lag_p99 * 1000, "", None),
    ]
    records: list[Record] = []
    for name, unit, pick, target, meets in table:
        mine = [pick(result) for result in ours_rounds]
        theirs = [pick(result) for result in their_rounds]
        value = median(mine)
        checked = main and meets is not None
        records.append(
            Record(
                f"{label} {name}",
                value,
                unit,
                target if checked else None,
                meets(value) if checked and meets is not None else None,
                median(theirs),
                rounds=mine,
                baseline_rounds=theirs,
            )
        )
        if main and name.startswith("client CPU"):
            # Rounds ran in pairs, one of each side back to back: the ratio of each pair, then their median.
            ratios = [ratio(ours, base) for ours, base in zip(mine, theirs, strict=True)]
            cpu_ratio = median(ratios)
            records.append(
                Record(
                    f"{label} client CPU per poll, ours / baseline",
                    cpu_ratio,
                    "x",
                    "<= 0.9x",
                    cpu_ratio <= 0.9,
                    1.0,
                    rounds=ratios,
                )
            )
    return records
