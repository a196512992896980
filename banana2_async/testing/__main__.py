"""Serve the simulator over HTTP: ``python -m banana2_async.testing serve --port 8000``.

It prints its base URL and serves until interrupted (Ctrl-C or SIGTERM), so
curl and programs in any language can use it.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from banana2_async.testing._core import DEFAULT_API_KEY, DEFAULT_CREDITS, Simulator

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m banana2_async.testing",
        description="An offline simulator of the NanoBanana 2 API.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the simulator over HTTP until interrupted")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on; 0 takes a free one (default: 8000)")
    serve.add_argument("--api-key", default=DEFAULT_API_KEY, help=f"the accepted API key (default: {DEFAULT_API_KEY})")
    serve.add_argument(
        "--credits", type=int, default=DEFAULT_CREDITS, help=f"the account's credits (default: {DEFAULT_CREDITS})"
    )
    serve.add_argument(
        "--speed", type=float, default=1.0, help="divide every task's duration by this (default: 1, real pace)"
    )
    serve.add_argument("--seed", type=int, default=None, help="seed latencies and task ids, for repeatable runs")
    return parser


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None, *, stop: threading.Event | None = None) -> int:
    """Run the command line; returns the exit status.

    ``serve`` runs until Ctrl-C, SIGTERM, or ``stop`` is set (for running it
    from a program of your own).
    """
    args = _parser().parse_args(argv)
    simulator = Simulator(api_key=args.api_key, credits=args.credits, speed=args.speed, seed=args.seed)
    server = simulator.serve(host=args.host, port=args.port)
    try:
        server.start()
    except (ImportError, OSError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"Serving the NanoBanana 2 simulator at {server.base_url}", flush=True)
    print(f"API key {args.api_key}, {args.credits} credits, speed x{args.speed:g}. Ctrl-C stops it.", flush=True)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm) if in_main_thread else None
    try:
        with contextlib.suppress(KeyboardInterrupt):
            (stop or threading.Event()).wait()
    finally:
        server.stop()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
