"""B5: the learned first poll against the fixed 2-3 s schedule, on the same simulated task durations.

Each arm is the public client with ``learn_first_poll=True`` (learned) or
``False`` (fixed: the first poll 2-3 s after the submit), against the
simulator's default skewed durations (1k median 11 s, 2k 16 s, 4k 27 s).

Everything runs in virtual time: trio's `MockClock`, jumping to the next
deadline whenever every task waits, is the clock of the client and of the
simulator (``clock=anyio.current_time``), so simulated minutes take a second
or two and a seed fixes every figure. Each arm runs in an event loop of its
own, both with the same simulator and client seeds: the n-th task the
simulator receives takes the same time in both. Each run checks that the two
sides read one clock (a task's creation is its submit's return, the poll that
found it done is when its handle settled) and that both arms drew the same
durations.

- Stream, no rate limit: Poisson arrivals (one every ``stream_gap`` seconds on
  average) for ``stream_minutes``, 1k, 2k and 4k in turn, text-to-image, each
  submitted and awaited. Status requests per task, notice latency (the handle
  settled, minus when the simulator finished the task) per resolution, and
  the share of tasks found done at their first poll.
- Closed loops, ``rate_limit=1`` (60 requests a minute for submits and polls):
  C users, joining a second apart, each generating one task after another
  (the n-th task started is the n-th of one list of requests); tasks settled
  per minute over ``loop_minutes`` after ``warmup_minutes``.
- A bulk run, ``rate_limit=1``: ``client.batch`` of ``bulk`` mixed requests
  at its default concurrency (8); tasks per minute to finish it.

Figures are medians over ``seeds`` (one run of each arm per seed); the JSON
keeps each seed's.
"""

from __future__ import annotations

import itertools
import math
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Final, Literal

import anyio
import trio.testing

from banana2_async import AsyncBanana2, BatchEvent, GenerationRequest
from banana2_async.testing import Simulator

from ._report import Record, median, percentile, ratio

__all__ = ["FirstPollConfig", "run_b5"]

Arm = Literal["learned", "fixed"]
ARMS: Final[tuple[Arm, Arm]] = ("learned", "fixed")
Resolution = Literal["1k", "2k", "4k"]
RESOLUTIONS: Final[tuple[Resolution, ...]] = ("1k", "2k", "4k")
# Two clock readings closer than this are the same moment.
_SAME_MOMENT: Final = 1e-9


@dataclass(frozen=True)
class FirstPollConfig:
    """Sizes of B5; times are simulated (virtual) seconds and minutes."""

    seeds: tuple[int, ...] = (1, 2, 3)
    stream_minutes: float = 30.0
    stream_gap: float = 2.0
    users: tuple[int, ...] = (2, 4, 8, 16)
    warmup_minutes: float = 3.0
    loop_minutes: float = 20.0
    bulk: int = 300
    rate_limit: float = 1.0


@dataclass(frozen=True)
class Settled:
    """One task whose handle settled: what the simulator made of it and when the client knew."""

    resolution: str
    polls: int
    done_at_first_poll: bool
    notice: float


@dataclass(frozen=True)
class Run:
    """One arm's run: the tasks settled in its measured window, and what both sides saw."""

    tasks: list[Settled]
    minutes: float
    # Every task the simulator created, in order: its resolution and seconds.
    durations: list[tuple[str, float]]
    # The worst disagreement between the client's and the simulator's reading of one moment.
    skew: float
    failed: int = 0

    def polls_per_task(self, resolution: str | None = None) -> float:
        """Status requests the simulator saw per settled task (of one resolution, or all)."""
        polls = [task.polls for task in self._of(resolution)]
        return sum(polls) / len(polls) if polls else math.nan

    def notice(self, q: float, resolution: str | None = None) -> float:
        """The ``q``-th percentile of notice latency, in seconds."""
        return percentile([task.notice for task in self._of(resolution)], q)

    def done_at_first_poll(self) -> float:
        """The share of settled tasks that their first poll found done, in percent."""
        if not self.tasks:
            return math.nan
        return 100 * sum(task.done_at_first_poll for task in self.tasks) / len(self.tasks)

    def per_minute(self) -> float:
        """Tasks settled per simulated minute of the window."""
        return len(self.tasks) / self.minutes if self.minutes > 0 else math.nan

    def _of(self, resolution: str | None) -> list[Settled]:
        return [task for task in self.tasks if resolution in (None, task.resolution)]


class _Books:
    """When the client saw each task submitted and settled, by its own clock."""

    def __init__(self) -> None:
        self.resolution: dict[str, str] = {}
        self.submitted: dict[str, float] = {}
        self.settled: dict[str, float] = {}
        self.failed = 0

    def submit(self, task_id: str, resolution: str) -> None:
        self.resolution[task_id] = resolution
        self.submitted[task_id] = anyio.current_time()

    def settle(self, task_id: str) -> None:
        self.settled[task_id] = anyio.current_time()

    def run(self, sim: Simulator, *, since: float, minutes: float) -> Run:
        """The tasks settled at ``since`` or later, read against the simulator's record."""
        tasks: list[Settled] = []
        skew = 0.0
        durations: list[tuple[str, float]] = []
        for task in sim.tasks():
            resolution = self.resolution.get(task.task_id, "?")
            durations.append((resolution, task.finishes - task.created))
            if task.task_id in self.submitted:
                skew = max(skew, abs(self.submitted[task.task_id] - task.created))
            settled = self.settled.get(task.task_id)
            if settled is None or settled < since:
                continue
            # The poll that found the task done is the moment its handle settled, on both clocks.
            skew = max(skew, abs(settled - task.poll_times[-1]))
            notice = settled - task.finishes
            if notice < -_SAME_MOMENT:
                raise AssertionError(f"task {task.task_id} settled {-notice:.3f} s before it finished")
            first_done = task.poll_times[0] >= task.finishes
            tasks.append(Settled(resolution, len(task.poll_times), first_done, notice))
        return Run(tasks, minutes, durations, skew, self.failed)


def _client(sim: Simulator, arm: Arm, seed: int, rate_limit: float | None) -> AsyncBanana2:
    return AsyncBanana2(
        api_key=sim.api_key,
        base_url=sim.base_url,
        transport=sim.transport(),
        seed=seed,
        learn_first_poll=arm == "learned",
        rate_limit=rate_limit,
    )


def _simulator(seed: int) -> Simulator:
    return Simulator(seed=seed, clock=anyio.current_time)


async def _stream(arm: Arm, seed: int, config: FirstPollConfig) -> Run:
    """Poisson arrivals without a rate limit, each task submitted and awaited."""
    arrivals: list[float] = []
    rng = random.Random(seed)
    at = rng.expovariate(1 / config.stream_gap)
    while at < config.stream_minutes * 60:
        arrivals.append(at)
        at += rng.expovariate(1 / config.stream_gap)
    sim = _simulator(seed)
    books = _Books()
    async with _client(sim, arm, seed, None) as client:

        async def one(n: int) -> None:
            resolution = RESOLUTIONS[n % len(RESOLUTIONS)]
            handle = await client.submit(f"b5 stream {n}", resolution=resolution)
            books.submit(handle.task_id, resolution)
            await handle
            books.settle(handle.task_id)

        start = anyio.current_time()
        async with anyio.create_task_group() as group:
            for n, at in enumerate(arrivals):
                await anyio.sleep_until(start + at)
                group.start_soon(one, n)
        minutes = (anyio.current_time() - start) / 60
    return books.run(sim, since=start, minutes=minutes)


async def _closed_loops(arm: Arm, seed: int, users: int, config: FirstPollConfig) -> Run:
    """``users`` users each generating one task after another, under the rate limit."""
    sim = _simulator(seed)
    books = _Books()
    counter = itertools.count()
    async with _client(sim, arm, seed, config.rate_limit) as client:

        async def user(joins: float) -> None:
            # One user joins a second: none draws its first task at the same moment as another.
            await anyio.sleep(joins)
            while True:
                n = next(counter)
                resolution = RESOLUTIONS[n % len(RESOLUTIONS)]
                handle = await client.submit(f"b5 loop {n}", resolution=resolution)
                books.submit(handle.task_id, resolution)
                await handle
                books.settle(handle.task_id)

        start = anyio.current_time()
        with anyio.move_on_after((config.warmup_minutes + config.loop_minutes) * 60):
            async with anyio.create_task_group() as group:
                for number in range(users):
                    group.start_soon(user, float(number))
        return books.run(sim, since=start + config.warmup_minutes * 60, minutes=config.loop_minutes)


async def _bulk(arm: Arm, seed: int, config: FirstPollConfig) -> Run:
    """One `client.batch` of ``config.bulk`` mixed requests under the rate limit, at its default concurrency."""
    requests = [
        GenerationRequest(prompt=f"b5 bulk {n}", resolution=RESOLUTIONS[n % len(RESOLUTIONS)])
        for n in range(config.bulk)
    ]
    sim = _simulator(seed)
    books = _Books()

    def on_event(event: BatchEvent) -> None:
        if event.task_id is None:
            return
        if event.kind == "submitted":
            books.submit(event.task_id, event.request.resolution or "1k")
        elif event.kind == "succeeded":
            books.settle(event.task_id)

    async with _client(sim, arm, seed, config.rate_limit) as client:
        start = anyio.current_time()
        async for outcome in client.batch(requests, on_event=on_event):
            if not outcome.ok:
                books.failed += 1
        minutes = (anyio.current_time() - start) / 60
    return books.run(sim, since=start, minutes=minutes)


def _virtual(function: Callable[..., Awaitable[Run]], *args: object) -> Run:
    """``function(*args)`` in an event loop of its own whose clock jumps whenever every task waits."""
    clock = trio.testing.MockClock(autojump_threshold=0)
    return anyio.run(function, *args, backend="trio", backend_options={"clock": clock})


def _pair(label: str, runs: dict[Arm, Run], log: Callable[[str], None], *, whole: bool) -> None:
    """Check one pair of runs: one clock on both sides, every task settled, the same durations drawn."""
    for arm, run in runs.items():
        if run.skew > _SAME_MOMENT:
            raise AssertionError(f"B5 {label} {arm}: client and simulator clocks disagree by {run.skew:.3g} s")
        if run.failed:
            raise AssertionError(f"B5 {label} {arm}: {run.failed} tasks failed")
    learned, fixed = runs["learned"].durations, runs["fixed"].durations
    common = min(len(learned), len(fixed))
    same = all(
        ours[0] == theirs[0] and math.isclose(ours[1], theirs[1], abs_tol=1e-6)
        for ours, theirs in zip(learned[:common], fixed[:common], strict=True)
    )
    if not same or (whole and len(learned) != len(fixed)):
        raise AssertionError(f"B5 {label}: the arms drew different task durations")
    log(
        f"B5 {label}: "
        + "; ".join(
            f"{arm} {len(run.tasks):,} tasks, {run.per_minute():.2f}/min, {run.polls_per_task():.2f} polls/task, "
            f"notice p50/p99 {run.notice(50):.2f}/{run.notice(99):.2f} s, "
            f"{run.done_at_first_poll():.0f}% done at first poll"
            for arm, run in runs.items()
        )
        + f" (the first {common:,} tasks took the same time in both; client and simulator clocks agree)"
    )


def _both(
    label: str,
    function: Callable[..., Awaitable[Run]],
    *args: object,
    seeds: Iterable[int],
    log: Callable[[str], None],
    whole: bool,
) -> list[dict[Arm, Run]]:
    """Each seed's pair of runs of ``function(arm, seed, *args)``, fixed first then learned, checked."""
    pairs = []
    for seed in seeds:
        started = time.monotonic()
        pair = {arm: _virtual(function, arm, seed, *args) for arm in reversed(ARMS)}
        _pair(f"{label}, seed {seed}", pair, log, whole=whole)
        log(f"B5 {label}, seed {seed}: {time.monotonic() - started:.1f} s of wall time")
        pairs.append(pair)
    return pairs


def _figure(
    name: str,
    unit: str,
    pairs: Sequence[dict[Arm, Run]],
    pick: Callable[[Run], float],
    note: str | None = None,
) -> Record:
    """Learned (ours) against fixed (the baseline), each the median over the seeds."""
    ours = [pick(pair["learned"]) for pair in pairs]
    theirs = [pick(pair["fixed"]) for pair in pairs]
    return Record(name, median(ours), unit, baseline=median(theirs), note=note, rounds=ours, baseline_rounds=theirs)


def _compared(
    name: str,
    pairs: Sequence[dict[Arm, Run]],
    compare: Callable[[float, float], float],
    pick: Callable[[Run], float],
    unit: str,
    target: str,
    meets: Callable[[float], bool],
) -> Record:
    """One figure of learned against fixed per seed (a ratio, a difference), its median held to a target.

    The baseline is what ``compare`` makes of two equal figures: 1 for a ratio, 0 for a difference.
    """
    each = [compare(pick(pair["learned"]), pick(pair["fixed"])) for pair in pairs]
    value = median(each)
    note = "learned against fixed, seed by seed"
    return Record(name, value, unit, target, meets(value), compare(1.0, 1.0), note=note, rounds=each)


def _difference(ours: float, theirs: float) -> float:
    return ours - theirs


def _stream_records(config: FirstPollConfig, log: Callable[[str], None]) -> list[Record]:
    label = f"stream, one task every {config.stream_gap:g} s for {config.stream_minutes:g} min"
    pairs = _both(label, _stream, config, seeds=config.seeds, log=log, whole=True)
    name = "B5 stream"
    records = [
        _figure(f"{name}: status requests per task", "polls/task", pairs, Run.polls_per_task),
        _compared(
            f"{name}: status requests per task, learned / fixed",
            pairs,
            ratio,
            Run.polls_per_task,
            "x",
            "<= 0.5x",
            lambda value: value <= 0.5,
        ),
        _figure(f"{name}: notice latency p50", "s", pairs, lambda run: run.notice(50)),
        _figure(f"{name}: notice latency p99", "s", pairs, lambda run: run.notice(99)),
        _compared(
            f"{name}: notice latency p99, learned - fixed",
            pairs,
            _difference,
            lambda run: run.notice(99),
            "s",
            "<= 0.5 s",
            lambda value: value <= 0.5,
        ),
        _figure(f"{name}: tasks found done at their first poll", "%", pairs, Run.done_at_first_poll),
    ]
    for resolution in RESOLUTIONS:
        records += [
            _figure(
                f"{name} {resolution}: status requests per task",
                "polls/task",
                pairs,
                partial(Run.polls_per_task, resolution=resolution),
            ),
            _figure(
                f"{name} {resolution}: notice latency p50",
                "s",
                pairs,
                partial(Run.notice, q=50, resolution=resolution),
            ),
            _figure(
                f"{name} {resolution}: notice latency p99",
                "s",
                pairs,
                partial(Run.notice, q=99, resolution=resolution),
            ),
        ]
    return records


def _throughput_records(name: str, pairs: Sequence[dict[Arm, Run]], note: str) -> list[Record]:
    return [
        _figure(f"{name}: tasks per minute", "tasks/min", pairs, Run.per_minute, note=note),
        _compared(
            f"{name}: tasks per minute, learned / fixed",
            pairs,
            ratio,
            Run.per_minute,
            "x",
            ">= 2x",
            lambda value: value >= 2,
        ),
        _figure(f"{name}: status requests per task", "polls/task", pairs, Run.polls_per_task),
        _figure(f"{name}: notice latency p99", "s", pairs, lambda run: run.notice(99)),
    ]


def _rate_limited_records(config: FirstPollConfig, log: Callable[[str], None]) -> list[Record]:
    records: list[Record] = []
    limit = f"rate_limit={config.rate_limit:g}"
    window = f"{config.loop_minutes:g} min after {config.warmup_minutes:g} min of warm-up"
    for users in config.users:
        label = f"{limit}, {users} users in closed loops"
        pairs = _both(label, _closed_loops, users, config, seeds=config.seeds, log=log, whole=False)
        records += _throughput_records(f"B5 {limit}, {users} users in closed loops", pairs, window)
    pairs = _both(f"{limit}, batch of {config.bulk}", _bulk, config, seeds=config.seeds, log=log, whole=True)
    records += _throughput_records(
        f"B5 {limit}, batch of {config.bulk:,}", pairs, "concurrency 8 (the default), until the last settled"
    )
    return records


def run_b5(config: FirstPollConfig, log: Callable[[str], None] = print) -> list[Record]:
    """B5: the learned first poll against the fixed schedule; see the module's docstring."""
    records = _stream_records(config, log) + _rate_limited_records(config, log)
    for record in records:
        if record.met is not None:
            verdict = "PASS" if record.met else "FAIL"
            log(f"{verdict} {record.name}: {record.value:.3g} {record.unit} (target {record.target})")
    return records
