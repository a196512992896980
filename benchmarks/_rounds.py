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
import dataclasses
import gc
import json
import math
import os
import random
import statistics
import subprocess
import sys
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

__all__ = [
    "B1Config",
    "Kind",
    "RoundResult",
    "SustainedResult",
    "calibrate_transport",
    "memory_per_task",
    "one_round",
    "sustained_round",
]

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
    # False: only the sustained round (no burst rounds, memory or burst capacity).
    burst: bool = True
    # The sustained round: the ladder of N it climbs (each arm stops at its first failure), how long
    # each task runs (answered "running" until then), the warm-up cohort, and, with the learned first
    # poll and with the fixed schedule, the window measured and the capacity aimed for. The learned
    # schedule's window is one and a half lives, to take in the first swing of its poll rate (see
    # `_sustained`); the fixed schedule's poll rate is steady.
    sustained_ladder: tuple[int, ...] = (10_000, 15_000, 20_000, 30_000, 40_000, 50_000, 60_000)
    sustained_life: float = 40.0
    sustained_warmup: int = 16
    sustained_window: tuple[float, float] = (60.0, 30.0)
    sustained_targets: tuple[int, int] = (50_000, 15_000)

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


# -- sustained ------------------------------------------------------------------------------------


@dataclass
class SustainedResult:
    """The figures of one sustained round, over its measured window.

    ``polls_per_task`` is the poll rate over the arrival rate (``n / life``):
    in a steady state, the polls one task costs over its life.
    ``polls_per_task_peak`` is the same over the busiest 5 s of the window
    (the learned first poll makes the poll rate swing; see `_sustained`).
    ``behind`` is the share of polls sent later than the slip limit.
    ``first_poll`` is the median time from submit to first poll of the tasks
    submitted within the window.
    """

    learn: bool
    n: int
    window: float
    in_flight_min: int
    in_flight_mean: float
    polls: int
    polls_per_second: float
    polls_per_task: float
    polls_per_task_peak: float
    first_poll: float
    slip_p50: float
    slip_p99: float
    behind: float
    notice_mean: float
    notice_p99: float
    cpu_share: float
    cpu_per_1000: float
    lag_p99: float
    wall: float
    mirror_errors: int
    failed: int

    def kept_up(self, limit: float) -> bool:
        """Slip p99 under ``limit``, no task failed, the mirrored schedule in step."""
        return self.slip_p99 < limit and not self.failed and self.mirror_errors <= self.polls / 1000


async def _sustained(n: int, config: B1Config, calibration: float, learn: bool) -> SustainedResult:
    """About ``n`` tasks in flight, each running ``sustained_life`` seconds, a new one arriving as one finishes.

    Each task answers "running" until ``life`` seconds after its submit, then
    success. With ``learn`` (``learn_first_poll=True``) a warm-up cohort is
    submitted first, and arrivals start once `MIN_SAMPLES` of it are seen
    finishing, so every arrival is placed by the learned schedule; without,
    there is nothing to learn and arrivals start at once. Arrivals come one
    every ``life / n`` seconds (as ``submit`` registers a task, with its
    request), so ``n`` are in flight from ``life`` seconds on; the window
    starts one mean interval later and lasts ``sustained_window`` seconds (the
    first of the two with the learned first poll, the second without).

    The learned first poll reacts to what it learns about ``life`` seconds
    late, and its poll rate swings: a first poll learned just past ``life``
    finds every task done, three such in a row halve it, and the tasks
    placed at half their life are polled from there. The window is long
    enough to take in the first such swing after the warm-up.
    """
    from banana2_async import ClientClosedError, GenerationRequest
    from banana2_async._learn import MIN_SAMPLES

    life, settle = config.scaled(config.sustained_life), config.ramp
    window = config.scaled(config.sustained_window[0 if learn else 1])
    warmup = config.sustained_warmup if learn else 0
    spacing = life / n
    arrivals = math.ceil((life + settle + window) / spacing) + n // 100 + 10
    table = TaskTable(
        warmup + arrivals, durations=(life, life), interval=config.poll_interval, ramp=0.0, seed=_SEED + n
    )
    first_due = array("d", [math.nan]) * table.n
    seed = _SEED + 3
    table.start_mirror(seed)
    request = GenerationRequest(prompt="a benchmark")
    failures: list[BaseException] = []
    lags: array[float] = array("d")
    # Set once enough of the warm-up cohort is seen finishing for the first poll to be learned.
    learned, learned_after = asyncio.Event(), min(warmup, MIN_SAMPLES)

    def settled(handle: TaskHandle) -> None:
        error = handle.exception()
        if error is None:
            table.resolve(table.index[handle.task_id], time.monotonic())
            if table.resolved_count >= learned_after:
                learned.set()
        elif not isinstance(error, ClientClosedError):
            failures.append(error)

    client = AsyncBanana2(
        api_key=API_KEY,
        base_url=BASE_URL,
        transport=TableTransport(table),
        poll_interval=config.poll_interval,
        seed=seed,
        learn_first_poll=learn,
    )
    async with client:
        poller = client._poller
        attach, schedule, learner = poller.attach, poller._schedule, poller._learner
        kind = (request.task_type, request.resolution or "1k")
        timeout = (life + settle + window) * 4 + 60

        def register(index: int, now: float) -> None:
            task_id = table.ids[index]
            drawn = learner is None or learner.first_poll(kind) is None
            handle = attach(task_id, wait_timeout=timeout, request=request)
            table.register(index, now)
            if drawn:
                table.mirrored()  # the interval `attach` just drew; a learned first poll draws none
            due = schedule.due_time(task_id)
            assert due is not None
            table.due[index] = first_due[index] = due
            handle.add_done_callback(settled)

        probe = asyncio.create_task(_probe(lags, config.probe_period))
        gc.collect()
        started = time.monotonic()
        if warmup:
            for index in range(warmup):
                register(index, time.monotonic())
            try:
                await asyncio.wait_for(learned.wait(), life + config.scaled(config.interval[1]) * 4 + 5)
            except asyncio.TimeoutError:
                finished = table.resolved_count
                raise RuntimeError(f"B1 sustained: only {finished} of the warm-up cohort finished") from None

        t0 = time.monotonic()
        window_start, window_end = t0 + life + settle, t0 + life + settle + window
        arrived = 0
        # Every 2.5 s (scaled) of the window: (time, polls so far, tasks in flight).
        samples: list[tuple[float, int, int]] = []
        sample_every, next_sample = config.scaled(2.5), window_start
        marks: list[tuple[float, float, int]] = []  # (time, CPU, lags so far) at the window's start and end
        while True:
            now = time.monotonic()
            while arrived < arrivals and t0 + arrived * spacing <= now:
                register(warmup + arrived, now)
                arrived += 1
            if now >= next_sample or now >= window_end:
                if not marks:
                    marks.append((now, time.process_time(), len(lags)))
                samples.append((now, len(table.slips), warmup + arrived - table.resolved_count))
                next_sample += sample_every
            if now >= window_end:
                marks.append((now, time.process_time(), len(lags)))
                break
            if arrived >= arrivals:
                raise RuntimeError("B1 sustained: ran out of tasks before the window ended")
            wake = min(t0 + arrived * spacing, next_sample, window_end)
            await asyncio.sleep(max(config.probe_period, wake - time.monotonic()))
        probe.cancel()
    wall = time.monotonic() - started

    (start, cpu_start, lag_start), (end, cpu_end, lag_end) = marks
    span = end - start
    slips = table.slips[samples[0][1] : samples[-1][1]]
    polls = len(slips)
    limit = config.scaled(config.slip_limit)
    task_rate = n / life
    client_cpu = (cpu_end - cpu_start) - polls * calibration
    # Polls per task over each 5 s (two samples) of the window.
    rates = [
        (later[1] - earlier[1]) / (later[0] - earlier[0]) / task_rate
        for earlier, later in zip(samples, samples[2:], strict=False)
        if later[0] > earlier[0]
    ]
    seen = [i for i in range(table.n) if start <= table.resolved[i] < end]
    notices = [table.resolved[i] - table.finish[i] for i in seen]
    firsts = [first_due[i] - table.registered[i] for i in range(warmup, table.n) if start <= table.registered[i] < end]
    in_flight = [count for _, _, count in samples]
    return SustainedResult(
        learn=learn,
        n=n,
        window=span,
        in_flight_min=min(in_flight),
        in_flight_mean=statistics.fmean(in_flight),
        polls=polls,
        polls_per_second=polls / span,
        polls_per_task=polls / span / task_rate,
        polls_per_task_peak=max(rates, default=math.nan),
        first_poll=statistics.median(firsts) if firsts else math.nan,
        slip_p50=percentile(slips, 50),
        slip_p99=percentile(slips, 99),
        behind=sum(1 for slip in slips if slip > limit) / polls if polls else math.nan,
        notice_mean=statistics.fmean(notices) if notices else math.nan,
        notice_p99=percentile(notices, 99),
        cpu_share=client_cpu / span,
        cpu_per_1000=client_cpu / polls * 1000 if polls else math.nan,
        lag_p99=percentile(lags[lag_start:lag_end], 99),
        wall=wall,
        mirror_errors=table.mirror_errors,
        failed=len(failures),
    )


def sustained_round(
    n: int, config: B1Config, calibration: float, *, learn: bool, fresh: bool = True
) -> SustainedResult:
    """One sustained round of about ``n`` tasks in flight; in a fresh interpreter unless ``fresh=False``.

    A fresh interpreter per round, so no round runs on the heap, the caches or
    the garbage of the one before.
    """
    if not fresh:
        return asyncio.run(_sustained(n, config, calibration, learn))
    payload = json.dumps({"n": n, "config": dataclasses.asdict(config), "calibration": calibration, "learn": learn})
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    budget = config.scaled(config.sustained_life) * 3 + config.scaled(max(config.sustained_window)) + 120
    child = subprocess.run(
        [sys.executable, "-c", "from benchmarks._rounds import _sustained_child; _sustained_child()"],
        input=payload,
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
        timeout=budget,
        check=False,
    )
    if child.returncode != 0:
        raise RuntimeError(f"B1 sustained round N={n:,} failed:\n{child.stderr[-4000:]}")
    return SustainedResult(**json.loads(child.stdout.strip().splitlines()[-1]))


def _sustained_child() -> None:
    """The child's side of `sustained_round`: the arguments as JSON on stdin, the result as JSON on stdout."""
    given: dict[str, Any] = json.load(sys.stdin)
    fields: dict[str, Any] = {
        key: tuple(value) if isinstance(value, list) else value for key, value in given["config"].items()
    }
    config = B1Config(**fields)
    result = asyncio.run(_sustained(given["n"], config, given["calibration"], given["learn"]))
    print(json.dumps(dataclasses.asdict(result)))
