"""Many callers at once: submits queue inside the SDK, and requests in flight never exceed the limits."""

from __future__ import annotations

import anyio
import pytest
from _fake_api import FakeAPI, error, open_client, wait_until

from banana2_async import GenerationResult

pytestmark = [pytest.mark.anyio, pytest.mark.virtual_clock]


@pytest.mark.slow
async def test_two_thousand_concurrent_submits_all_succeed_within_the_limits() -> None:
    """2,000 coroutines submit at once while polls run: all succeed, never more in flight than the limits allow."""
    # Each submit takes a millisecond, so that polls come due while submits are still in line.
    fake = FakeAPI(lambda _: ("IN_PROGRESS", "SUCCESS"), hold=3, submit_latency=0.001)
    results: list[GenerationResult] = []
    async with open_client(
        fake, max_concurrent_submits=8, max_concurrent_polls=4, poll_interval=(0.001, 0.002), wait_timeout=None
    ) as client:

        async def generate(n: int) -> None:
            handle = await client.submit(f"fox number {n}")
            results.append(await handle)

        async with anyio.create_task_group() as group:
            for n in range(2_000):
                group.start_soon(generate, n)
    assert len(results) == 2_000
    assert len({result.task_id for result in results}) == 2_000
    assert sorted(result.task_id for result in results) == sorted(fake.submitted)
    assert fake.status_requests == 4_000
    assert fake.max_in_flight_by_kind["submit"] == 8
    assert fake.max_in_flight_by_kind["status"] <= 4
    assert fake.max_in_flight <= 8 + 4
    # Polls ran while submits were still queued: the poller does not wait for the submits to finish.
    last_submit = max(when for when, kind, _ in fake.log if kind == "submit")
    assert any(kind == "status" and when < last_submit for when, kind, _ in fake.log)


async def test_requests_in_flight_stay_within_the_default_limits() -> None:
    """With the default limits (16 submits, 48 polls) a flood of work never has more than 64 requests in flight."""
    fake = FakeAPI(lambda _: ("IN_PROGRESS", "IN_PROGRESS", "SUCCESS"), hold=5)
    async with open_client(fake, poll_interval=0.001, wait_timeout=None) as client:
        tracked = [client.track(f"old-{n}") for n in range(300)]

        async def generate(n: int) -> None:
            await (await client.submit(f"fox number {n}"))

        async with anyio.create_task_group() as group:
            for n in range(500):
                group.start_soon(generate, n)
            for handle in tracked:
                group.start_soon(handle.result)
    assert fake.max_in_flight_by_kind["submit"] == 16
    assert fake.max_in_flight_by_kind["status"] <= 48
    assert fake.max_in_flight <= 64


async def test_a_submit_waiting_in_line_and_cancelled_is_never_sent() -> None:
    """Cancelled while queued inside the SDK, a submit sends nothing; one already sent still gets its task watched."""
    fake = FakeAPI(lambda _: ("IN_PROGRESS",))
    fake.submit_gate = anyio.Event()
    async with open_client(fake, max_concurrent_submits=1, wait_timeout=None) as client:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as group:
                for n in range(5):
                    group.start_soon(client.submit, f"fox {n}")
                await wait_until(lambda: fake.in_flight_by_kind["submit"] == 1)
                scope.cancel()
                # The one in flight is shielded: it waits for its answer even though its caller was cancelled.
                fake.submit_gate.set()
        assert len(fake.submitted) == 1
        assert client.statistics().tasks_watched == 1
        (task_id,) = fake.submitted
        await wait_until(lambda: fake.polls[task_id] >= 1)
    assert [kind for _, kind, _ in fake.log].count("submit") == 1


async def test_the_rate_budget_is_shared_by_submits_and_polls() -> None:
    """With ``rate_limit=1`` (a burst of one) a submit and two due polls get one request out between them."""
    fake = FakeAPI(lambda _: ("IN_PROGRESS",))
    fake.gate = anyio.Event()
    fake.submit_gate = anyio.Event()
    async with open_client(fake, rate_limit=1.0) as client, anyio.create_task_group() as group:
        group.start_soon(client.submit, "a fox")
        client.track("a")
        client.track("b")
        await anyio.wait_all_tasks_blocked()
        assert fake.in_flight == 1
        group.cancel_scope.cancel()
        fake.gate.set()
        fake.submit_gate.set()


async def test_a_submit_cancelled_while_waiting_for_the_rate_budget_sends_nothing() -> None:
    """Waiting for its share of the rate budget, nothing has been sent: cancelling the submit really cancels it."""
    fake = FakeAPI(lambda _: ("IN_PROGRESS",))
    async with open_client(fake, rate_limit=0.5, poll_interval=100.0) as client:
        await client.submit("the one request the burst allows")
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as group:
                group.start_soon(client.submit, "a request two seconds away")
                await anyio.wait_all_tasks_blocked()
                scope.cancel()
        assert len(fake.submitted) == 1
        assert client.statistics().tasks_watched == 1


async def test_a_submit_cancelled_while_waiting_to_retry_a_refusal_sends_nothing_more() -> None:
    """Cancelled while it waits out a 503's Retry-After, a submit does not send the POST again."""
    fake = FakeAPI(lambda _: ("IN_PROGRESS",))
    fake.submit_replies = [error(503, "busy", **{"Retry-After": "1"})]
    async with open_client(fake, poll_interval=100.0) as client:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as group:
                group.start_soon(client.submit, "a fox")
                await anyio.wait_all_tasks_blocked()
                scope.cancel()
    assert [kind for _, kind, _ in fake.log].count("submit") == 1
    assert fake.submitted == []


async def test_a_submit_lets_other_tasks_run_even_over_a_transport_that_never_waits() -> None:
    """Each submit yields to the event loop at least once, so a burst of them cannot hold timers back."""
    fake = FakeAPI()
    others_ran: list[bool] = []
    async with open_client(fake) as client, anyio.create_task_group() as group:

        async def submitter() -> None:
            await client.submit("a fox")
            others_ran.append(bool(ticks))

        async def other() -> None:
            ticks.append(None)

        ticks: list[None] = []
        group.start_soon(submitter)
        group.start_soon(other)
    assert others_ran == [True]
