"""Bulk runs against the in-process simulator: concurrency, budget, 402, journal resume, events, failures."""

from __future__ import annotations

import collections
import gc
import json
import sqlite3
from collections.abc import AsyncIterable, AsyncIterator, Callable
from pathlib import Path

import anyio
import httpx
import pytest

from banana2_async import (
    APIConnectionError,
    AsyncBanana2,
    AuthenticationError,
    BatchEvent,
    BatchOutcome,
    BudgetExceededError,
    DownloadError,
    EmptyResultError,
    GenerationRequest,
    InsufficientCreditsError,
    InvalidRequestError,
    JournalError,
    NotFoundError,
    SubmissionUncertainError,
    TaskFailedError,
    TaskTimeoutError,
)
from banana2_async._batch import UNREACHABLE_AFTER, plan_batch
from banana2_async._journal import Journal, JournalRow, read_journal
from banana2_async.testing import DEFAULT_API_KEY, Fault, ManualClock, Simulator

pytestmark = pytest.mark.anyio

EDIT = GenerationRequest(prompt="make it night", images=("https://example.com/day.png",))


def _prompts(count: int, tag: str = "p") -> list[str]:
    return [f"{tag} {index}" for index in range(count)]


@pytest.fixture
def sim() -> Simulator:
    """A fast, seeded simulator."""
    return Simulator(speed=1000, seed=11)


@pytest.fixture
async def client(sim: Simulator) -> AsyncIterator[AsyncBanana2]:
    """A client wired in-process to ``sim``."""
    async with sim.client(seed=2) as sdk:
        yield sdk


async def _collect(run: AsyncIterable[BatchOutcome]) -> list[BatchOutcome]:
    return [outcome async for outcome in run]


def _listing(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


def _by_status(outcomes: list[BatchOutcome]) -> dict[str, int]:
    return dict(collections.Counter(outcome.status for outcome in outcomes))


async def test_every_request_settles_once_and_downloads(client: AsyncBanana2, sim: Simulator, tmp_path: Path) -> None:
    """Each request yields one outcome with its request, task id, result and file; each prompt is paid once."""
    prompts = _prompts(12)
    outcomes = await _collect(client.batch([*prompts, EDIT], concurrency=4, dest_dir=tmp_path))
    assert _by_status(outcomes) == {"succeeded": 13}
    assert sorted(outcome.index for outcome in outcomes) == list(range(13))
    for outcome in outcomes:
        assert outcome.ok
        assert outcome.result is not None
        assert outcome.task_id == outcome.result.task_id
        assert outcome.error is None
        assert [path.name for path in outcome.files] == [f"{outcome.task_id}-0.png"]
        assert outcome.files[0].read_bytes().startswith(b"\x89PNG")
    assert {outcome.request.prompt for outcome in outcomes} == {*prompts, EDIT.prompt}
    assert sim.stats.tasks_per_prompt == dict.fromkeys([*prompts, EDIT.prompt], 1)
    assert sim.stats.credits_spent == 12 * 20 + 24


async def test_concurrency_bounds_tasks_in_flight() -> None:
    """Never more than `concurrency` tasks are in flight, and the bound is reached while tasks cannot finish."""
    clock = ManualClock()
    sim = Simulator(speed=1000, seed=3, clock=clock)
    prompts = _prompts(10)
    in_flight = most = submitted = 0
    order: list[str] = []
    async with sim.client() as client:
        run = client.batch(prompts, concurrency=3)
        async for event in run.events():
            order.append(event.kind)
            if event.kind == "submitted":
                # Nothing can finish while the clock stands still: the run is under way.
                assert "running" in repr(run)
                submitted += 1
                in_flight += 1
                most = max(most, in_flight)
            elif event.outcome is not None:
                in_flight -= 1
            elif event.kind == "polled" and (in_flight == 3 or submitted == len(prompts)):
                # The simulated clock moves only once the bound is reached: tasks cannot finish before.
                clock.advance(1.0)
    assert most == 3
    assert order.count("succeeded") == 10


async def test_events_reach_the_callback_and_the_iterator(client: AsyncBanana2, tmp_path: Path) -> None:
    """submitted, polled and succeeded events name the batch's own tasks, through on_event and events() alike."""
    seen: list[BatchEvent] = []
    other = await client.submit("not in the batch")
    run = client.batch(_prompts(4), concurrency=2, on_event=seen.append, journal=tmp_path / "run.db")
    events = [event async for event in run.events()]
    await other
    assert events == seen
    kinds = collections.Counter(event.kind for event in events)
    assert kinds["submitted"] == 4
    assert kinds["succeeded"] == 4
    assert kinds["polled"] >= 4
    task_ids = {event.task_id for event in events if event.kind == "submitted"}
    assert {event.task_id for event in events if event.kind == "polled"} <= task_ids
    assert other.task_id not in task_ids
    for task_id in task_ids:
        kinds_of_task = [event.kind for event in events if event.task_id == task_id]
        assert kinds_of_task[0] == "submitted"
        assert kinds_of_task[-1] == "succeeded"
    assert client.http_client.event_hooks["response"] == []


async def test_the_budget_is_known_and_enforced_before_anything_is_sent(
    client: AsyncBanana2, sim: Simulator, tmp_path: Path
) -> None:
    """A run over max_credits raises BudgetExceededError before any request and before creating its journal."""
    requests: list[GenerationRequest | str] = [*_prompts(3), EDIT]
    run = client.batch(requests, max_credits=83, journal=tmp_path / "run.db")
    plan = await run.dry_run()
    assert (plan.total, plan.submit, plan.credits, plan.job_credits) == (4, 4, 84, 84)
    iterator = aiter(run)
    with pytest.raises(BudgetExceededError) as caught:
        await anext(iterator)
    assert (caught.value.credits, caught.value.max_credits) == (84, 83)
    with pytest.raises(RuntimeError, match="closed"):
        await anext(iterator)
    assert isinstance(caught.value, InvalidRequestError)
    assert sim.stats.count() == 0
    assert _listing(tmp_path) == []
    outcomes = await _collect(client.batch(requests, max_credits=84, journal=tmp_path / "run.db"))
    assert _by_status(outcomes) == {"succeeded": 4}
    assert sim.stats.credits_spent == 84


async def test_a_402_stops_submits_lets_in_flight_finish_and_resumes(tmp_path: Path) -> None:
    """With credits for 3 tasks, the 4th gets a 402: tasks in flight still finish, the rest are unsubmitted, and a
    rerun after a top-up sends exactly those."""
    clock = ManualClock()
    sim = Simulator(speed=1000, seed=4, clock=clock, credits=60)
    prompts = _prompts(8)
    journal = tmp_path / "run.db"
    outcomes: list[BatchOutcome] = []
    async with sim.client() as client:
        async for event in client.batch(prompts, concurrency=4, journal=journal).events():
            if event.outcome is not None:
                outcomes.append(event.outcome)
                # Tasks finish only once the 402 has been seen: they are in flight when it comes.
                clock.advance(1.0)
    statuses = [outcome.status for outcome in outcomes]
    assert statuses.count("succeeded") == 3
    assert statuses.count("unsubmitted") == 5
    assert "failed" not in statuses
    assert statuses.index("succeeded") > statuses.index("unsubmitted")
    for outcome in outcomes:
        if outcome.status == "unsubmitted":
            assert isinstance(outcome.error, InsufficientCreditsError)
            assert outcome.task_id is None
    assert sim.stats.tasks_created == 3
    assert sim.stats.count("generate", 402) >= 1

    rows = await read_journal(journal, [GenerationRequest(prompt=prompt) for prompt in prompts])
    assert rows is not None
    assert collections.Counter(row.state for row in rows) == {"succeeded": 3, "pending": 5}
    sim.set_credits(1000)
    async with sim.client() as client:
        run = client.batch(prompts, concurrency=4, journal=journal)
        assert (await run.dry_run()).submit == 5
        async for event in run.events():
            if event.kind == "polled":
                clock.advance(1.0)
            assert event.outcome is None or event.outcome.ok
    assert sim.stats.tasks_per_prompt == dict.fromkeys(prompts, 1)


async def test_an_uncertain_submit_is_reported_and_never_resent_unless_asked(sim: Simulator, tmp_path: Path) -> None:
    """A submit whose answer is lost is "uncertain"; a rerun reports it again without sending it, and only
    resubmit_uncertain=True sends it again."""
    sim.inject(Fault.server_error(after_create=True), on="generate", times=1)
    prompts = _prompts(5)
    journal = tmp_path / "run.db"
    async with sim.client() as client:
        first = await _collect(client.batch(prompts, concurrency=1, journal=journal))
    assert _by_status(first) == {"uncertain": 1, "succeeded": 4}
    (lost,) = [outcome for outcome in first if outcome.status == "uncertain"]
    assert isinstance(lost.error, SubmissionUncertainError)
    assert lost.error.request == lost.request
    assert sim.stats.tasks_created == 5

    async with sim.client() as client:
        second = await _collect(client.batch(prompts, journal=journal))
        assert [(outcome.index, outcome.status) for outcome in second] == [(lost.index, "uncertain")]
        assert isinstance(second[0].error, SubmissionUncertainError)
        assert sim.stats.tasks_created == 5

        run = client.batch(prompts, journal=journal, resubmit_uncertain=True)
        plan = await run.dry_run()
        assert (plan.submit, plan.uncertain, plan.succeeded, plan.credits) == (1, 0, 4, 20)
        third = await _collect(run)
    assert [(outcome.index, outcome.status) for outcome in third] == [(lost.index, "succeeded")]
    assert sim.stats.tasks_per_prompt[lost.request.prompt] == 2


async def test_a_loop_left_early_without_closing_warns_about_nothing(client: AsyncBanana2) -> None:
    """A run whose loop is left early and never closed holds nothing that warns when it is collected."""
    run = client.batch(_prompts(3))
    async for _ in run.events():
        break
    del run
    gc.collect()


async def test_a_run_left_early_resumes_without_paying_twice(sim: Simulator, tmp_path: Path) -> None:
    """Leaving the loop stops new submits; the next run skips done rows, tracks known task ids, sends the rest."""
    prompts = _prompts(12)
    journal = tmp_path / "run.db"
    async with sim.client() as client:
        run = client.batch(prompts, concurrency=4, journal=journal, dest_dir=tmp_path / "out")
        async with run:
            done = 0
            async for _ in run:
                done += 1
                if done == 3:
                    break
        sent_at_exit = sim.stats.count("generate")
    rows = await read_journal(journal, [GenerationRequest(prompt=prompt) for prompt in prompts])
    assert rows is not None
    states = collections.Counter(row.state for row in rows)
    assert states["succeeded"] >= 3
    assert states["submitting"] == 0
    assert states["submitted"] == sent_at_exit - states["succeeded"]

    tracked: list[BatchEvent] = []
    async with sim.client() as client:
        run = client.batch(prompts, concurrency=4, journal=journal, dest_dir=tmp_path / "out", on_event=tracked.append)
        plan = await run.dry_run()
        assert (plan.succeeded, plan.track, plan.submit) == (
            states["succeeded"],
            states["submitted"],
            states["pending"],
        )
        assert plan.credits == 20 * states["pending"]
        outcomes = await _collect(run)
    assert _by_status(outcomes) == {"succeeded": 12 - states["succeeded"]}
    assert sum(1 for event in tracked if event.kind == "tracked") == states["submitted"]
    assert sim.stats.tasks_per_prompt == dict.fromkeys(prompts, 1)
    assert len(_listing(tmp_path / "out")) == 12


async def test_failed_tasks_are_final_and_skipped_on_resume(sim: Simulator, tmp_path: Path) -> None:
    """A task the server fails is a failed outcome with TaskFailedError; a rerun skips it."""
    sim.inject(Fault.fail_task("content policy violation"), times=2)
    prompts = _prompts(5)
    journal = tmp_path / "run.db"
    async with sim.client() as client:
        outcomes = await _collect(client.batch(prompts, journal=journal))
        assert _by_status(outcomes) == {"failed": 2, "succeeded": 3}
        for outcome in outcomes:
            if outcome.status == "failed":
                assert isinstance(outcome.error, TaskFailedError)
                assert outcome.task_id is not None
        run = client.batch(prompts, journal=journal)
        plan = await run.dry_run()
        assert (plan.failed, plan.succeeded, plan.submit, plan.credits) == (2, 3, 0, 0)
        assert await _collect(run) == []
    assert sim.stats.tasks_created == 5


async def test_a_failed_download_keeps_the_task_for_the_next_run(sim: Simulator, tmp_path: Path) -> None:
    """When only the download fails the outcome carries the result; a rerun tracks the task and downloads it."""
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a directory")
    journal = tmp_path / "run.db"
    async with sim.client() as client:
        (outcome,) = await _collect(client.batch(["one"], journal=journal, dest_dir=blocker / "out"))
        assert outcome.status == "failed"
        assert isinstance(outcome.error, DownloadError)
        assert outcome.result is not None
        (again,) = await _collect(client.batch(["one"], journal=journal, dest_dir=tmp_path / "out"))
    assert again.ok
    assert again.task_id == outcome.task_id
    assert [path.name for path in again.files] == [f"{outcome.task_id}-0.png"]
    assert sim.stats.tasks_created == 1


async def test_a_deadline_leaves_the_task_to_be_tracked_later(tmp_path: Path) -> None:
    """A task past its wait_timeout fails with TaskTimeoutError; the next run tracks it instead of paying again."""
    clock = ManualClock()
    sim = Simulator(speed=1000, seed=7, clock=clock)
    journal = tmp_path / "run.db"
    async with sim.client() as client:
        (late,) = await _collect(client.batch(["slow"], journal=journal, wait_timeout=0.05))
        assert isinstance(late.error, TaskTimeoutError)
        clock.advance(1.0)
        (done,) = await _collect(client.batch(["slow"], journal=journal))
    assert done.ok
    assert done.task_id == late.task_id
    assert sim.stats.tasks_created == 1


async def test_a_task_unknown_to_the_server_is_final(tmp_path: Path) -> None:
    """Tracking a journaled task id the server does not know fails with NotFoundError, and is not tracked again."""
    journal = tmp_path / "run.db"
    async with Simulator(speed=1000, seed=8).client() as client:
        await _collect(client.batch(["elsewhere"], journal=journal))
    conn = sqlite3.connect(journal, isolation_level=None)
    conn.execute("UPDATE requests SET state = 'submitted'")
    conn.close()
    other = Simulator(speed=1000, seed=9)
    async with other.client(not_found_grace=0) as client:
        (outcome,) = await _collect(client.batch(["elsewhere"], journal=journal))
        assert isinstance(outcome.error, NotFoundError)
        assert (await client.batch(["elsewhere"], journal=journal).dry_run()).failed == 1
    assert other.stats.tasks_created == 0


async def test_a_refused_key_stops_new_submits(sim: Simulator, tmp_path: Path) -> None:
    """A 401 on submit makes no task: that request and every later one are unsubmitted, and stay to be sent."""
    sim.remove_account(DEFAULT_API_KEY)
    journal = tmp_path / "run.db"
    async with sim.client() as client:
        outcomes = await _collect(client.batch(_prompts(5), concurrency=1, journal=journal))
    assert _by_status(outcomes) == {"unsubmitted": 5}
    assert all(isinstance(outcome.error, AuthenticationError) for outcome in outcomes)
    assert sim.stats.count("generate") == 1
    rows = await read_journal(journal, [GenerationRequest(prompt=prompt) for prompt in _prompts(5)])
    assert rows is not None
    assert {row.state for row in rows} == {"pending"}


async def test_a_key_revoked_mid_run_fails_tasks_in_flight_and_stops_submits() -> None:
    """A 401 on the polls of tasks in flight fails them with AuthenticationError and stops new submits."""
    clock = ManualClock()
    sim = Simulator(speed=1000, seed=13, clock=clock)
    outcomes: list[BatchOutcome] = []
    async with sim.client() as client:
        run = client.batch(_prompts(6), concurrency=2)
        async for event in run.events():
            if event.kind == "submitted" and sim.stats.tasks_created == 2:
                sim.remove_account(DEFAULT_API_KEY)
            if event.outcome is not None:
                outcomes.append(event.outcome)
    assert _by_status(outcomes) == {"failed": 2, "unsubmitted": 4}
    assert all(isinstance(outcome.error, AuthenticationError) for outcome in outcomes)
    assert sim.stats.tasks_created == 2


async def test_a_rejected_request_is_final_and_a_refused_one_is_retried_next_run(
    sim: Simulator, tmp_path: Path
) -> None:
    """A 400 ends its row; a submit that never got through (a closed connection pool) stays pending."""
    sim.inject(Fault.envelope_error(400, "prompt: not allowed"), on="generate", times=1)
    journal = tmp_path / "run.db"
    async with sim.client() as client:
        (rejected,) = await _collect(client.batch(["bad"], journal=journal))
    assert rejected.status == "failed"
    rows = await read_journal(journal, [GenerationRequest(prompt="bad")])
    assert rows is not None
    assert rows[0].state == "failed"

    sim.inject(Fault.rate_limit(0), on="generate", times=10)
    async with sim.client(max_retries=0) as client:
        (refused,) = await _collect(client.batch(["busy"], journal=tmp_path / "other.db"))
    assert refused.status == "failed"
    rows = await read_journal(tmp_path / "other.db", [GenerationRequest(prompt="busy")])
    assert rows == [JournalRow(0, "pending", error=f"RateLimitError: {refused.error}")]


async def test_a_journal_is_held_by_one_run(tmp_path: Path) -> None:
    """A second run of the same journal while the first holds it raises JournalError(in-use) and sends nothing."""
    clock = ManualClock()
    sim = Simulator(speed=1000, seed=12, clock=clock)
    journal = tmp_path / "run.db"
    async with sim.client() as client:
        first = client.batch(["a", "b"], journal=journal)
        async with first:
            with pytest.raises(JournalError) as caught:
                await _collect(client.batch(["a", "b"], journal=journal))
            assert caught.value.reason == "in-use"
    assert sim.stats.count("generate") <= 2


async def test_a_journal_that_refuses_writes_stops_the_run_before_any_post(sim: Simulator, tmp_path: Path) -> None:
    """If the row before a POST cannot be written, the iteration raises JournalError and nothing is sent."""
    journal_path = tmp_path / "run.db"
    requests = [GenerationRequest(prompt="a"), GenerationRequest(prompt="b")]
    journal, _ = await Journal.open(journal_path, requests)
    await journal.aclose()
    conn = sqlite3.connect(journal_path, isolation_level=None)
    conn.execute("CREATE TRIGGER refuse BEFORE UPDATE ON requests BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    conn.close()
    async with sim.client() as client:
        with pytest.raises(JournalError, match="disk full"):
            await _collect(client.batch(requests, journal=journal_path))
    assert sim.stats.count("generate") == 0


async def test_a_failing_event_callback_stops_the_run(client: AsyncBanana2, sim: Simulator) -> None:
    """An exception in on_event propagates from the loop and no request is sent after it."""

    def explode(event: BatchEvent) -> None:
        if event.kind == "submitted":
            raise ValueError("ui bug")

    with pytest.raises(ValueError, match="ui bug"):
        await _collect(client.batch(_prompts(6), concurrency=1, on_event=explode))
    assert sim.stats.count("generate") == 1


async def test_arguments_are_checked_before_anything_runs(client: AsyncBanana2) -> None:
    """Bad options or requests raise InvalidRequestError at once; a batch runs once and needs an open client."""
    with pytest.raises(InvalidRequestError, match="concurrency"):
        client.batch(["a"], concurrency=0)
    with pytest.raises(InvalidRequestError, match="max_credits"):
        client.batch(["a"], max_credits=-1)
    with pytest.raises(InvalidRequestError, match=r"requests\[1\]: prompt"):
        client.batch(["a", "   "])
    with pytest.raises(InvalidRequestError, match=r"requests\[0\] must be"):
        client.batch([42])  # type: ignore[list-item]
    run = client.batch(["a"])
    assert "new" in repr(run)
    assert run.requests == (GenerationRequest(prompt="a"),)
    iterator = aiter(run)
    assert [outcome.index async for outcome in iterator] == [0]
    assert "closed" in repr(run)
    with pytest.raises(StopAsyncIteration):
        await anext(iterator)
    with pytest.raises(RuntimeError, match="once"):
        run.events()

    closed = client.batch(["a"])
    await closed.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        async with closed:
            pass

    idle = AsyncBanana2(api_key="sk-idle")
    with pytest.raises(RuntimeError, match="async with"):
        await _collect(idle.batch(["a"]))
    await idle.aclose()


async def test_closing_the_client_under_a_run_ends_it(sim: Simulator) -> None:
    """A client closed mid-run fails the tasks in flight and reports unsent requests; the loop ends."""
    clock = ManualClock()
    slow = Simulator(speed=1000, seed=10, clock=clock)
    outcomes: list[BatchOutcome] = []
    async with slow.client() as client:
        async for event in client.batch(_prompts(6), concurrency=2).events():
            if event.kind == "submitted" and slow.stats.tasks_created == 2:
                await client.aclose()
            if event.outcome is not None:
                outcomes.append(event.outcome)
    statuses = collections.Counter(outcome.status for outcome in outcomes)
    assert statuses["failed"] == 2
    assert statuses["failed"] + statuses["unsubmitted"] == 6
    assert slow.stats.tasks_created == 2


def test_plan_of_a_journal() -> None:
    """The plan counts each row by what the run does with it, and the cost of the rows it sends."""
    requests = [GenerationRequest(prompt=str(index)) for index in range(5)] + [EDIT]
    rows = [
        JournalRow(0, "succeeded", "t0"),
        JournalRow(1, "failed", "t1"),
        JournalRow(2, "submitted", "t2"),
        JournalRow(3, "submitting"),
        JournalRow(4, "submitted"),
        JournalRow(5, "pending"),
    ]
    plan = plan_batch(requests, rows)
    assert (plan.succeeded, plan.failed, plan.track, plan.uncertain, plan.submit) == (1, 1, 1, 2, 1)
    assert (plan.credits, plan.job_credits) == (24, 124)
    again = plan_batch(requests, rows, resubmit_uncertain=True)
    assert (again.uncertain, again.submit, again.credits) == (1, 2, 44)


async def test_an_empty_batch_yields_nothing(client: AsyncBanana2) -> None:
    """A batch of no requests finishes at once with an empty plan."""
    run = client.batch([])
    assert await _collect(run) == []
    assert run.plan is not None
    assert run.plan.total == 0


class Unreachable(httpx.AsyncBaseTransport):
    """The simulator, except that a POST fails to connect while ``down`` holds (nothing is sent)."""

    def __init__(self, sim: Simulator, down: Callable[[int], bool]) -> None:
        self._inner = sim.transport()
        self._down = down
        self.posts = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            self.posts += 1
            if self._down(self.posts):
                raise httpx.ConnectError("connection refused", request=request)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


async def test_a_server_that_cannot_be_reached_stops_the_run_early(sim: Simulator, tmp_path: Path) -> None:
    """After a few submits in a row that could not connect, no more are tried; every row not sent is
    unsubmitted, named with the address tried, and left pending for the next run."""
    transport = Unreachable(sim, lambda _: True)
    journal = tmp_path / "run.db"
    prompts = _prompts(10)
    async with AsyncBanana2(
        sim.api_key, base_url="https://unreachable.test", transport=transport, max_retries=0, poll_interval=0.001
    ) as client:
        outcomes = await _collect(client.batch(prompts, concurrency=1, journal=journal))
    assert transport.posts == UNREACHABLE_AFTER
    assert _by_status(outcomes) == {"unsubmitted": 10}
    assert all(isinstance(outcome.error, APIConnectionError) for outcome in outcomes)
    halted = outcomes[-1].error
    assert "could not reach https://unreachable.test" in str(halted)
    assert f"{UNREACHABLE_AFTER} submits in a row were never sent (connect)" in str(halted)
    rows = await read_journal(journal, [GenerationRequest(prompt=prompt) for prompt in prompts])
    assert rows is not None
    assert {row.state for row in rows} == {"pending"}
    assert sim.stats.count() == 0


async def test_a_flaky_connection_does_not_stop_the_run(sim: Simulator) -> None:
    """Submits that cannot connect now and then, never a few in a row, cost their own rows only."""
    transport = Unreachable(sim, lambda post: post % UNREACHABLE_AFTER != 0)
    async with AsyncBanana2(
        sim.api_key, base_url=sim.base_url, transport=transport, max_retries=0, poll_interval=0.001
    ) as client:
        outcomes = await _collect(client.batch(_prompts(6), concurrency=1))
    assert _by_status(outcomes) == {"unsubmitted": 4, "succeeded": 2}
    assert transport.posts == 6


async def test_retry_failed_sends_again_only_rows_that_failed_on_the_server(tmp_path: Path) -> None:
    """Rows whose task failed, or succeeded without images, are skipped by a rerun and planned as retryable;
    with retry_failed=True they are sent (and paid for) again, and nothing else is."""
    sim = Simulator(speed=1000, seed=14)
    sim.inject(Fault.fail_task("content policy violation"), times=1)
    sim.inject(Fault.empty_success([]), times=1)
    prompts = _prompts(4)
    journal = tmp_path / "run.db"
    async with sim.client() as client:
        first = await _collect(client.batch(prompts, concurrency=1, journal=journal))
        assert _by_status(first) == {"failed": 2, "succeeded": 2}
        assert {type(outcome.error) for outcome in first if not outcome.ok} == {TaskFailedError, EmptyResultError}

        skipped = client.batch(prompts, journal=journal)
        plan = await skipped.dry_run()
        assert (plan.failed, plan.retryable, plan.retry_credits, plan.submit, plan.retry) == (2, 2, 40, 0, 0)
        assert await _collect(skipped) == []

        run = client.batch(prompts, journal=journal, retry_failed=True)
        plan = await run.dry_run()
        assert (plan.submit, plan.retry, plan.retryable, plan.credits, plan.failed) == (2, 2, 0, 40, 0)
        assert plan.retry_credits == 40
        again = await _collect(run)
    assert _by_status(again) == {"succeeded": 2}
    assert {outcome.index for outcome in again} == {outcome.index for outcome in first if not outcome.ok}
    failed_prompts = {outcome.request.prompt for outcome in first if not outcome.ok}
    assert sim.stats.tasks_per_prompt == {prompt: 2 if prompt in failed_prompts else 1 for prompt in prompts}
    rows = await read_journal(journal, [GenerationRequest(prompt=prompt) for prompt in prompts])
    assert rows is not None
    assert {row.state for row in rows} == {"succeeded"}
    assert {row.consumed for row in rows} == {20}


async def test_a_rejected_or_unknown_task_is_not_retried(sim: Simulator, tmp_path: Path) -> None:
    """A 400 (no task) is not a failure on the server: retry_failed leaves it, and plans nothing for it."""
    sim.inject(Fault.envelope_error(400, "prompt: not allowed"), on="generate", times=1)
    journal = tmp_path / "run.db"
    async with sim.client() as client:
        await _collect(client.batch(["bad"], journal=journal))
        plan = await client.batch(["bad"], journal=journal, retry_failed=True).dry_run()
    assert (plan.failed, plan.retry, plan.retryable, plan.submit) == (1, 0, 0, 0)


async def test_a_job_grows_by_its_keys_and_refuses_a_changed_paid_row(sim: Simulator, tmp_path: Path) -> None:
    """Rows added to a job (known by their ids) are sent by the next run, the others not again; a row paid for
    whose request changed under the same id stops the run before anything is sent, naming it."""
    journal = tmp_path / "run.db"
    requests = [GenerationRequest(prompt="a cat"), GenerationRequest(prompt="a dog")]
    async with sim.client() as client:
        await _collect(client.batch(requests, journal=journal, keys=["cat", "dog"]))
        grown = [GenerationRequest(prompt="a hen"), *requests]
        run = client.batch(grown, journal=journal, keys=["hen", "cat", "dog"])
        assert (await run.dry_run()).submit == 1
        (added,) = await _collect(run)
        assert (added.index, added.status) == (0, "succeeded")

        changed = [GenerationRequest(prompt="a hen"), GenerationRequest(prompt="a cat, blue"), requests[1]]
        with pytest.raises(JournalError, match=r"row 2 \(id 'cat'\) 'a cat' \(succeeded, task .*changed") as caught:
            await _collect(client.batch(changed, journal=journal, keys=["hen", "cat", "dog"]))
        assert caught.value.reason == "other-job"
    assert sim.stats.tasks_per_prompt == {"a cat": 1, "a dog": 1, "a hen": 1}


async def test_a_run_that_stops_sending_lets_go_of_submits_waiting_to_be_sent_again(
    sim: Simulator, tmp_path: Path
) -> None:
    """When the run stops sending (the server cannot be reached), a submit waiting out a 503's Retry-After is not
    sent again: its row is unsubmitted and pending, and the run ends without waiting for it."""
    posts: list[str] = []

    class Refusing(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            prompt = str(json.loads(request.content)["prompt"])
            posts.append(prompt)
            if prompt == "slow":
                return httpx.Response(503, json={"code": 503, "message": "busy"}, headers={"Retry-After": "30"})
            raise httpx.ConnectError("connection refused", request=request)

    journal = tmp_path / "run.db"
    prompts = ["slow", *_prompts(5)]
    with anyio.fail_after(10):
        async with AsyncBanana2(
            sim.api_key, base_url="https://unreachable.test", transport=Refusing(), max_retries=1
        ) as client:
            outcomes = await _collect(client.batch(prompts, concurrency=4, journal=journal))
    assert _by_status(outcomes) == {"unsubmitted": 6}
    assert posts.count("slow") == 1
    slow = next(outcome for outcome in outcomes if outcome.request.prompt == "slow")
    assert "could not reach https://unreachable.test" in str(slow.error)
    rows = await read_journal(journal, [GenerationRequest(prompt=prompt) for prompt in prompts])
    assert rows is not None
    assert {row.state for row in rows} == {"pending"}
