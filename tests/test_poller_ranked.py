"""Under a rate limit, the poller ranks its polls by how likely each is to find its task done."""

from __future__ import annotations

import functools

import anyio
import pytest

from banana2_async.testing import Simulator

pytestmark = [pytest.mark.anyio, pytest.mark.virtual_clock, pytest.mark.slow_in_real_time]

# 1k tasks take 0.4 s; 4k tasks anything from 1 to 6 s.
LATENCY = {"1k": (0.4, 0.4), "2k": (1.0, 1.0), "4k": (1.0, 6.0)}


@pytest.mark.parametrize("learn", [True, False], ids=["ranked", "first-come"])
async def test_a_poll_likely_to_find_its_task_done_goes_before_polls_that_likely_will_not(learn: bool) -> None:
    """30 slow tasks polled as fast as a short budget allows; a quick task that is surely done by now
    is polled before them, noticed within a few grants of finishing, not behind 30 polls."""
    sim = Simulator(latency=LATENCY, seed=3, clock=anyio.current_time)
    async with sim.client(poll_interval=0.01, rate_limit=20.0, learn_first_poll=learn) as client:
        # Teach the client how long both kinds take: the small ones alone, as nothing crowds the budget yet.
        for n in range(10):
            await client.generate(f"small {n}")
        async with anyio.create_task_group() as group:
            for n in range(10):
                group.start_soon(functools.partial(client.generate, f"big {n}", resolution="4k"))
        big = [await client.submit(f"new big {n}", resolution="4k") for n in range(30)]
        await anyio.sleep(1.5)
        small = await client.submit("a new small one")
        await small
        task = next(task for task in sim.tasks() if task.task_id == small.task_id)
        late = task.poll_times[-1] - task.finishes
        for handle in big:
            await handle
    if learn:
        assert late < 0.25
    else:
        # The plain schedule polls first come, first served: the quick task waits its turn.
        assert late > 0.35


async def test_a_crowded_gate_puts_off_polls_of_tasks_not_expected_done() -> None:
    """With eight requests waiting for the budget, a due poll of a task not expected done yet is not handed to a
    worker: it is due again when its task is expected done. With fewer waiting, it goes."""
    sim = Simulator(latency=LATENCY, seed=4, clock=anyio.current_time)
    async with sim.client(poll_interval=0.01, rate_limit=10.0) as client:
        poller, line = client._poller, client._throttle._line
        learner = poller._learner
        assert learner is not None
        for _ in range(8):
            learner.learn(("text-to-image", "4k"), running_at=2.9, done_at=3.1)
        handle = await client.submit("a big one", resolution="4k")
        entry = poller._entries[handle.task_id]
        now = anyio.current_time()
        assert poller._rank([entry], now) == [entry]
        tickets = [line.join(None) for _ in range(8)]
        try:
            assert poller._rank([entry], now) == []
            assert poller._schedule.due_time(handle.task_id) == pytest.approx(entry.registered_at + 3.0)
            # Once it is expected done, it goes even through a crowded gate.
            assert poller._rank([entry], entry.registered_at + 3.0) == [entry]
        finally:
            for ticket in tickets:
                line.leave(ticket)
        await handle
