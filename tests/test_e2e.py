"""The SDK end to end against the simulator over real loopback sockets, on asyncio and trio."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Iterator

import anyio
import httpx
import pytest

from banana2_async import (
    AsyncBanana2,
    AuthenticationError,
    GenerationResult,
    InsufficientCreditsError,
    SubmissionUncertainError,
    TaskFailedError,
    TaskHandle,
)
from banana2_async.testing import DEFAULT_API_KEY, DEFAULT_CREDITS, DROPPED, Fault, Simulator, SimulatorServer

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def shared_server() -> Iterator[SimulatorServer]:
    """One loopback server for the module (starting one per test would cost more than the tests)."""
    with Simulator(speed=1000, seed=21).serve() as server:
        yield server


@pytest.fixture
def server(shared_server: SimulatorServer) -> Iterator[SimulatorServer]:
    """The shared server with a clean slate: no faults, zeroed counters, the default account at full credits."""
    sim = shared_server.simulator
    sim.clear_faults()
    sim.reset_stats()
    sim.add_account(DEFAULT_API_KEY, credits=DEFAULT_CREDITS)
    yield shared_server
    sim.clear_faults()


@pytest.fixture
def sim(server: SimulatorServer) -> Simulator:
    """The simulator behind the server."""
    return server.simulator


@pytest.fixture
async def client(server: SimulatorServer) -> AsyncIterator[AsyncBanana2]:
    """An SDK client over loopback, polling at the simulator's pace."""
    async with server.client(seed=1) as sdk:
        yield sdk


async def _settle(
    client: AsyncBanana2, handles: list[TaskHandle]
) -> tuple[list[GenerationResult], list[BaseException]]:
    results: list[GenerationResult] = []
    errors: list[BaseException] = []
    async for handle in client.as_completed(handles):
        try:
            results.append(await handle)
        except TaskFailedError as exc:
            errors.append(exc)
    return results, errors


async def _submit_many(client: AsyncBanana2, prompts: list[str]) -> list[TaskHandle]:
    handles: dict[int, TaskHandle] = {}

    async def submit(index: int, prompt: str) -> None:
        handles[index] = await client.submit(prompt)

    async with anyio.create_task_group() as group:
        for index, prompt in enumerate(prompts):
            group.start_soon(submit, index, prompt)
    return [handles[index] for index in range(len(prompts))]


def _assert_no_poll_after_the_answer(sim: Simulator) -> None:
    # The poll that sees SUCCESS is the first one at or after the finish time; any later one is wasted.
    for task in sim.tasks():
        if task.task_id in sim.stats.poll_times:
            assert sum(1 for t in task.poll_times if t >= task.finishes) <= 1, task


async def test_fan_out_of_many_tasks(client: AsyncBanana2, sim: Simulator, server: SimulatorServer) -> None:
    """60 concurrent submits each create one task, each settles with its image URL, and none is polled after done."""
    prompts = [f"fan-out {index}" for index in range(60)]
    handles = await _submit_many(client, prompts)
    results, errors = await _settle(client, handles)

    assert errors == []
    assert sorted(result.task_id for result in results) == sorted(handle.task_id for handle in handles)
    assert all(len(result.images) == 1 for result in results)
    assert all(result.images[0].startswith(f"{server.base_url}/results/") for result in results)
    stats = sim.stats
    assert stats.tasks_per_prompt == dict.fromkeys(prompts, 1)
    assert stats.count("generate") == 60
    assert stats.credits_spent == 60 * 20
    assert all(stats.polls(handle.task_id) for handle in handles)
    _assert_no_poll_after_the_answer(sim)


async def test_generate_returns_a_result_whose_image_downloads(client: AsyncBanana2, server: SimulatorServer) -> None:
    """generate waits for the task; its result URL serves a PNG of the requested shape from the server."""
    result = await client.generate("a lighthouse at night", aspect_ratio="3:2", resolution="2k")
    assert result.consumed_credits == 20
    assert result.model == "nano-banana-2"
    async with httpx.AsyncClient() as http:
        image = (await http.get(result.images[0])).content
    assert image.startswith(b"\x89PNG")
    assert struct.unpack(">II", image[16:24]) == (2048, 1365)


async def test_an_edit_costs_24_credits(client: AsyncBanana2, sim: Simulator) -> None:
    """client.edit sends an edit task and is charged 24 credits."""
    result = await client.edit("make it night", images=["https://example.com/day.png"])
    assert result.type == "edit"
    assert result.consumed_credits == 24
    assert sim.stats.credits_spent == 24


@pytest.mark.parametrize(
    "fault",
    [Fault.server_error(after_create=True), Fault.drop(after_create=True), Fault.server_error(502)],
    ids=["500-after-create", "drop-after-create", "502-before-create"],
)
async def test_an_ambiguous_submit_is_reported_and_never_sent_again(
    client: AsyncBanana2, sim: Simulator, fault: Fault
) -> None:
    """A submit whose answer is lost raises SubmissionUncertainError after ONE POST: at most one task is paid."""
    sim.inject(fault, on="generate", times=1)
    with pytest.raises(SubmissionUncertainError) as caught:
        await client.submit("pay once")
    assert caught.value.request.prompt == "pay once"
    stats = sim.stats
    assert stats.count("generate") == 1
    assert stats.tasks_per_prompt.get("pay once", 0) == (1 if fault.after_create else 0)
    assert stats.credits_spent == (20 if fault.after_create else 0)


async def test_a_submit_that_times_out_is_uncertain_and_paid_once(server: SimulatorServer, sim: Simulator) -> None:
    """A submit answered after the client's read timeout raises SubmissionUncertainError; the one task exists."""
    sim.inject(Fault.slow(30), on="generate", times=1)
    async with server.client(timeout=httpx.Timeout(5.0, read=0.1)) as client:
        with pytest.raises(SubmissionUncertainError):
            await client.submit("slow answer")
    assert sim.stats.count("generate") == 1
    assert sim.stats.tasks_per_prompt == {"slow answer": 1}


async def test_a_burst_of_429_on_submit_is_retried_and_creates_one_task(client: AsyncBanana2, sim: Simulator) -> None:
    """429 on submit means the server refused it: the SDK waits Retry-After, retries, and one task is created."""
    sim.inject(Fault.rate_limit(0.01), on="generate", times=3)
    result = await client.generate("refused first")
    assert result.images
    stats = sim.stats
    assert stats.requests[("generate", 429)] == 3
    assert stats.requests[("generate", 200)] == 1
    assert stats.tasks_per_prompt == {"refused first": 1}


async def test_dropped_connections_during_polls_are_survived(client: AsyncBanana2, sim: Simulator) -> None:
    """Polls whose connection drops are retried later: every task still settles with its result."""
    rule = sim.inject(Fault.drop(), on="status", probability=0.3, times=15)
    handles = await _submit_many(client, [f"drops {index}" for index in range(12)])
    results, errors = await _settle(client, handles)
    assert (len(results), errors) == (12, [])
    assert rule.fired > 0
    assert sim.stats.count("status", DROPPED) == rule.fired


async def test_a_burst_of_429_on_polls_pauses_and_recovers(client: AsyncBanana2, sim: Simulator) -> None:
    """A burst of 429s (with Retry-After) on polls holds the poller back; every task then settles."""
    rule = sim.inject(Fault.rate_limit(0.02), on="status", times=20)
    handles = await _submit_many(client, [f"burst {index}" for index in range(10)])
    results, errors = await _settle(client, handles)
    assert (len(results), errors) == (10, [])
    assert rule.fired == 20
    assert sim.stats.count("status", 429) == 20


@pytest.mark.slow
async def test_429_without_retry_after_is_survived(client: AsyncBanana2, sim: Simulator) -> None:
    """A 429 without Retry-After on a poll makes the SDK back off on its own, then the task settles."""
    sim.inject(Fault.rate_limit(None), on="status", times=1)
    result = await client.generate("no hint")
    assert result.images
    assert sim.stats.count("status", 429) == 1


async def test_failed_tasks_raise_task_failed_with_the_servers_message(client: AsyncBanana2, sim: Simulator) -> None:
    """Tasks that end FAILED raise TaskFailedError carrying the message; the others succeed."""
    sim.inject(Fault.fail_task("content policy violation"), times=2)
    handles = await _submit_many(client, [f"mixed {index}" for index in range(6)])
    results, errors = await _settle(client, handles)
    assert len(results) == 4
    assert len(errors) == 2
    for error in errors:
        assert isinstance(error, TaskFailedError)
        assert "content policy violation" in str(error)
        assert sim.task(error.task_id).status == "FAILED"


async def test_transient_poll_errors_are_retried(client: AsyncBanana2, sim: Simulator) -> None:
    """500s, errors inside HTTP 200 envelopes and odd in-flight statuses on polls do not fail the task."""
    sim.inject(Fault.server_error(), on="status", times=2)
    sim.inject(Fault.envelope_error(500, "try again"), on="status", times=2)
    sim.inject(Fault.in_flight_statuses(["QUEUED", "WARMING_UP"]), times=1)
    sim.inject(Fault.extra_fields(), on="status", probability=0.5)
    result = await client.generate("bumpy road")
    assert result.images
    assert sim.stats.count("status", 500) == 2


async def test_too_few_credits_raise_before_any_task(client: AsyncBanana2, sim: Simulator) -> None:
    """A 402 on submit raises InsufficientCreditsError and creates nothing."""
    sim.set_credits(10)
    with pytest.raises(InsufficientCreditsError):
        await client.submit("too expensive")
    assert sim.stats.tasks_created == 0


async def test_status_and_track_follow_a_task_submitted_elsewhere(
    client: AsyncBanana2, server: SimulatorServer
) -> None:
    """A task created by another program is read with status() and awaited with track()."""
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {DEFAULT_API_KEY}"}) as http:
        response = await http.post(f"{server.base_url}/api/generate", json={"prompt": "made elsewhere"})
    task_id = response.json()["data"]["task_id"]
    info = await client.status(task_id)
    assert info.task_id == task_id
    result = await client.track(task_id)
    assert result.task_id == task_id
    assert result.images


async def test_a_revoked_key_fails_pending_handles(client: AsyncBanana2, sim: Simulator) -> None:
    """When the key stops working mid-task, polls get 401 and the pending handle raises AuthenticationError."""
    handle = await client.submit("key revoked")
    sim.remove_account(DEFAULT_API_KEY)
    with pytest.raises(AuthenticationError):
        await handle


async def test_the_in_process_client_runs_the_same_flow(sim: Simulator) -> None:
    """Simulator.client gives an SDK client over the in-process transport that runs tasks end to end."""
    sim.inject(Fault.drop(), on="status", times=1)
    async with sim.client() as client:
        result = await client.generate("no sockets")
    assert result.images[0].startswith(f"{sim.base_url}/results/")
    assert sim.stats.count("status", DROPPED) == 1
