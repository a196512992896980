"""The simulator's server in a process of its own, for B2 and B3: ``python -m benchmarks._serve [--http2]``.

A separate process keeps the server's CPU off the measured client's core and
out of its GIL. Tasks never finish (every poll answers ``IN_PROGRESS``) and
credits never run out. It prints its base URL on the first line and serves
until its standard input closes. HTTP/1.1 is served by the simulator's own
`SimulatorServer` (uvicorn); HTTP/2 (cleartext, prior knowledge) by hypercorn
serving the simulator's ASGI app, since uvicorn speaks HTTP/1.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from banana2_async.testing import Simulator, SimulatorApp, SimulatorServer

__all__ = ["main"]

_FOREVER = 10.0**7


def _simulator() -> Simulator:
    latency = dict.fromkeys(("1k", "2k", "4k"), (_FOREVER, _FOREVER))
    return Simulator(credits=10**12, latency=latency, seed=1)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stop_on_eof(stop: Callable[[], object]) -> None:
    loop = asyncio.get_running_loop()

    def watch() -> None:
        sys.stdin.read()
        loop.call_soon_threadsafe(stop)

    threading.Thread(target=watch, daemon=True).start()


def _serve_http1(simulator: Simulator) -> None:
    with SimulatorServer(simulator) as server:
        print(server.base_url, flush=True)
        sys.stdin.read()


def _serve_http2(simulator: Simulator) -> None:
    # Imported by name: hypercorn is only installed for the benchmarks (nox -s bench).
    serve: Any = importlib.import_module("hypercorn.asyncio").serve
    config: Any = importlib.import_module("hypercorn.config").Config()
    port = _free_port()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    config.errorlog = None
    config.h2_max_concurrent_streams = 1000
    config.keep_alive_max_requests = 10**9

    async def run() -> None:
        stop = asyncio.Event()
        _stop_on_eof(stop.set)
        task = asyncio.create_task(serve(SimulatorApp(simulator), config, shutdown_trigger=stop.wait))
        print(f"http://127.0.0.1:{port}", flush=True)
        await task

    asyncio.run(run())


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until standard input closes."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks._serve")
    parser.add_argument("--http2", action="store_true", help="serve HTTP/2 with hypercorn instead of uvicorn")
    args = parser.parse_args(argv)
    (_serve_http2 if args.http2 else _serve_http1)(_simulator())
    return 0


if __name__ == "__main__":
    sys.exit(main())
