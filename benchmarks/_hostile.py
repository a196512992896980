"""B6: what a hostile or broken server costs the client: memory, loop lag, and the time to a typed error.

Three rounds, each against its own baseline measured in the same run:

- 48 polls at once answered by compression bombs (1 GiB decoded each, gzip,
  and br and zstd where installed), against 48 polls of plain answers: the
  peak of traced memory above the client's idle state, and the worst lateness
  of a 10 ms heartbeat on the same event loop while they are read.
- A status answer dripped one byte every 0.5 s: the seconds from the call to
  its `APITimeoutError`, against the ``request_timeout`` it was given.
- 2,000 pending tasks whose last poll got a 256 KiB 502 page, against 2,000
  pending tasks polled without error: traced bytes per task.

Everything runs in-process, over the simulator's transport or an httpx mock
transport, on asyncio.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import gc
import importlib.util
import math
import multiprocessing
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

import anyio
import httpx

from banana2_async import APIResponseError, APITimeoutError, AsyncBanana2
from banana2_async.testing import Fault, Simulator

from ._report import Record

if TYPE_CHECKING:
    from banana2_async.testing import BombEncoding

__all__ = ["HostileConfig", "run_b6"]

KEY = "sk-bench-hostile/5f1e+0c"
MIB = 1024 * 1024
T = TypeVar("T")


@dataclass(frozen=True)
class HostileConfig:
    """Sizes of B6."""

    bombs: int = 48
    bomb_size: int = 1 << 30
    drip_every: float = 0.5
    drip_deadline: float = 2.0
    pending: int = 2_000
    page: int = 256 * 1024


def _encodings() -> list[str]:
    found = ["gzip"]
    if importlib.util.find_spec("brotli") is not None:
        found.append("br")
    if importlib.util.find_spec("zstandard") is not None:
        found.append("zstd")
    return found


async def _heartbeat(lateness: list[float], stop: anyio.Event) -> None:
    """Sleep 10 ms at a time until ``stop``; record how late each wake-up came."""
    while not stop.is_set():
        due = anyio.current_time() + 0.01
        await anyio.sleep(0.01)
        lateness.append(anyio.current_time() - due)


def _resident(field: str) -> int | None:
    """A field of /proc/self/status in bytes (``VmRSS``, ``VmHWM``); ``None`` off Linux."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_resident_peak() -> bool:
    """Start a new high-water mark of resident memory (Linux); whether that was possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear:
            clear.write("5")
    except OSError:
        return False
    return True


async def _bombed_polls(config: HostileConfig, encoding: str | None) -> tuple[float, float]:
    """Peak memory above idle, and the worst heartbeat lateness, while ``config.bombs`` polls are read.

    The peak is of resident memory where Linux can say (decoders' own C
    allocations included), else of Python's traced allocations.
    ``encoding`` ``None`` is the baseline: the same polls, answered plainly.
    """
    sim = Simulator(api_key=KEY, speed=0.01, seed=6)
    options: dict[str, Any] = {"max_concurrent_polls": config.bombs, "poll_interval": 3600.0, "max_retries": 0}
    async with sim.client(wait_timeout=None, **options) as client:
        handles = [await client.submit(f"task {n}") for n in range(config.bombs)]
        if encoding is not None:
            coding = cast("BombEncoding", encoding)
            # The simulator compresses a bomb once and keeps it: that cost is its own.
            sim.inject(Fault.compression_bomb(config.bomb_size, encoding=coding), on="status", times=1)
            with contextlib.suppress(APIResponseError):
                await client.status(handles[0].task_id)
            sim.inject(Fault.compression_bomb(config.bomb_size, encoding=coding), on="status", times=config.bombs)
        gc.collect()
        resident = _reset_resident_peak() and _resident("VmRSS")
        tracemalloc.start()
        try:
            idle = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            lateness: list[float] = []
            stop = anyio.Event()
            async with anyio.create_task_group() as group:
                group.start_soon(_heartbeat, lateness, stop)
                await anyio.sleep(0.05)

                async def poll(task_id: str) -> None:
                    with contextlib.suppress(APIResponseError):
                        await client.status(task_id)

                async with anyio.create_task_group() as polls:
                    for handle in handles:
                        polls.start_soon(poll, handle.task_id)
                stop.set()
            peak = tracemalloc.get_traced_memory()[1] - idle
        finally:
            tracemalloc.stop()
        high = _resident("VmHWM")
        if resident and high:
            peak = high - resident
    return peak, max(lateness, default=0.0)


class _Drip(httpx.AsyncByteStream):
    def __init__(self, every: float) -> None:
        self.every = every

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            yield b" "
            await anyio.sleep(self.every)


async def _dripped_status(config: HostileConfig) -> float:
    """Seconds from a status call to its `APITimeoutError` over an answer that drips."""
    transport = httpx.MockTransport(lambda request: httpx.Response(200, stream=_Drip(config.drip_every)))
    options: dict[str, Any] = {"request_timeout": config.drip_deadline, "max_retries": 0}
    async with AsyncBanana2(KEY, base_url="https://api.bench.invalid", transport=transport, **options) as client:
        started = time.perf_counter()
        try:
            await client.status("t1")
        except APITimeoutError:
            return time.perf_counter() - started
    return math.nan


async def _pending_bytes(config: HostileConfig, page: bool) -> float:
    """Traced bytes per pending task once each was polled, with a 502 page as its answer or a running one."""
    body = b"<html>" + b"x" * config.page + b"</html>"

    def handler(request: httpx.Request) -> httpx.Response:
        if page:
            return httpx.Response(502, content=body, headers={"content-type": "text/html"})
        task_id = request.url.params["task_id"]
        return httpx.Response(200, json={"code": 200, "data": {"task_id": task_id, "status": "IN_PROGRESS"}})

    polled = 0

    def count(request: httpx.Request) -> httpx.Response:
        nonlocal polled
        polled += 1
        return handler(request)

    options: dict[str, Any] = {"poll_interval": 30.0, "wait_timeout": None, "max_concurrent_polls": 48}
    gc.collect()
    tracemalloc.start()
    try:
        transport = httpx.MockTransport(count)
        async with AsyncBanana2(KEY, base_url="https://api.bench.invalid", transport=transport, **options) as client:
            before = tracemalloc.get_traced_memory()[0]
            handles = [client.track(f"t{n:05d}") for n in range(config.pending)]
            while polled < config.pending:  # noqa: ASYNC110 - a counter of the mock's handler
                await anyio.sleep(0.01)
            await anyio.sleep(0.1)
            gc.collect()
            during = tracemalloc.get_traced_memory()[0]
            assert not any(handle.done() for handle in handles)
    finally:
        tracemalloc.stop()
    return (during - before) / config.pending


def _bomb_round(config: HostileConfig, encoding: str | None) -> tuple[float, float]:
    return anyio.run(_bombed_polls, config, encoding)


def _fresh(function: Callable[..., T], *args: Any) -> T:
    """``function(*args)`` in a new interpreter, whose resident memory no earlier round has grown."""
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def run_b6(config: HostileConfig, log: Callable[[str], None] = print) -> list[Record]:
    """B6: bombs, drips and error pages; see the module's docstring."""
    records: list[Record] = []
    base_peak, base_lag = _fresh(_bomb_round, config, None)
    log(f"B6: {config.bombs} plain polls: peak +{base_peak / MIB:.1f} MiB, worst lag {base_lag * 1000:.0f} ms")
    for encoding in _encodings():
        peak, lag = _fresh(_bomb_round, config, encoding)
        log(f"B6: {config.bombs} {encoding} bombs: peak +{peak / MIB:.1f} MiB, worst lag {lag * 1000:.0f} ms")
        records.append(
            Record(
                f"B6 {config.bombs} {encoding} bombs polled at once, peak memory above idle",
                peak / MIB,
                "MiB",
                target="< 256",
                met=peak < 256 * MIB,
                baseline=base_peak / MIB,
                note=f"{config.bomb_size / MIB:,.0f} MiB decoded each; baseline: plain answers",
            )
        )
        records.append(
            Record(
                f"B6 {config.bombs} {encoding} bombs polled at once, worst lateness of a 10 ms timer",
                lag * 1000,
                "ms",
                target="< 500",
                met=lag < 0.5,
                baseline=base_lag * 1000,
            )
        )
    seconds = anyio.run(_dripped_status, config)
    log(f"B6: dripped status answer: APITimeoutError after {seconds:.2f} s (request_timeout {config.drip_deadline})")
    records.append(
        Record(
            f"B6 status answer dripped a byte every {config.drip_every} s, seconds to APITimeoutError",
            seconds,
            "s",
            target=f"<= request_timeout + 0.5 ({config.drip_deadline + 0.5:g})",
            met=seconds <= config.drip_deadline + 0.5,
            baseline=config.drip_deadline,
            note="baseline: the request_timeout given",
        )
    )
    clean = anyio.run(_pending_bytes, config, False)
    paged = anyio.run(_pending_bytes, config, True)
    log(f"B6: per pending task: {paged:,.0f} B after a 502 page, {clean:,.0f} B after a running answer")
    records.append(
        Record(
            f"B6 {config.pending:,} pending tasks after a {config.page // 1024} KiB 502 page, "
            "bytes per task over baseline",
            paged - clean,
            "B",
            target="< 4096",
            met=paged - clean < 4096,
            baseline=clean,
            note="baseline: the same tasks after a running answer",
        )
    )
    return records
