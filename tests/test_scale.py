"""Scale: 2,000 tasks through one client resolve, each polled as often as its completion needs and no more."""

from __future__ import annotations

import anyio
import pytest
from _fake_api import FakeAPI, open_client

from banana2_async import GenerationResult

pytestmark = [pytest.mark.anyio, pytest.mark.virtual_clock]

TASKS = 2_000


def polls_needed(task_id: str) -> int:
    """The fake finishes task ``task-NNNNN`` at its (1 + NNNNN % 4)-th poll: 1 to 4, 2.5 on average."""
    return 1 + int(task_id.rsplit("-", 1)[1]) % 4


def script(task_id: str) -> tuple[str, ...]:
    """IN_PROGRESS until the poll that finds the task done."""
    return ("IN_PROGRESS",) * (polls_needed(task_id) - 1) + ("SUCCESS",)


@pytest.mark.slow
async def test_two_thousand_tasks_resolve_with_the_ideal_number_of_polls() -> None:
    """2,000 tasks at millisecond intervals all resolve; the status requests are within 5% of the ideal count."""
    fake = FakeAPI(script)
    results: list[GenerationResult] = []
    async with open_client(fake, poll_interval=(0.001, 0.002), wait_timeout=None) as client:

        async def generate(n: int) -> None:
            results.append(await client.generate(f"fox number {n}"))

        async with anyio.create_task_group() as group:
            for n in range(TASKS):
                group.start_soon(generate, n)
        assert client.statistics().tasks_watched == 0
        polls_sent = client.statistics().polls_sent
    assert len(results) == TASKS
    assert {result.task_id for result in results} == set(fake.submitted)
    # Ideal: each task is polled exactly until the poll that finds it done.
    ideal = sum(polls_needed(task_id) for task_id in fake.submitted)
    assert ideal == TASKS * 5 // 2
    assert abs(fake.status_requests - ideal) <= 0.05 * ideal
    assert all(fake.polls[task_id] >= polls_needed(task_id) for task_id in fake.submitted)
    assert polls_sent == fake.status_requests
