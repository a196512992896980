"""The learned first poll, end to end: the poller places a submitted task's first poll by how long its kind took."""

from __future__ import annotations

import anyio
import pytest

from banana2_async import AsyncBanana2, InvalidRequestError, TaskTimeoutError
from banana2_async.testing import Simulator

# Tasks take real half seconds on asyncio; trio runs them on its virtual clock.
pytestmark = [pytest.mark.anyio, pytest.mark.virtual_clock, pytest.mark.slow_in_real_time]

INTERVAL = 0.05
# Every 1k task takes half a second, every 4k task two: ten intervals and forty.
LATENCY = {"1k": (0.5, 0.5), "2k": (1.0, 1.0), "4k": (2.0, 2.0)}


def simulator() -> Simulator:
    return Simulator(latency=LATENCY, seed=5, clock=anyio.current_time)


def first_poll_delays(sim: Simulator) -> list[float]:
    """Per task, in submit order: seconds from its creation to its first poll."""
    return [task.poll_times[0] - task.created for task in sorted(sim.tasks(), key=lambda task: task.created)]


async def test_a_kind_seen_finishing_is_first_polled_near_its_duration() -> None:
    """After a few 1k tasks, a new 1k task's first poll comes near half a second, not one interval on:
    it costs two or three polls instead of ten."""
    sim = simulator()
    async with sim.client(poll_interval=INTERVAL) as client:
        for n in range(10):
            await client.generate(f"fox {n}")
    delays = first_poll_delays(sim)
    assert all(delay < 2 * INTERVAL for delay in delays[:3])
    # Near half a second, not one interval on: on asyncio in real time (debug mode too) the samples it learns
    # from are a few tens of ms off either way.
    assert all(0.3 <= delay <= 0.65 for delay in delays[-3:])
    polls = [len(task.poll_times) for task in sorted(sim.tasks(), key=lambda task: task.created)]
    assert polls[0] >= 9
    assert all(count <= 3 for count in polls[-3:])


async def test_kinds_are_learned_apart() -> None:
    """1k tasks seen finishing say nothing of a 4k task: it is first polled one interval on."""
    sim = simulator()
    async with sim.client(poll_interval=INTERVAL) as client:
        for n in range(10):
            await client.generate(f"fox {n}")
        await client.generate("a big fox", resolution="4k")
    assert first_poll_delays(sim)[-1] < 2 * INTERVAL


async def test_learn_first_poll_false_polls_from_the_submit_on() -> None:
    """With learn_first_poll=False every task is first polled one interval after its submit."""
    sim = simulator()
    async with sim.client(poll_interval=INTERVAL, learn_first_poll=False) as client:
        for n in range(10):
            await client.generate(f"fox {n}")
    assert all(delay < 2 * INTERVAL for delay in first_poll_delays(sim))


async def test_a_handle_is_polled_before_its_deadline() -> None:
    """A learned first poll later than a handle's deadline is brought before it."""
    sim = simulator()
    async with sim.client(poll_interval=INTERVAL) as client:
        for n in range(10):
            await client.generate(f"fox {n}")
        handle = await client.submit("a quick fox", wait_timeout=0.2)
        with pytest.raises(TaskTimeoutError):
            await handle
    assert first_poll_delays(sim)[-1] < 0.2


async def test_tracked_tasks_teach_nothing() -> None:
    """A tracked task's start is unknown: it is polled at once and its duration is not learned."""
    sim = simulator()
    async with sim.client(poll_interval=INTERVAL) as client:
        handles = [await client.submit(f"fox {n}") for n in range(5)]
    async with sim.client(poll_interval=INTERVAL) as client:
        for handle in handles:
            await client.track(handle.task_id)
        await client.generate("a new fox")
    assert first_poll_delays(sim)[-1] < 2 * INTERVAL


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_learn_first_poll_must_be_a_bool(value: object) -> None:
    """learn_first_poll takes True or False only, checked before anything is sent."""
    with pytest.raises(InvalidRequestError, match="learn_first_poll must be True or False"):
        AsyncBanana2(api_key="sk-test", learn_first_poll=value)  # type: ignore[arg-type]
