"""A storm of cancelled waiters: the rest resolve, nothing leaks, abandoned tasks are polled no more."""

from __future__ import annotations

import gc
import logging
import random
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

import anyio
import pytest

from banana2_async import AsyncBanana2, GenerationResult, TaskHandle
from banana2_async.testing import Fault, Simulator

pytestmark = pytest.mark.anyio

KEY: Final = "sk-storm-0f6b2d84c1e97a35"
CANCELLED: Final = 1_000
GENERATE_CANCELLED: Final = 100
KEPT: Final = 200
DOUBLED: Final = 50
# Tasks take 0.6-0.9 s and waiters leave within 0.3 s of submitting: each leaves a task still running.
LATENCY: Final = {"1k": (0.6, 0.9), "2k": (0.6, 0.9), "4k": (0.6, 0.9)}
LEAVE_WITHIN: Final = 0.3


@dataclass
class Storm:
    """What happened to each waiter, by task id; times are the simulator's clock (time.monotonic)."""

    left_at: dict[str, float] = field(default_factory=dict)
    results: dict[str, GenerationResult] = field(default_factory=dict)
    doubled_left_at: dict[str, float] = field(default_factory=dict)
    abandoned: list[TaskHandle] = field(default_factory=list)
    generate_left_at: dict[str, float] = field(default_factory=dict)
    finished_early: int = 0


@pytest.fixture
def sim() -> Simulator:
    """A real-time simulator with slow-ish tasks and a few failing polls."""
    simulator = Simulator(api_key=KEY, latency=LATENCY, seed=11)
    simulator.inject(Fault.server_error(), on="status", probability=0.05)
    return simulator


def _roles(seed: int) -> Iterator[tuple[str, float]]:
    """Each waiter's role and, for those who leave, after how long; shuffled with a fixed seed."""
    rng = random.Random(seed)
    roles = (
        [("cancelled", rng.uniform(0.0, LEAVE_WITHIN)) for _ in range(CANCELLED - GENERATE_CANCELLED)]
        + [("generate", rng.uniform(0.0, LEAVE_WITHIN)) for _ in range(GENERATE_CANCELLED)]
        + [("kept", 0.0) for _ in range(KEPT)]
        + [("doubled", rng.uniform(0.0, LEAVE_WITHIN)) for _ in range(DOUBLED)]
    )
    rng.shuffle(roles)
    return iter(roles)


async def _leave_after(handle: TaskHandle, seconds: float) -> float | None:
    """Wait for ``handle`` until ``seconds`` pass; return when the waiter left, or None if it got the result."""
    with anyio.move_on_after(seconds) as scope:
        await handle
    return time.monotonic() if scope.cancelled_caught else None


async def _run_storm(client: AsyncBanana2, storm: Storm, seed: int) -> None:
    async def one(index: int, role: str, leave: float) -> None:
        prompt = f"storm {index:05d}"
        if role == "generate":
            with anyio.move_on_after(leave) as scope:
                await client.generate(prompt)
            if scope.cancelled_caught:
                storm.generate_left_at[prompt] = time.monotonic()
            else:
                storm.finished_early += 1
            return
        handle = await client.submit(prompt)
        if role == "kept":
            storm.results[handle.task_id] = await handle
        elif role == "cancelled":
            left = await _leave_after(handle, leave)
            if left is None:
                storm.finished_early += 1
            else:
                storm.left_at[handle.task_id] = left
                storm.abandoned.append(handle)
        else:
            # Two waiters: one leaves early, the other stays; the task must still be polled to the end.
            async with anyio.create_task_group() as pair:
                pair.start_soon(_stay, handle, storm)
                left = await _leave_after(handle, leave)
            if left is not None:
                storm.doubled_left_at[handle.task_id] = left

    async with anyio.create_task_group() as group:
        for index, (role, leave) in enumerate(_roles(seed)):
            group.start_soon(one, index, role, leave)


async def _stay(handle: TaskHandle, storm: Storm) -> None:
    storm.results[handle.task_id] = await handle


@pytest.mark.slow
# Real time, on the simulator's clock: in asyncio's debug mode the client is too slow for any
# cancelled generate() to have been sent before its waiter leaves, so that case goes untested there.
@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_a_storm_of_cancelled_waiters(sim: Simulator, caplog: pytest.LogCaptureFixture) -> None:
    """1,000 waiters leave at random moments (real time): the others resolve, abandoned tasks get no more polls."""
    storm = Storm()
    baseline = {task.id for task in anyio.get_running_tasks()}
    with caplog.at_level(logging.DEBUG):
        async with sim.client(poll_interval=(0.2, 0.3), wait_timeout=None, seed=5) as client:
            with anyio.fail_after(60):
                await _run_storm(client, storm, seed=20250320)

            # Every waiter who stayed got its result, the task's own.
            assert len(storm.results) == KEPT + DOUBLED
            records = {task.task_id: task for task in sim.tasks()}
            for task_id, result in storm.results.items():
                assert records[task_id].status == "SUCCESS"
                assert result.task_id == task_id
                assert result.images == [f"{sim.base_url}/results/{task_id}/0.png"]

            # Every waiter who left, left a running task behind (the leave times are shorter than any task).
            assert storm.finished_early == 0
            assert len(storm.left_at) + len(storm.generate_left_at) == CANCELLED
            assert len(storm.doubled_left_at) == DOUBLED

            # Nobody waits for the abandoned tasks: nothing is registered, and none was polled after its waiter left.
            assert client.statistics().tasks_watched == 0
            assert client.statistics().handles_pending == 0
            stats = sim.stats
            by_prompt = {task.prompt: task.task_id for task in records.values()}
            # A generate() left while its submit waited in line was never sent: no task, nothing to poll.
            sent = {by_prompt[prompt]: left for prompt, left in storm.generate_left_at.items() if prompt in by_prompt}
            assert 0 < len(sent) <= GENERATE_CANCELLED
            abandoned = {**storm.left_at, **sent}
            late = {
                task_id: stats.polls(task_id)
                for task_id, left in abandoned.items()
                if max(stats.polls(task_id), default=0) > left
            }
            assert late == {}
            assert all(not handle.done() for handle in storm.abandoned)

            # A task with a second waiter kept being polled after the first one left.
            for task_id, left in storm.doubled_left_at.items():
                assert max(stats.polls(task_id)) > left

            # The poller keeps no reference to a handle nobody waits for.
            comeback = storm.abandoned[:10]
            gone = [weakref.ref(handle) for handle in storm.abandoned[10:]]
            storm.abandoned.clear()
            gc.collect()
            assert [ref for ref in gone if ref() is not None] == []

            # Waiting again resumes polling: a waiter who comes back gets the result.
            with anyio.fail_after(30):
                for handle in comeback:
                    assert (await handle).images == [f"{sim.base_url}/results/{handle.task_id}/0.png"]
            assert client.statistics().tasks_watched == 0

    assert {task.id for task in anyio.get_running_tasks()} <= baseline
    assert KEY not in caplog.text
