"""The gate of `_throttle.py` under a rate limit: who goes next, the foreground's share, cancellation, the 429 pause.

Most tests hold the line with a short 429 pause until every waiter has joined, one at a time (trio
runs tasks started together in a random order), then read the ORDER of the grants, which the line
decides and no timing changes. On trio the clock is virtual.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import pytest
from _fake_api import FakeAPI, open_client, wait_until

from banana2_async._schedule import RateBudget
from banana2_async._throttle import Throttle

pytestmark = [pytest.mark.anyio, pytest.mark.virtual_clock]


def gate(rate: float | None, *, burst: float | None = 1) -> Throttle:
    """A gate of ``rate`` requests a second with a burst of one unless told otherwise."""
    return Throttle(RateBudget(rate, burst=burst), rng=random.Random(1))


def recorder(throttle: Throttle, granted: list[str]) -> Callable[[str, float | None], Coroutine[Any, Any, None]]:
    """A coroutine function that waits at ``throttle`` and then appends its name to ``granted``."""

    async def wait(name: str, priority: float | None) -> None:
        await throttle.acquire(priority)
        granted.append(name)

    return wait


async def test_without_a_rate_limit_acquire_never_yields() -> None:
    """With no rate limit, a request of any priority goes at once, without even a checkpoint."""
    throttle = gate(None)
    with anyio.CancelScope() as scope:
        scope.cancel()
        for priority in (None, 0.0, 5.0, -1.0, None):
            await throttle.acquire(priority)
    assert throttle.waiting == 0


async def test_tokens_in_hand_go_at_once_and_the_next_request_waits() -> None:
    """With a burst of five, five requests go without a checkpoint; a sixth waits, and cancelled leaves no trace."""
    throttle = gate(100.0, burst=5)
    with anyio.CancelScope() as scope:
        scope.cancel()
        for priority in (None, 1.0, None, 0.0, 2.0):
            await throttle.acquire(priority)
        await throttle.acquire(None)
        pytest.fail("a request past the burst went at once")  # pragma: no cover
    assert throttle.waiting == 0
    started = anyio.current_time()
    await throttle.acquire(3.0)
    assert anyio.current_time() - started < 0.5


async def test_grants_keep_to_the_rate() -> None:
    """Thirty waiters at 100 requests a second: the k-th is granted no sooner than k/100 s after the first."""
    throttle = gate(100.0)
    times: list[float] = []

    async def wait(priority: float | None) -> None:
        times.append(await throttle.acquire(priority))

    async with anyio.create_task_group() as group:
        for n in range(30):
            group.start_soon(wait, None if n % 4 == 0 else float(n % 3))
    times.sort()
    assert all(later - times[0] >= k / 100 - 1e-6 for k, later in enumerate(times))
    assert throttle.waiting == 0


async def test_grants_follow_priority_and_give_the_foreground_one_in_three() -> None:
    """Polls go highest priority first (ties in arrival order), and every third grant is a waiting submit's."""
    throttle = gate(200.0)
    granted: list[str] = []
    wait = recorder(throttle, granted)
    priorities = [0.0, 2.0, 1.0, 2.0, 0.0, 3.0, 1.0, 0.5, 2.0, 0.0, 1.0, 3.0]
    throttle.rate_limited(0.2)
    async with anyio.create_task_group() as group:
        for n, priority in enumerate(priorities):
            group.start_soon(wait, f"poll{n}", priority)
            await anyio.wait_all_tasks_blocked()
            if n % 4 == 3:
                group.start_soon(wait, f"submit{n // 4}", None)
                await anyio.wait_all_tasks_blocked()
        assert throttle.waiting == 15
    polls = [f"poll{n}" for n in sorted(range(len(priorities)), key=lambda n: (-priorities[n], n))]
    submits = ["submit0", "submit1", "submit2"]
    expected = [*polls[0:2], submits[0], *polls[2:4], submits[1], *polls[4:6], submits[2], *polls[6:]]
    assert granted == expected


async def test_a_submit_behind_48_waiting_polls_goes_within_three_grants() -> None:
    """A submit that arrives while 48 polls wait is among the next three grants, not the 49th."""
    throttle = gate(200.0)
    granted: list[str] = []
    wait = recorder(throttle, granted)
    joined_at: list[int] = []

    async def submit() -> None:
        joined_at.append(len(granted))
        await wait("submit", None)

    async with anyio.create_task_group() as group:
        for n in range(48):
            group.start_soon(wait, f"poll{n}", float(n % 5))
        await wait_until(lambda: len(granted) >= 5)
        group.start_soon(submit)
    # One poll may have been granted and not yet have run when the submit joined.
    assert granted.index("submit") - joined_at[0] <= 3
    assert len(granted) == 49


async def test_cancelling_the_granter_mid_sleep_leaves_the_others_served() -> None:
    """The first waiter sleeps for the next token on everyone's behalf; cancelled then, the others are still served."""
    throttle = gate(20.0)
    await throttle.acquire()
    granted: list[str] = []
    wait = recorder(throttle, granted)
    granter = anyio.CancelScope()

    async def first() -> None:
        with granter:
            await wait("granter", 9.0)

    async with anyio.create_task_group() as group:
        group.start_soon(first)
        await anyio.wait_all_tasks_blocked()
        for name, priority in (("a", 1.0), ("b", None), ("c", 0.0)):
            group.start_soon(wait, name, priority)
        await anyio.wait_all_tasks_blocked()
        assert throttle.waiting == 4
        granter.cancel()
    assert sorted(granted) == ["a", "b", "c"]
    assert throttle.waiting == 0


async def test_cancelled_granters_one_after_another_never_strand_the_line() -> None:
    """Cancelling whoever holds the granter's role, again and again, still gets every other waiter served."""
    throttle = gate(20.0)
    granted: list[str] = []
    wait = recorder(throttle, granted)
    scopes: list[anyio.CancelScope] = []

    async def doomed(n: int) -> None:
        # A pause makes sure it waits, even if a token came free since the last grant.
        throttle.rate_limited(0.05)
        with anyio.CancelScope() as scope:
            scopes.append(scope)
            await wait(f"doomed{n}", 10.0 + n)

    async with anyio.create_task_group() as group:
        # Each doomed waiter joins an empty line, so it takes the role, and is cancelled mid-sleep.
        for n in range(5):
            group.start_soon(doomed, n)
            await anyio.wait_all_tasks_blocked()
            group.start_soon(wait, f"kept{n}", float(n))
            await anyio.wait_all_tasks_blocked()
            assert throttle.waiting == 2
            scopes[-1].cancel()
            await wait_until(lambda: throttle.waiting == 0)
    assert sorted(granted) == [f"kept{n}" for n in range(5)]
    assert throttle.waiting == 0


async def test_a_successor_cancelled_before_taking_the_role_hands_it_on() -> None:
    """The waiter woken to take the granter's role, cancelled before it does, wakes the next one instead."""
    throttle = gate(100.0)
    granted: list[str] = []
    scopes: dict[str, anyio.CancelScope] = {}

    async def wait(name: str) -> None:
        with anyio.CancelScope() as scope:
            scopes[name] = scope
            await throttle.acquire(None)
            granted.append(name)
            if name == "first":
                # The first was the granter and granted itself: it has just handed the role to "second".
                scopes["second"].cancel()

    throttle.rate_limited(0.05)
    async with anyio.create_task_group() as group:
        for name in ("first", "second", "third"):
            group.start_soon(wait, name)
            await anyio.wait_all_tasks_blocked()
    assert granted == ["first", "third"]
    assert throttle.waiting == 0


async def test_a_cancelled_waiter_leaves_the_line_and_takes_no_token() -> None:
    """A poll cancelled while it waits is never granted, and the others go one token apart, none skipped."""
    throttle = gate(50.0)
    granted: list[str] = []
    times: list[float] = []
    scopes: dict[str, anyio.CancelScope] = {}

    async def wait(name: str, priority: float) -> None:
        with anyio.CancelScope() as scope:
            scopes[name] = scope
            times.append(await throttle.acquire(priority))
            granted.append(name)

    pause = throttle.rate_limited(0.1)
    started = anyio.current_time()
    async with anyio.create_task_group() as group:
        for n in range(5):
            group.start_soon(wait, f"p{n}", float(n))
            await anyio.wait_all_tasks_blocked()
        scopes["p4"].cancel()
        scopes["p2"].cancel()
        await anyio.wait_all_tasks_blocked()
        assert throttle.waiting == 3
    assert granted == ["p3", "p1", "p0"]
    assert times[0] >= started + pause - 1e-6
    # Three grants take two token intervals (40 ms) after the pause; had the cancelled taken theirs, four (80 ms).
    assert 0.04 - 1e-6 <= times[-1] - times[0] < 0.07


@pytest.mark.parametrize("rate", [None, 100.0])
async def test_the_429_pause_holds_every_request(rate: float | None) -> None:
    """After a 429, no request goes before the pause ends, whatever its lane or priority, with or without a rate."""
    throttle = gate(rate, burst=10)
    pause = throttle.rate_limited(0.1)
    started = anyio.current_time()
    times: list[float] = []

    async def wait(priority: float | None) -> None:
        times.append(await throttle.acquire(priority))

    async with anyio.create_task_group() as group:
        for priority in (None, 5.0, 0.0, None):
            group.start_soon(wait, priority)
    assert min(times) >= started + pause - 1e-6


async def test_a_429_while_the_granter_sleeps_holds_the_line_too() -> None:
    """A pause that begins while waiters wait for a token holds them until it ends."""
    throttle = gate(10.0)
    await throttle.acquire()
    times: list[float] = []

    async def wait(priority: float | None) -> None:
        times.append(await throttle.acquire(priority))

    async with anyio.create_task_group() as group:
        for priority in (1.0, None):
            group.start_soon(wait, priority)
        await anyio.sleep(0.02)
        pause_ends = anyio.current_time() + throttle.rate_limited(0.3)
    assert min(times) >= pause_ends - 1e-6


async def test_under_a_client_rate_limit_a_submit_is_not_stuck_behind_polls() -> None:
    """With ``rate_limit`` set and every poll worker waiting at the gate, a submit is sent within a few requests."""
    fake = FakeAPI(lambda _: ("IN_PROGRESS",))
    async with open_client(fake, rate_limit=50.0, max_concurrent_polls=48, wait_timeout=None) as client:
        # The first submit loads the models: a stall during which tokens pile up, within the burst, for the polls.
        await client.submit("a first fox")
        for n in range(60):
            client.track(f"t{n}")
        # The burst of 50 is spent and the 48 workers wait in line, one grant every 20 ms.
        await wait_until(lambda: len(fake.log) >= 80)
        before = len(fake.log)
        await client.submit("a fox")
        kinds = [kind for _, kind, _ in fake.log[before:]]
        # The third grant after it joined, give or take the tokens a stall of the event loop lets pile up.
        assert kinds.index("submit") <= 5
