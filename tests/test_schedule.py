"""The pure schedule: due times, jitter, no catch-up after a stall, backoff, the heap, the rate budget.

Plain synchronous tests: the clock is a number the test moves, randomness a seeded `random.Random`.
"""

from __future__ import annotations

import itertools
import math
import random
import statistics
import tracemalloc
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from banana2_async._schedule import MAX_BACKOFF, PollSchedule, RateBudget, TimerHeap, parse_interval


def schedule(interval: tuple[float, float] = (2.0, 3.0), seed: int = 1) -> PollSchedule[str]:
    """A schedule of string keys with a seeded random source."""
    return PollSchedule(interval, random.Random(seed))


# -- parse_interval ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (2, (2.0, 2.0)),
        (0.001, (0.001, 0.001)),
        ((2, 3), (2.0, 3.0)),
        ([1.5, 1.5], (1.5, 1.5)),
        ((0.001, 0.002), (0.001, 0.002)),
    ],
)
def test_parse_interval_accepts_seconds_and_pairs(value: Any, expected: tuple[float, float]) -> None:
    """A number means a fixed interval; a (low, high) pair a range; both come back as floats."""
    parsed = parse_interval(value)
    assert parsed == expected
    assert all(isinstance(part, float) for part in parsed)


@pytest.mark.parametrize(
    "value",
    [
        0,
        -1,
        0.0,
        (0, 1),
        (3, 2),
        (-1, 1),
        (1, math.inf),
        math.inf,
        math.nan,
        (math.nan, 1),
        True,
        (1,),
        (1, 2, 3),
        ("a", "b"),
        None,
        "23",
        b"23",
        "2.5",
    ],
)
def test_parse_interval_rejects_everything_else(value: Any) -> None:
    """Zero, negative, reversed, infinite, NaN, bools, wrong lengths, strings and None raise ValueError."""
    with pytest.raises(ValueError, match="poll_interval"):
        parse_interval(cast(Any, value))


# -- the first poll and the jitter --------------------------------------------------------------------


def test_first_poll_is_one_interval_after_add() -> None:
    """A new task is first due one drawn interval after it was added, never at once."""
    sched = schedule((2.0, 3.0))
    when = sched.add("a", now=100.0)
    assert 102.0 <= when <= 103.0
    assert sched.due_time("a") == when
    assert sched.pop_due(101.999) == []
    assert sched.pop_due(when) == ["a"]


def test_add_immediately_is_due_now() -> None:
    """``immediately=True`` (tracking a known task) makes the first poll due at once."""
    sched = schedule()
    assert sched.add("a", now=5.0, immediately=True) == 5.0
    assert sched.pop_due(5.0) == ["a"]


def test_intervals_are_drawn_uniformly_within_the_range() -> None:
    """Every drawn interval lies in [low, high] and the draws spread evenly over the range."""
    sched = schedule((2.0, 3.0), seed=42)
    draws = [sched.draw() for _ in range(20_000)]
    assert min(draws) >= 2.0
    assert max(draws) <= 3.0
    assert min(draws) < 2.01
    assert max(draws) > 2.99
    assert statistics.fmean(draws) == pytest.approx(2.5, abs=0.01)
    # Ten equal bins: uniform draws put about a tenth in each.
    bins = [0] * 10
    for value in draws:
        bins[min(9, int((value - 2.0) * 10))] += 1
    assert all(1_800 <= count <= 2_200 for count in bins), bins


def test_a_fixed_interval_is_exact() -> None:
    """With low == high every interval is exactly that."""
    sched = schedule((1.5, 1.5))
    assert {sched.draw() for _ in range(100)} == {1.5}
    assert sched.add("a", now=10.0) == 11.5
    assert sched.polled("a", sent_at=11.5) == 13.0


def test_the_random_source_makes_runs_reproducible() -> None:
    """Two schedules seeded alike draw the same intervals."""
    first, second = schedule(seed=7), schedule(seed=7)
    assert [first.draw() for _ in range(20)] == [second.draw() for _ in range(20)]


# -- due order and re-scheduling -------------------------------------------------------------------


def test_pop_due_returns_due_keys_earliest_first_and_removes_them() -> None:
    """Only keys due at ``now`` come out, in due order; they are not due again until rescheduled."""
    sched = schedule((1.0, 1.0))
    sched.add("c", now=3.0)
    sched.add("a", now=1.0)
    sched.add("b", now=2.0)
    assert sched.next_time() == 2.0
    assert sched.pop_due(3.5) == ["a", "b"]
    assert sched.due_time("a") is None
    assert "a" not in sched
    assert "c" in sched
    assert len(sched) == 1
    assert sched.pop_due(3.5) == []
    assert sched.pop_due(4.0) == ["c"]
    assert sched.next_time() is None


def test_pop_due_honours_a_limit() -> None:
    """``limit`` caps how many due keys come out; the rest stay due."""
    sched = schedule((1.0, 1.0))
    for index in range(5):
        sched.add(f"k{index}", now=float(index))
    assert sched.pop_due(100.0, limit=2) == ["k0", "k1"]
    assert sched.pop_due(100.0, limit=10) == ["k2", "k3", "k4"]


def test_next_poll_is_one_interval_after_the_poll_was_sent() -> None:
    """After an answer the task is due one fresh interval after the moment its poll was sent."""
    sched = schedule((2.0, 3.0))
    sched.add("a", now=0.0)
    (key,) = sched.pop_due(3.0)
    when = sched.polled(key, sent_at=3.0)
    assert 5.0 <= when <= 6.0
    assert sched.due_time("a") == when


def test_no_catch_up_burst_after_a_stall() -> None:
    """A poller stalled for a long time polls each overdue task once, then one interval after that poll."""
    sched = schedule((2.0, 3.0))
    for index in range(10):
        sched.add(f"t{index}", now=0.0)
    # The loop stalls from t=0 until t=100: every task is overdue by ~40 intervals.
    due = sched.pop_due(100.0)
    assert sorted(due) == [f"t{index}" for index in range(10)]
    for key in due:
        assert 102.0 <= sched.polled(key, sent_at=100.0) <= 103.0
    # Nothing is due again before a whole interval has passed since those polls.
    assert sched.pop_due(101.999) == []
    assert len(sched.pop_due(103.0)) == 10


def test_each_task_keeps_its_own_time() -> None:
    """Polling one task does not move another task's due time."""
    sched = schedule((2.0, 3.0))
    when_b = sched.add("b", now=0.0)
    sched.add("a", now=0.0, immediately=True)
    (key,) = sched.pop_due(0.0)
    sched.polled(key, sent_at=0.0)
    sched.failed(key, sent_at=3.0)
    assert sched.due_time("b") == when_b


@settings(max_examples=200, deadline=None)
@given(
    low=st.floats(0.01, 5.0),
    spread=st.floats(0.0, 5.0),
    steps=st.lists(st.tuples(st.floats(0.0, 50.0), st.booleans()), min_size=1, max_size=60),
    seed=st.integers(0, 2**32),
)
def test_a_task_is_never_polled_sooner_than_its_interval(
    low: float, spread: float, steps: list[tuple[float, bool]], seed: int
) -> None:
    """Whatever the stalls and failures, two polls of a task are at least ``low`` apart."""
    sched: PollSchedule[str] = PollSchedule((low, low + spread), random.Random(seed))
    now = 0.0
    sent: dict[str, list[float]] = {"a": [], "b": []}
    sched.add("a", now)
    sched.add("b", now, immediately=True)
    for advance, fails in steps:
        now += advance
        for key in sched.pop_due(now):
            sent[key].append(now)
            if fails:
                sched.failed(key, sent_at=now)
            else:
                sched.polled(key, sent_at=now)
    for times in sent.values():
        # A rounding error's slack: the clock here is a sum of floats.
        assert all(later - earlier >= low * (1 - 1e-9) for earlier, later in itertools.pairwise(times))


# -- backoff ---------------------------------------------------------------------------------------


def test_failures_back_off_exponentially_per_task_up_to_the_cap() -> None:
    """Each consecutive failure doubles the wait, capped at MAX_BACKOFF; an answer resets it."""
    sched = schedule((1.0, 1.0))
    sched.add("a", now=0.0)
    waits = []
    now = 0.0
    for count in range(1, 10):
        sched.pop_due(math.inf)
        when = sched.failed("a", sent_at=now)
        waits.append(when - now)
        assert sched.failures("a") == count
        now = when
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, MAX_BACKOFF, MAX_BACKOFF, MAX_BACKOFF]
    sched.pop_due(math.inf)
    assert sched.polled("a", sent_at=now) == now + 1.0
    assert sched.failures("a") == 0
    sched.pop_due(math.inf)
    assert sched.failed("a", sent_at=now) == now + 1.0


def test_backoff_is_per_task() -> None:
    """One task's failures do not lengthen another task's wait."""
    sched = schedule((1.0, 1.0))
    sched.add("a", now=0.0)
    sched.add("b", now=0.0)
    for _ in range(5):
        sched.pop_due(math.inf)
        sched.failed("a", sent_at=10.0)
        sched.polled("b", sent_at=10.0)
    assert sched.failures("a") == 5
    assert sched.failures("b") == 0
    assert sched.due_time("a") == 26.0
    assert sched.due_time("b") == 11.0


def test_backoff_is_jittered_within_the_doubled_range() -> None:
    """The k-th consecutive failure waits between 2**(k-1) * low and 2**(k-1) * high."""
    sched = schedule((2.0, 3.0), seed=3)
    sched.add("a", now=0.0)
    for count in range(1, 5):
        sched.pop_due(math.inf)
        wait = sched.failed("a", sent_at=0.0)
        assert 2.0 * 2 ** (count - 1) <= wait <= 3.0 * 2 ** (count - 1)


def test_backoff_never_waits_less_than_the_interval() -> None:
    """With an interval longer than MAX_BACKOFF, a failed poll still waits at least the interval."""
    sched = schedule((100.0, 100.0))
    sched.add("a", now=0.0)
    sched.pop_due(math.inf)
    assert sched.failed("a", sent_at=100.0) >= 200.0


def test_a_servers_retry_after_is_waited_at_least() -> None:
    """A failed poll with the server's Retry-After waits that long, or the backoff if that is longer."""
    sched = schedule((1.0, 1.0))
    sched.add("a", now=0.0)
    sched.pop_due(math.inf)
    assert sched.failed("a", sent_at=10.0, retry_after=30.0) == 40.0
    sched.pop_due(math.inf)
    assert sched.failed("a", sent_at=40.0, retry_after=0.5) == 42.0
    sched.pop_due(math.inf)
    assert sched.failed("a", sent_at=42.0, retry_after=None) == 46.0


def test_a_huge_number_of_failures_does_not_overflow() -> None:
    """Thousands of failures in a row keep the wait at the cap."""
    sched = schedule((1.0, 1.0))
    sched.add("a", now=0.0)
    for _ in range(3_000):
        sched.pop_due(math.inf)
        wait = sched.failed("a", sent_at=0.0)
    assert wait == MAX_BACKOFF


def test_discard_forgets_the_task_and_its_failures() -> None:
    """A discarded task is no longer due, its failure count is gone; discarding twice is harmless."""
    sched = schedule((1.0, 1.0))
    sched.add("a", now=0.0)
    sched.pop_due(math.inf)
    sched.failed("a", sent_at=0.0)
    sched.discard("a")
    sched.discard("a")
    sched.discard("never-added")
    assert "a" not in sched
    assert sched.failures("a") == 0
    assert sched.pop_due(math.inf) == []
    assert sched.next_time() is None


# -- TimerHeap ------------------------------------------------------------------------------------


def test_timer_heap_retiming_replaces_the_due_time() -> None:
    """Setting a key again moves it; its old time no longer counts."""
    timers: TimerHeap[str] = TimerHeap()
    timers.set("a", 5.0)
    timers.set("b", 7.0)
    timers.set("a", 9.0)
    assert len(timers) == 2
    assert timers.due_time("a") == 9.0
    assert timers.next_time() == 7.0
    assert timers.pop_due(8.0) == ["b"]
    assert timers.pop_due(8.5) == []
    assert timers.pop_due(9.0) == ["a"]
    assert len(timers) == 0
    assert timers.next_time() is None


def test_timer_heap_skips_discarded_keys() -> None:
    """A discarded key is skipped when its entry surfaces, in next_time and pop_due alike."""
    timers: TimerHeap[str] = TimerHeap()
    for index in range(5):
        timers.set(f"k{index}", float(index))
    timers.discard("k0")
    timers.discard("k1")
    timers.discard("missing")
    assert "k0" not in timers
    assert timers.due_time("k0") is None
    assert timers.next_time() == 2.0
    assert timers.pop_due(10.0) == ["k2", "k3", "k4"]


def test_timer_heap_moving_back_and_forth_pops_a_key_once() -> None:
    """A key re-set to an earlier time, including one it had before, comes out once."""
    timers: TimerHeap[str] = TimerHeap()
    timers.set("a", 1.0)
    timers.set("a", 2.0)
    timers.set("a", 1.0)
    assert timers.pop_due(5.0) == ["a"]
    assert timers.pop_due(5.0) == []


def _allocated_by(action: Any) -> int:
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        keep = action()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    del keep
    return after - before


def test_timer_heap_stays_bounded_when_keys_are_retimed_forever() -> None:
    """Re-timing a few keys 50,000 times keeps the heap small: stale entries are compacted away."""

    def churn() -> TimerHeap[int]:
        timers: TimerHeap[int] = TimerHeap()
        for step in range(50_000):
            timers.set(step % 10, float(step))
        return timers

    # Unbounded, the heap would hold 50,000 entries (about 6 MB); bounded it holds under a hundred.
    # The slack is the interpreter's free lists, which keep some freed tuples and floats.
    assert _allocated_by(churn) < 500_000


def test_timer_heap_shrinks_when_keys_are_discarded() -> None:
    """Discarding most keys compacts the heap instead of keeping their entries around."""

    def fill_and_discard() -> TimerHeap[int]:
        timers: TimerHeap[int] = TimerHeap()
        for key in range(20_000):
            timers.set(key, float(key))
        for key in range(19_990):
            timers.discard(key)
        return timers

    def dict_alone() -> dict[int, float]:
        # What any key -> time mapping keeps after the same churn: a dict does not shrink when emptied.
        times: dict[int, float] = {}
        for key in range(20_000):
            times[key] = float(key)
        for key in range(19_990):
            del times[key]
        return times

    # 20,000 stale entries left in the heap would weigh about 2.5 MB; free lists keep a few hundred KB.
    assert _allocated_by(fill_and_discard) - _allocated_by(dict_alone) < 500_000


def test_timer_heap_compaction_keeps_order_and_times() -> None:
    """After many compactions the live keys still come out in due order at their latest times."""
    timers: TimerHeap[int] = TimerHeap()
    rng = random.Random(5)
    latest: dict[int, float] = {}
    for _ in range(10_000):
        key = rng.randrange(50)
        when = rng.uniform(0, 1_000)
        timers.set(key, when)
        latest[key] = when
    for key in range(0, 50, 3):
        timers.discard(key)
        latest.pop(key, None)
    assert len(timers) == len(latest)
    assert timers.pop_due(math.inf) == sorted(latest, key=latest.__getitem__)


# -- RateBudget -----------------------------------------------------------------------------------


def test_rate_budget_without_a_rate_never_waits() -> None:
    """With no rate limit, requests wait only for a pause."""
    budget = RateBudget(None)
    assert all(budget.reserve(0.0) == 0.0 for _ in range(1_000))


def test_rate_budget_is_a_token_bucket() -> None:
    """A burst of ``burst`` requests goes at once; after it each waits 1/rate more; tokens refill."""
    budget = RateBudget(10.0)
    assert budget.burst == 10.0
    assert [budget.reserve(0.0) for _ in range(10)] == [0.0] * 10
    assert budget.reserve(0.0) == pytest.approx(0.1)
    assert budget.reserve(0.0) == pytest.approx(0.2)
    # One second later the bucket has refilled by ten tokens, and two were owed.
    assert budget.reserve(1.0) == 0.0
    waits = [budget.reserve(1.0) for _ in range(8)]
    assert waits[:7] == [0.0] * 7
    assert waits[7] == pytest.approx(0.1)


def test_rate_budget_refill_is_capped_at_the_burst() -> None:
    """A long idle time does not bank more than ``burst`` requests."""
    budget = RateBudget(2.0, burst=3)
    budget.reserve(0.0)
    assert [budget.reserve(1_000.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert budget.reserve(1_000.0) == pytest.approx(0.5)


def test_rate_budget_burst_is_at_least_one() -> None:
    """A slow rate still lets one request through at once."""
    budget = RateBudget(0.5)
    assert budget.burst == 1.0
    assert budget.reserve(0.0) == 0.0
    assert budget.reserve(0.0) == pytest.approx(2.0)


def test_pause_holds_every_request_until_it_ends() -> None:
    """A 429 pause makes every reservation wait out the rest of the pause."""
    budget = RateBudget(None)
    budget.pause(10.0, 5.0)
    assert budget.paused_until == 15.0
    assert budget.pause_remaining(11.0) == 4.0
    assert budget.reserve(11.0) == 4.0
    assert budget.reserve(14.5) == 0.5
    assert budget.reserve(15.0) == 0.0
    assert budget.pause_remaining(20.0) == 0.0


def test_pause_is_never_shortened() -> None:
    """A shorter pause asked for later does not cut an earlier, longer one short; a longer one extends it."""
    budget = RateBudget(None)
    budget.pause(0.0, 10.0)
    budget.pause(1.0, 2.0)
    assert budget.pause_remaining(1.0) == 9.0
    budget.pause(1.0, -5.0)
    assert budget.pause_remaining(1.0) == 9.0
    budget.pause(5.0, 20.0)
    assert budget.pause_remaining(5.0) == 20.0


def test_pause_and_rate_combine() -> None:
    """A request waits for the longer of the pause and its rate share."""
    budget = RateBudget(1.0)
    assert budget.reserve(0.0) == 0.0
    assert budget.reserve(0.0) == pytest.approx(1.0)
    budget.pause(0.0, 5.0)
    assert budget.reserve(0.0) == 5.0


def test_a_fresh_budget_is_not_paused() -> None:
    """Nothing is paused before the first 429."""
    budget = RateBudget(None)
    assert budget.pause_remaining(0.0) == 0.0
    assert budget.pause_remaining(-1e9) == 0.0


@pytest.mark.parametrize("rate", [0, 0.0, -1, math.nan, True, "5", [5]])
def test_rate_budget_rejects_a_rate_that_is_not_a_positive_number(rate: Any) -> None:
    """Zero, negative, NaN, bools and non-numbers raise ValueError naming rate_limit."""
    with pytest.raises(ValueError, match="rate_limit"):
        RateBudget(cast(Any, rate))


def test_token_wait_is_the_time_until_a_whole_token() -> None:
    """With the burst spent, the next token is 1/rate away, less the time since; taking one starts the count again."""
    budget = RateBudget(10.0, burst=2)
    assert budget.token_wait(0.0) == 0.0
    budget.take(0.0)
    budget.take(0.0)
    assert budget.token_wait(0.0) == pytest.approx(0.1)
    assert budget.token_wait(0.04) == pytest.approx(0.06)
    assert budget.token_wait(0.1) == 0.0
    budget.take(0.1)
    assert budget.token_wait(0.1) == pytest.approx(0.1)
    # Idle for long, the bucket holds only ``burst`` tokens.
    budget.take(100.0)
    budget.take(100.0)
    assert budget.token_wait(100.0) == pytest.approx(0.1)


def test_token_wait_asks_nothing_of_a_rounding_error() -> None:
    """Refilled to within a rounding error of a whole token, a token is in hand: no sleep of a femtosecond."""
    budget = RateBudget(3.0, burst=1)
    budget.take(0.0)
    assert budget.token_wait(1 / 3 - 1e-15) == 0.0


def test_token_wait_includes_the_pause_and_take_does_not_wait() -> None:
    """A pause holds the token back; `token_wait` says so and changes no tokens, `take` never waits."""
    budget = RateBudget(10.0, burst=1)
    budget.pause(0.0, 2.0)
    assert budget.token_wait(0.5) == 1.5
    assert budget.token_wait(0.5) == 1.5
    assert budget.token_wait(2.0) == 0.0
    budget.take(2.0)
    assert budget.token_wait(2.0) == pytest.approx(0.1)


def test_without_a_rate_only_the_pause_is_waited() -> None:
    """With no rate, `token_wait` is the pause alone and `take` spends nothing."""
    budget = RateBudget(None)
    for _ in range(100):
        budget.take(0.0)
    assert budget.token_wait(0.0) == 0.0
    budget.pause(0.0, 3.0)
    assert budget.token_wait(1.0) == 2.0
