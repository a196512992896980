"""B2 (the overhead of one status poll), B3 (submit throughput) and B4 (import time).

B2 and B3 put the SDK next to a raw ``httpx.AsyncClient`` doing the same
request, in rounds that alternate who goes first; each figure is the median
of the rounds, each ratio the median of the per-round ratios.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from typing import Final

import httpx

from banana2_async import AsyncBanana2
from banana2_async.testing import DEFAULT_API_KEY

from ._fake import API_KEY, BASE_URL, HEADERS, STATUS_URL, TableTransport, TaskTable
from ._report import Record, median, ratio

__all__ = ["WireConfig", "run_b2", "run_b3", "run_b4"]

_SIM_HEADERS: Final = {"Authorization": f"Bearer {DEFAULT_API_KEY}"}
_PROMPT: Final = "A futuristic cyberpunk city with neon lights, cinematic style"


@dataclass(frozen=True)
class WireConfig:
    """Sizes and rounds of B2, B3 and B4."""

    polls_in_process: int = 3_000
    polls_loopback: int = 1_000
    poll_rounds: int = 5
    submits: int = 1_000
    concurrency: int = 64
    submit_rounds: int = 3
    # Over HTTP/2 a round takes about a second and varies most from round to round: more of them.
    http2_submit_rounds: int = 9
    imports: int = 15


Timed = Callable[[], Awaitable[float]]


async def _interleave(ours: Timed, theirs: Timed, rounds: int) -> tuple[list[float], list[float]]:
    """Run both ``rounds`` times, alternating who goes first; return each side's timings."""
    mine: list[float] = []
    baseline: list[float] = []
    for number in range(rounds):
        if number % 2 == 0:
            mine.append(await ours())
            baseline.append(await theirs())
        else:
            baseline.append(await theirs())
            mine.append(await ours())
    return mine, baseline


def _records(
    name: str,
    unit: str,
    mine: list[float],
    baseline: list[float],
    target: float,
    scale: float = 1.0,
    versus: str = "raw httpx",
) -> list[Record]:
    ratios = [ratio(ours, theirs) for ours, theirs in zip(mine, baseline, strict=True)]
    value = median(ratios)
    return [
        Record(
            name,
            median(mine) * scale,
            unit,
            None,
            None,
            median(baseline) * scale,
            rounds=[ours * scale for ours in mine],
            baseline_rounds=[theirs * scale for theirs in baseline],
        ),
        Record(f"{name}, ours / {versus}", value, "x", f"<= {target:g}x", value <= target, 1.0, rounds=ratios),
    ]


# -- servers ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def simulator_server(*, http2: bool = False) -> Iterator[str]:
    """The simulator served by a child process; yields its base URL."""
    command = [sys.executable, "-m", "benchmarks._serve", *(["--http2"] if http2 else [])]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env) as child:
        assert child.stdin is not None
        assert child.stdout is not None
        try:
            line = child.stdout.readline().strip()
            if not line.startswith("http://"):
                raise RuntimeError(f"the simulator's server did not start ({line!r})")
            yield line
        finally:
            child.stdin.close()
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()


def http2_available() -> bool:
    """Whether HTTP/2 can be measured: h2 for httpx and hypercorn for the server."""
    return all(importlib.util.find_spec(name) is not None for name in ("h2", "hypercorn"))


# -- B2 -------------------------------------------------------------------------------------------------


async def _compare_polls(
    client: AsyncBanana2,
    http: httpx.AsyncClient,
    *,
    task_id: str,
    url: str,
    headers: dict[str, str],
    count: int,
    rounds: int,
) -> tuple[list[float], list[float]]:
    """Seconds per status poll: ``client.status`` against a raw ``httpx`` GET, interleaved."""

    async def ours() -> float:
        started = time.perf_counter()
        for _ in range(count):
            await client.status(task_id)
        return (time.perf_counter() - started) / count

    async def theirs() -> float:
        params = {"task_id": task_id}
        started = time.perf_counter()
        for _ in range(count):
            response = await http.get(url, params=params, headers=headers)
            response.raise_for_status()
            response.json()
        return (time.perf_counter() - started) / count

    await ours()
    await theirs()
    return await _interleave(ours, theirs, rounds)


async def _b2_in_process(config: WireConfig) -> tuple[list[float], list[float]]:
    table = TaskTable(1, durations=(1e9, 1e9), interval=(2.0, 3.0), ramp=0.0, seed=0)
    table.register(0, time.monotonic())
    async with (
        httpx.AsyncClient(transport=TableTransport(table)) as http,
        AsyncBanana2(api_key=API_KEY, base_url=BASE_URL, transport=TableTransport(table)) as client,
    ):
        return await _compare_polls(
            client,
            http,
            task_id=table.ids[0],
            url=STATUS_URL,
            headers=HEADERS,
            count=config.polls_in_process,
            rounds=config.poll_rounds,
        )


async def _b2_loopback(base_url: str, config: WireConfig) -> tuple[list[float], list[float]]:
    async with httpx.AsyncClient() as http, AsyncBanana2(api_key=DEFAULT_API_KEY, base_url=base_url) as client:
        handle = await client.submit(_PROMPT)
        return await _compare_polls(
            client,
            http,
            task_id=handle.task_id,
            url=f"{base_url}/api/status",
            headers=_SIM_HEADERS,
            count=config.polls_loopback,
            rounds=config.poll_rounds,
        )


def run_b2(config: WireConfig, log: Callable[[str], None] = print) -> list[Record]:
    """B2: one sequential status poll through the SDK against a raw httpx GET, in-process and over loopback."""
    mine, baseline = asyncio.run(_b2_in_process(config))
    log(f"B2 in-process: {median(mine) * 1e6:.1f} us vs raw {median(baseline) * 1e6:.1f} us per poll")
    records = _records("B2 status poll in-process (table transport)", "us", mine, baseline, 1.15, 1e6)
    with simulator_server() as base_url:
        mine, baseline = asyncio.run(_b2_loopback(base_url, config))
    log(f"B2 loopback: {median(mine) * 1e6:.1f} us vs raw {median(baseline) * 1e6:.1f} us per poll")
    records += _records("B2 status poll over loopback (simulator, uvicorn)", "us", mine, baseline, 1.15, 1e6)
    return records


# -- B3 -------------------------------------------------------------------------------------------------


async def _workers(count: int, concurrency: int, one: Callable[[], Awaitable[object]]) -> float:
    """Seconds for ``count`` calls of ``one``, ``concurrency`` at a time."""
    remaining = count

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await one()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started


def _limits(concurrency: int) -> httpx.Limits:
    return httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)


async def _b3(base_url: str, config: WireConfig, *, http2: bool) -> tuple[list[float], list[float]]:
    count, concurrency = config.submits, config.concurrency
    body = {"prompt": _PROMPT}
    url = f"{base_url}/api/generate"

    async def ours() -> float:
        async with (
            httpx.AsyncClient(limits=_limits(concurrency), http1=not http2, http2=http2) as http,
            # No poll falls due during the run: this measures submits.
            AsyncBanana2(
                api_key=DEFAULT_API_KEY,
                base_url=base_url,
                http_client=http,
                max_concurrent_submits=concurrency,
                poll_interval=3600.0,
            ) as client,
        ):
            await _workers(concurrency, concurrency, lambda: client.submit(_PROMPT))  # open the connections
            return await _workers(count, concurrency, lambda: client.submit(_PROMPT))

    async def theirs() -> float:
        async with httpx.AsyncClient(limits=_limits(concurrency), http1=not http2, http2=http2) as http:

            async def one() -> str:
                response = await http.post(url, json=body, headers=_SIM_HEADERS)
                response.raise_for_status()
                return str(response.json()["data"]["task_id"])

            await _workers(concurrency, concurrency, one)  # open the connections
            return await _workers(count, concurrency, one)

    # One round of each, not counted: the first round after the server starts runs slow, whoever goes first.
    await ours()
    await theirs()
    return await _interleave(ours, theirs, config.http2_submit_rounds if http2 else config.submit_rounds)


def run_b3(config: WireConfig, log: Callable[[str], None] = print) -> list[Record]:
    """B3: submits at a fixed concurrency over loopback, SDK against raw httpx; HTTP/1.1 and HTTP/2."""
    label = f"B3 {config.submits:,} submits at concurrency {config.concurrency}"
    with simulator_server() as base_url:
        mine, baseline = asyncio.run(_b3(base_url, config, http2=False))
    log(f"B3 HTTP/1.1: {median(mine):.3f} s vs raw {median(baseline):.3f} s")
    records = _records(f"{label}, HTTP/1.1 (uvicorn)", "s", mine, baseline, 1.10)
    if not http2_available():
        log("B3 HTTP/2: not measured (needs h2 and hypercorn: the simulator's uvicorn speaks HTTP/1.1 only)")
        records.append(Record(f"{label}, HTTP/2", None, "s", note="needs h2 and hypercorn installed"))
        return records
    with simulator_server(http2=True) as base_url:
        mine, baseline = asyncio.run(_b3(base_url, config, http2=True))
    log(f"B3 HTTP/2: {median(mine):.3f} s vs raw {median(baseline):.3f} s")
    records += _records(f"{label}, HTTP/2 (hypercorn, h2c)", "s", mine, baseline, 1.10)
    return records


# -- B4 -------------------------------------------------------------------------------------------------

_IMPORT: Final = "import time; t = time.process_time(); {}; print(time.process_time() - t)"
# (statement, label, whether the 1.2x target applies): the wording and what a program writes,
# then what the first request adds, since the models load with it (reported, no target).
OURS_IMPORTS: Final = (
    ("import banana2_async", "import banana2_async (names load on first use)", True),
    ("from banana2_async import AsyncBanana2", "from banana2_async import AsyncBanana2", True),
    (
        "from banana2_async import AsyncBanana2, GenerationRequest; GenerationRequest(prompt='a cat')",
        "the same, then one GenerationRequest (the models load)",
        False,
    ),
)
THEIR_IMPORT: Final = "import httpx, anyio, pydantic"


def _import_seconds(statement: str, env: dict[str, str]) -> float:
    command = [sys.executable, "-c", _IMPORT.format(statement)]
    output = subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout
    return float(output.strip())


def run_b4(config: WireConfig, log: Callable[[str], None] = print) -> list[Record]:
    """B4: importing the SDK against ``import httpx, anyio, pydantic``, each in fresh interpreters.

    CPU seconds of the import statement alone (not the interpreter's start),
    which a busy shared machine disturbs less than wall time. ``import
    banana2_async`` loads its names on first use, so the import a program
    does, ``from banana2_async import AsyncBanana2``, is measured too, and so
    is that import followed by building one request, which loads the models
    and pydantic's model machinery. Bytecode is cached for all of them (in a
    scratch directory) before measuring, as an installed package has it.
    """
    statements = [statement for statement, _, _ in OURS_IMPORTS] + [THEIR_IMPORT]
    timings: dict[str, list[float]] = {statement: [] for statement in statements}
    with tempfile.TemporaryDirectory(prefix="banana2-bench-") as cache:
        env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = cache
        for statement in statements:
            _import_seconds(statement, env)
        for number in range(config.imports):
            for statement in statements if number % 2 == 0 else reversed(statements):
                timings[statement].append(_import_seconds(statement, env))
    baseline = timings[THEIR_IMPORT]
    records: list[Record] = []
    for statement, label, targeted in OURS_IMPORTS:
        mine = timings[statement]
        log(f"B4: {statement} {median(mine) * 1000:.1f} ms vs {THEIR_IMPORT} {median(baseline) * 1000:.1f} ms CPU")
        figures = _records(f"B4 {label}, import CPU", "ms", mine, baseline, 1.2, 1000, THEIR_IMPORT)
        if not targeted:
            figures = [replace(record, target=None, met=None) for record in figures]
        records += figures
    return records
