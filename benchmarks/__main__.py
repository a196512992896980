"""Run the benchmarks: ``python -m benchmarks [--quick] [--json PATH] [--only B1,B2,...] [--b1-ladder N,N,...]``.

Prints a markdown table and writes the records and the machine as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from ._b1 import B1Config, run_b1
from ._first_poll import FirstPollConfig, run_b5
from ._hostile import HostileConfig, run_b6
from ._report import Record, machine, render_table
from ._wire import WireConfig, run_b2, run_b3, run_b4

__all__ = ["FULL", "QUICK", "main", "run"]

Suite = dict[str, Callable[[Callable[[str], None]], list[Record]]]

# Full: B1 in real time at 1,000 and 10,000 tasks (3 rounds each side at 10,000), then the capacity search,
# then the sustained capacity ladder with and without the learned first poll (about 17 minutes of it).
FULL = (B1Config(), WireConfig(), HostileConfig(), FirstPollConfig())
# Quick: every benchmark at small sizes; B1 on a time scale of 1/10. A smoke run, not a measurement.
QUICK = (
    B1Config(
        sizes=(100, 400),
        main_size=400,
        rounds=1,
        capacity_max=1_600,
        memory_size=1_000,
        scale=0.1,
        sustained_ladder=(500, 1_000),
        sustained_targets=(1_000, 500),
    ),
    WireConfig(
        polls_in_process=300,
        polls_loopback=100,
        poll_rounds=3,
        submits=200,
        submit_rounds=1,
        http2_submit_rounds=3,
        imports=3,
    ),
    HostileConfig(bombs=8, bomb_size=64 << 20, drip_every=0.05, drip_deadline=0.3, pending=200),
    FirstPollConfig(seeds=(1,), stream_minutes=5, users=(2, 8), warmup_minutes=1, loop_minutes=5, bulk=60),
)


def suite(b1: B1Config, wire: WireConfig, hostile: HostileConfig, first_poll: FirstPollConfig) -> Suite:
    """The benchmarks by name, each taking a log function and returning its records."""
    return {
        "B1": lambda log: run_b1(b1, log),
        "B2": lambda log: run_b2(wire, log),
        "B3": lambda log: run_b3(wire, log),
        "B4": lambda log: run_b4(wire, log),
        "B5": lambda log: run_b5(first_poll, log),
        "B6": lambda log: run_b6(hostile, log),
    }


def run(benchmarks: Suite, only: Sequence[str] | None = None, log: Callable[[str], None] = print) -> list[Record]:
    """Run the chosen benchmarks in order; return every record."""
    records: list[Record] = []
    for name, benchmark in benchmarks.items():
        if only and name not in only:
            continue
        started = time.monotonic()
        records += benchmark(log)
        log(f"{name} took {time.monotonic() - started:.0f} s")
    return records


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="small sizes and a shrunk time scale: seconds, a smoke run"
    )
    parser.add_argument("--json", metavar="PATH", help="write the records and the machine here as JSON")
    parser.add_argument("--only", metavar="NAMES", help="comma-separated subset, e.g. B2,B4")
    parser.add_argument(
        "--b1-ladder",
        metavar="N,N,...",
        help="the sizes B1's sustained round climbs (each arm stops at its first failure); empty: skip that round",
    )
    parser.add_argument(
        "--b1-sustained-only", action="store_true", help="B1: only the sustained round (no burst rounds or memory)"
    )
    args = parser.parse_args(argv)
    only = [name.strip().upper() for name in args.only.split(",")] if args.only else None
    b1, wire, hostile, first_poll = QUICK if args.quick else FULL
    if args.b1_ladder is not None:
        ladder = tuple(int(size.replace("_", "")) for size in args.b1_ladder.split(",") if size.strip())
        b1 = dataclasses.replace(b1, sustained_ladder=ladder)
    if args.b1_sustained_only:
        b1 = dataclasses.replace(b1, burst=False)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    command = "python -m benchmarks " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    started = time.monotonic()
    before = machine()
    records = run(suite(b1, wire, hostile, first_poll), only, log)
    report: dict[str, Any] = {
        "command": command.strip(),
        "quick": args.quick,
        "seconds": round(time.monotonic() - started, 1),
        "machine": before,
        "load_average_after": machine()["load_average"],
        "records": [record.as_json() for record in records],
    }
    print(render_table(records))
    print()
    cpu = before["cpu"]
    print(
        f"Machine: {cpu}, {before['cores']} cores, {before['python']}, "
        + ", ".join(f"{name} {version}" for name, version in before["packages"].items() if version)
    )
    print(f"Command: {report['command']} ({report['seconds']:.0f} s)")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(report, out, indent=2, allow_nan=False, default=str)
            out.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
