"""B1's rounds: the shared poller at scale and one polling coroutine per task, side by side.

A round registers N tasks spread evenly over one mean poll interval (all N are
in flight once the last is registered, until the first finishes 5 s later),
each finishing 5-15 s after its registration, and runs until every task is
noticed. The SDK registers them as ``submit`` does after its POST, through
the client's private poller (``client._poller.attach``: the first poll one
interval on, where the public ``track`` polls at once), so the figures are
the poller's, not the submit path's (that is B3). The baseline is what peers
do: one asyncio task per task looping ``sleep(uniform(2, 3))`` and a raw
``httpx`` GET. Both talk to the same `TableTransport` and run in real time on
the same event loop type.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import random
import statistics
import time
import tracemalloc
from array import array
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import httpx

from banana2_async import AsyncBanana2, TaskHandle

from ._fake import API_KEY, BASE_URL, FAKE_FILE, HEADERS, STATUS_URL, TableTransport, TaskTable
from ._report import percentile, ratio

__all__ = ["B1Config", "Kind", "RoundResult", "calibrate_transport", "memory_per_task", "one_round"]

Kind = Literal["sdk", "baseline"]

_FAILED: Final = frozenset({"FAILED", "FAILURE", "ERROR", "CANCELLED", "CANCELED"})
_SEED: Final = 20250320


@dataclass(frozen=True)
class B1Config:
    """Sizes, rounds and the time scale of B1.

    ``scale`` multiplies every duration (tasks, intervals, the ramp) and every
    time target: 1.0 is real time; the quick and test runs shrink it to get
    through in seconds, which makes their figures a smoke test, not a measurement.
    """

    sizes: tuple[int, ...] = (1_000, 10_000)
    main_size: int = 10_000
    rounds: int = 3
    capacity_max: int = 80_000
    memory_size: int = 10_000
    scale: float = 1.0
    round_timeout: float = 90.0
    interval: tuple[float, float] = (2.0, 3.0)
    durations: tuple[float, float] = (5.0, 15.0)
    slip_limit: float = 0.250

    def scaled(self, seconds: float) -> float:
        """``seconds`` of real time on this run's time scale."""
        return seconds * self.scale

    @property
    def poll_interval(self) -> tuple[float, float]:
        """The poll interval, scaled."""
        return (self.scaled(self.interval[0]), self.scaled(self.interval[1]))

    @property
    def task_durations(self) -> tuple[float, float]:
        """The range of task durations, scaled."""
        return (self.scaled(self.durations[0]), self.scaled(self.durations[1]))

    @property
    def ramp(self) -> float:
        """Registrations are spread over one mean interval."""
        return sum(self.poll_interval) / 2

    @property
    def probe_period(self) -> float:
        """How often the lag probe wakes."""
        return min(0.01, self.scaled(0.01))


@dataclass
class RoundResult:
    """The figures of one B1 round."""

    kind: Kind
    n: int
    polls: int
    ideal: int
    slip_p50: float
    slip_p99: float
    notice_mean: float
    notice_p99: float
    cpu_per_1000: float
    lag_p99: float
    wall: float
    unresolved: int
    mirror_errors: int
    lags: list[float] = field(default_factory=list, repr=False)

    @property
    def polls_vs_ideal(self) -> float:
        """Status requests sent per request a slip-free poller would have sent."""
        return ratio(self.polls, self.ideal)


def _table(n: int, config: B1Config, *, durations: tuple[float, float] | None = None) -> TaskTable:
    return TaskTable(
        n,
        durations=durations or config.task_durations,
        interval=config.poll_interval,
        ramp=config.ramp,
        seed=_SEED + n,
    )


async def _probe(lags: array[float], period: float) -> None:
    while True:
        started = time.monotonic()
        await asyncio.sleep(period)
        lags.append(time.monotonic() - started - period)


async def _feed(table: TaskTable, register: Callable[[int, float], None], period: float) -> None:
    """Register the table's tasks at their offsets from now."""
    start = time.monotonic()
    index = 0
    while index < table.n:
        now = time.monotonic()
        while index < table.n and start + table.offset[index] <= now:
            register(index, now)
            index += 1
        if index < table.n:
            await asyncio.sleep(max(period, start + table.offset[index] - time.monotonic()))


async def _until(done: bool, table: TaskTable, hook: str, deadline: float) -> None:
    """Wait until the table calls ``hook`` (unless ``done`` already), or until ``deadline``."""
    if done:
        return
    event = asyncio.Event()
    setattr(table, hook, event.set)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), max(0.0, deadline - time.monotonic()))
    setattr(table, hook, None)


async def _drive(
    kind: Kind,
    table: TaskTable,
    register: Callable[[int, float], None],
    config: B1Config,
    calibration: float,
) -> RoundResult:
    """Feed the tasks, wait until every one is noticed, and book the round."""
    lags: array[float] = array("d")
    probe = asyncio.create_task(_probe(lags, config.probe_period))
    gc.collect()
    cpu_start, wall_start = time.process_time(), time.monotonic()
    await _feed(table, register, config.probe_period)
    await _until(table.resolved_count == table.n, table, "on_all_resolved", wall_start + config.round_timeout)
    cpu, wall = time.process_time() - cpu_start, time.monotonic() - wall_start
    probe.cancel()
    polls = sum(table.polls)
    notices = table.notice_latencies()
    slips = list(table.slips)
    return RoundResult(
        kind=kind,
        n=table.n,
        polls=polls,
        ideal=table.ideal_polls(_SEED),
        slip_p50=percentile(slips, 50),
        slip_p99=percentile(slips, 99),
        notice_mean=statistics.fmean(notices) if notices else math.nan,
        notice_p99=percentile(notices, 99),
        cpu_per_1000=(cpu - polls * calibration) / polls * 1000 if polls else math.nan,
        lag_p99=percentile(lags, 99),
        wall=wall,
        unresolved=table.n - table.resolved_count,
        mirror_errors=table.mirror_errors,
        lags=list(lags),
    )


def _sdk_client(table: TaskTable, config: B1Config, seed: int) -> AsyncBanana2:
    """The SDK as it is used by default: with an httpx client of its own, around the table's transport."""
    return AsyncBanana2(
        api_key=API_KEY,
        base_url=BASE_URL,
        transport=TableTransport(table),
        poll_interval=config.poll_interval,
        seed=seed,
    )


async def _sdk_round(table: TaskTable, config: B1Config, calibration: float) -> RoundResult:
    seed = _SEED + 1
    table.start_mirror(seed)
    handles: list[TaskHandle] = []

    def settled(handle: TaskHandle) -> None:
        table.resolve(table.index[handle.task_id], time.monotonic())

    async with _sdk_client(table, config, seed) as client:
        attach = client._poller.attach

        def register(index: int, now: float) -> None:
            handle = attach(table.ids[index], wait_timeout=600.0)
            table.register(index, now)
            table.schedule(index, now, table.mirrored())  # the draw `attach` just made
            handle.add_done_callback(settled)
            handles.append(handle)

        result = await _drive("sdk", table, register, config, calibration)
    for handle in handles:
        if handle.done() and handle.exception() is not None and not result.unresolved:
            raise RuntimeError(f"B1: a task failed: {handle.exception()!r}")
    return result


def _baseline_waiter(
    table: TaskTable, http: httpx.AsyncClient, interval: tuple[float, float], rng: random.Random
) -> Callable[[int], Coroutine[Any, Any, None]]:
    async def wait_for(index: int) -> None:
        # What replicate-python's async_wait and fal-client's status loop do, with a raw GET.
        params = {"task_id": table.ids[index]}
        while True:
            seconds = rng.uniform(*interval)
            table.schedule(index, time.monotonic(), seconds)
            await asyncio.sleep(seconds)
            response = await http.get(STATUS_URL, params=params, headers=HEADERS)
            response.raise_for_status()
            status = response.json()["data"]["status"]
            if status == "SUCCESS":
                table.resolve(index, time.monotonic())
                return
            if status in _FAILED:
                raise RuntimeError(f"task {table.ids[index]} failed")

    return wait_for


async def _baseline_round(table: TaskTable, config: B1Config, calibration: float) -> RoundResult:
    rng = random.Random(_SEED + 2)
    tasks: list[asyncio.Task[None]] = []
    async with httpx.AsyncClient(transport=TableTransport(table)) as http:
        wait_for = _baseline_waiter(table, http, config.poll_interval, rng)

        def register(index: int, now: float) -> None:
            table.register(index, now)
            tasks.append(asyncio.create_task(wait_for(index)))

        try:
            result = await _drive("baseline", table, register, config, calibration)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return result


def one_round(kind: Kind, n: int, config: B1Config, calibration: float) -> RoundResult:
    """Run one B1 round of ``n`` tasks in a fresh event loop."""
    table = _table(n, config)
    run = _sdk_round if kind == "sdk" else _baseline_round
    return asyncio.run(run(table, config, calibration))


def calibrate_transport(calls: int = 20_000) -> float:
    """CPU seconds the table transport itself spends per answer; subtracted from client CPU.

    The least of five runs: a busy neighbour only ever adds time, and what is
    subtracted should be the fake's own cost.
    """
    table = TaskTable(1, durations=(1e9, 1e9), interval=(1.0, 1.0), ramp=0.0, seed=0)
    table.register(0, time.monotonic())
    transport = TableTransport(table)
    request = httpx.Request("GET", STATUS_URL, params={"task_id": table.ids[0]})

    async def loop() -> float:
        costs: list[float] = []
        for _ in range(5):
            started = time.process_time()
            for _ in range(calls // 5):
                response = await transport.handle_async_request(request)
                await response.aread()
            costs.append((time.process_time() - started) / (calls // 5))
        return min(costs)

    return asyncio.run(loop())


# -- memory ---------------------------------------------------------------------------------------


async def _memory(kind: Kind, n: int, config: B1Config) -> float:
    """Bytes the client holds per in-flight task, once every task has been polled."""
    # Tasks that never finish; one more (the last) warms each path up before measuring.
    table = TaskTable(n + 1, durations=(1e9, 1e9), interval=config.poll_interval, ramp=0.0, seed=_SEED)
    held: list[object] = []
    if kind == "sdk":
        async with _sdk_client(table, config, _SEED) as client:
            await client.status(table.ids[n])

            def register(index: int) -> None:
                held.append(client._poller.attach(table.ids[index], wait_timeout=600.0))

            return await _measure(table, n, register, config)
    async with httpx.AsyncClient(transport=TableTransport(table)) as http:
        rng = random.Random(_SEED)
        wait_for = _baseline_waiter(table, http, config.poll_interval, rng)
        await http.get(STATUS_URL, params={"task_id": table.ids[n]}, headers=HEADERS)

        def spawn(index: int) -> None:
            held.append(asyncio.create_task(wait_for(index)))

        try:
            return await _measure(table, n, spawn, config)
        finally:
            for task in held:
                assert isinstance(task, asyncio.Task)
                task.cancel()
            await asyncio.gather(*(task for task in held if isinstance(task, asyncio.Task)), return_exceptions=True)


async def _measure(table: TaskTable, n: int, register: Callable[[int], None], config: B1Config) -> float:
    for index in range(n):
        table.register(index, time.monotonic())
        table.due[index] = math.inf  # no slip books here
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for index in range(n):
            register(index)
        deadline = time.monotonic() + config.scaled(3.0) * 20 + 5
        # Every task polled once (with the warm-up task, the table's n), then a breath for polls in flight.
        await _until(table.polled_once == table.n, table, "on_all_polled", deadline)
        await asyncio.sleep(config.scaled(0.05))
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    ignore = (
        tracemalloc.Filter(False, FAKE_FILE),
        tracemalloc.Filter(False, tracemalloc.__file__),
        tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
    )
    diff = after.filter_traces(ignore).compare_to(before.filter_traces(ignore), "filename")
    return sum(stat.size_diff for stat in diff) / n


def memory_per_task(kind: Kind, n: int, config: B1Config) -> float:
    """Client-side bytes per in-flight task, by tracemalloc, in a fresh event loop."""
    return asyncio.run(_memory(kind, n, config))
