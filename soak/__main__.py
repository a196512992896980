"""``python -m soak --tasks N``: run the soak, print its table, exit 1 if an invariant failed."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from ._run import SoakConfig, run_soak
from ._verify import as_json, render, verify


def _parser() -> argparse.ArgumentParser:
    defaults = SoakConfig()
    parser = argparse.ArgumentParser(prog="python -m soak", description=__doc__)
    parser.add_argument("--tasks", type=int, default=defaults.tasks, help="tasks to submit (default %(default)s)")
    parser.add_argument(
        "--concurrency", type=int, default=defaults.concurrency, help="tasks in flight (default %(default)s)"
    )
    parser.add_argument("--speed", type=float, default=defaults.speed, help="simulator speed-up (default %(default)s)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of both sides (default %(default)s)")
    parser.add_argument("--backend", choices=("asyncio", "trio"), default=defaults.backend)
    parser.add_argument(
        "--read-timeout", type=float, default=defaults.read_timeout, help="client read timeout, s (default %(default)s)"
    )
    parser.add_argument(
        "--phases", type=int, default=defaults.phases, help="quiet points memory is measured at (default %(default)s)"
    )
    parser.add_argument("--no-tracemalloc", action="store_true", help="measure allocated blocks only (faster)")
    parser.add_argument("--json", type=Path, help="also write the figures and checks to this file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the soak as the command line says; return the exit status."""
    args = _parser().parse_args(argv)
    if args.tasks < 1 or args.concurrency < 1 or args.phases < 1:
        print("--tasks, --concurrency and --phases must be at least 1", file=sys.stderr)
        return 2
    defaults = SoakConfig()
    config = SoakConfig(
        tasks=args.tasks,
        concurrency=args.concurrency,
        speed=args.speed,
        seed=args.seed,
        backend=args.backend,
        read_timeout=args.read_timeout,
        phases=args.phases,
        trace_memory=not args.no_tracemalloc,
        faults=defaults.faults,
    )
    run = run_soak(config)
    checks = verify(run)
    print(render(run, checks), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(as_json(run, checks), indent=2) + "\n", encoding="utf-8")
    return 0 if all(check.ok for check in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
