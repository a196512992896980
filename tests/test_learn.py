"""The learned first poll (`_learn`), on synthetic durations, without an event loop.

Each test plays tasks through the same loop the poller runs: a first poll
where the learner says (one interval when it knows nothing), then one every
2-3 s until the task is done, then what those polls saw goes back to the
learner.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from banana2_async._learn import COLD, MAX_FIRST_POLL, MIN_SAMPLES, RUN, UNLIKELY, WINDOW, DurationLearner, Durations

LOW, HIGH = 2.0, 3.0
KIND = ("text-to-image", "1k")


def skewed(floor: float, median: float, sigma: float = 0.5) -> Callable[[random.Random], float]:
    """A floor plus a log-normal part: how long image tasks take."""
    return lambda rng: floor + median * math.exp(sigma * rng.gauss(0.0, 1.0))


@dataclass
class Played:
    first_poll: float
    polls: int
    notice: float
    early: bool


def play(
    learner: DurationLearner[tuple[str, str]] | None, duration: float, rng: random.Random, kind: tuple[str, str] = KIND
) -> Played:
    """One task of ``duration`` seconds polled as the poller would; the learner learns from it."""
    first = learner.first_poll(kind) if learner is not None else None
    if first is None:
        first = rng.uniform(LOW, HIGH)
    at, running_at, polls = first, None, 1
    while at < duration:
        running_at, at, polls = at, at + rng.uniform(LOW, HIGH), polls + 1
    if learner is not None:
        learner.learn(kind, running_at=running_at, done_at=at)
    return Played(first, polls, at - duration, running_at is None)


def new_learner() -> DurationLearner[tuple[str, str]]:
    return DurationLearner(lead=(LOW + HIGH) / 2, floor=LOW)


@pytest.mark.parametrize(
    ("floor", "median"),
    [(6.0, 5.0), (9.0, 7.0), (15.0, 12.0)],
    ids=["1k-like", "2k-like", "4k-like"],
)
def test_half_the_polls_and_as_quick_to_notice(floor: float, median: float) -> None:
    """On skewed durations: at most half the polls per task, and the 99th percentile of the time
    from done to noticed at most 0.5 s above the interval schedule's."""
    durations = skewed(floor, median)
    rng = random.Random(7)
    learner = new_learner()
    learned = [play(learner, durations(rng), rng) for _ in range(2000)]
    fixed = [play(None, durations(rng), rng) for _ in range(2000)]

    def p99(runs: list[Played]) -> float:
        return statistics.quantiles([run.notice for run in runs], n=100)[98]

    ratio = statistics.mean(run.polls for run in learned) / statistics.mean(run.polls for run in fixed)
    assert ratio <= 0.5
    assert p99(learned) <= p99(fixed) + 0.5


def test_cold_start_polls_one_interval_on() -> None:
    """A kind never seen finishing gets no learned first poll; a few seen give one no later than the fastest."""
    learner = new_learner()
    assert learner.first_poll(KIND) is None
    for done_at in (30.0, 20.0):
        learner.learn(KIND, running_at=done_at - 2.0, done_at=done_at)
    assert learner.first_poll(KIND) is None
    learner.learn(KIND, running_at=38.0, done_at=40.0)
    assert len(learner.kinds()[KIND]) == COLD < MIN_SAMPLES
    assert learner.first_poll(KIND) == 19.0
    assert learner.first_poll(("edit", "1k")) is None


def test_kinds_are_learned_apart() -> None:
    """4k tasks teach nothing about 1k tasks."""
    learner = new_learner()
    for _ in range(WINDOW):
        learner.learn(("text-to-image", "4k"), running_at=30.0, done_at=32.0)
        learner.learn(KIND, running_at=8.0, done_at=10.0)
    assert learner.first_poll(("text-to-image", "4k")) == 31.0
    assert learner.first_poll(KIND) == 9.0


def test_the_first_poll_is_at_most_the_fastest_plus_one_mean_interval() -> None:
    """Widely spread durations: the median is far out; the first poll comes 2.5 s after the fastest."""
    learner = new_learner()
    for duration in [10.0] + [60.0] * (WINDOW - 1):
        learner.learn(KIND, running_at=duration - 1.0, done_at=duration + 1.0)
    assert learner.first_poll(KIND) == pytest.approx(12.5)


def test_the_first_poll_is_capped_and_floored() -> None:
    """However slow tasks are, the first poll comes within MAX_FIRST_POLL; however fast, one interval's low."""
    slow, fast = new_learner(), new_learner()
    for _ in range(WINDOW):
        slow.learn(KIND, running_at=500.0, done_at=502.0)
        fast.learn(KIND, running_at=0.1, done_at=0.3)
    assert slow.first_poll(KIND) == MAX_FIRST_POLL
    assert fast.first_poll(KIND) == LOW


def test_a_task_done_at_its_first_poll_pulls_the_first_poll_earlier() -> None:
    """Found done at its first poll, a task counts as shorter than that poll: the next first poll comes earlier."""
    learner = new_learner()
    for _ in range(WINDOW):
        learner.learn(KIND, running_at=11.0, done_at=13.0)
    before = learner.first_poll(KIND)
    assert before == 12.0
    learner.learn(KIND, running_at=None, done_at=12.0)
    after = learner.first_poll(KIND)
    assert after is not None
    assert after < before


@pytest.mark.parametrize("factor", [1 / 3, 3.0], ids=["three-times-faster", "three-times-slower"])
def test_the_schedule_recovers_within_a_few_tasks_when_the_api_changes_speed(factor: float) -> None:
    """After a sudden change of speed, within RUN + 3 tasks the first poll is back near where the new speed wants
    it."""
    rng = random.Random(11)
    before, after = skewed(6.0, 5.0), skewed(6.0 * factor, 5.0 * factor)
    learner = new_learner()
    for _ in range(200):
        play(learner, before(rng), rng)
    # Where a learner that only ever saw the new speed puts the first poll.
    settled = new_learner()
    for _ in range(200):
        play(settled, after(rng), rng)
    target = settled.first_poll(KIND)
    assert target is not None
    first_polls = [play(learner, after(rng), rng).first_poll for _ in range(RUN + 3)]
    later = [play(learner, after(rng), rng).first_poll for _ in range(30)]
    # Within a few tasks it is near the target, and stays there. After a speed-up it may come earlier
    # (more polls, never a task noticed later); after a slow-down it is within 35%.
    low = 0.5 if factor < 1 else 0.65
    assert low * target <= first_polls[-1] <= 1.35 * target
    assert low * target <= statistics.median(later) <= 1.35 * target


def ordinary_window(seed: int) -> Durations:
    """A full window of tasks taking 10-11 s, in a shuffled order (sorted, they would look like a slowdown)."""
    durations = Durations()
    spread = [10.0 + n / WINDOW for n in range(WINDOW)]
    random.Random(seed).shuffle(spread)
    for duration in spread:
        durations.add(running_at=duration - 1.0, done_at=duration + 1.0)
    assert len(durations) == WINDOW
    return durations


def test_a_slowdown_is_followed_at_once() -> None:
    """RUN tasks in a row slower than nine in ten of the window replace it."""
    durations = ordinary_window(1)
    for _ in range(RUN):
        durations.add(running_at=29.0, done_at=31.0)
    assert len(durations) == RUN
    assert durations.first_poll(lead=2.5, floor=2.0) == 30.0


def test_fewer_than_run_slow_tasks_in_a_row_are_no_slowdown() -> None:
    """Three slow tasks, then an ordinary one, leave the window as it is."""
    durations = ordinary_window(2)
    for duration in (30.0, 30.0, 30.0, 10.5):
        durations.add(running_at=duration - 1.0, done_at=duration + 1.0)
    assert len(durations) == WINDOW


def test_a_speedup_starts_from_the_tasks_found_done_at_once() -> None:
    """Tasks in a row found done at a first poll that the window says few would be: the window keeps them, at half
    their time, as guesses that tasks seen running afterwards replace one by one."""
    durations = Durations()
    for _ in range(WINDOW):
        durations.add(running_at=19.0, done_at=21.0)
    # Done before every known task: each as likely as 1 in 34, two in a row less than UNLIKELY.
    durations.add(running_at=None, done_at=19.5)
    assert len(durations) == WINDOW
    durations.add(running_at=None, done_at=19.5)
    assert UNLIKELY > (1 / 34) ** 2
    assert len(durations) == 2
    assert durations.first_poll(lead=2.5, floor=2.0) == 9.75
    durations.add(running_at=10.0, done_at=12.0)
    assert len(durations) == 2
    assert sorted(durations._sorted) == [9.75, 11.0]


def test_tasks_found_done_at_a_median_first_poll_are_no_surprise() -> None:
    """With first polls at the median, half the tasks are found done at once: it takes eight in a row or more to
    call that a speed-up."""
    durations = ordinary_window(0)
    assert durations.median() == pytest.approx(10.5, abs=0.05)
    for _ in range(8):
        durations.add(running_at=None, done_at=10.5)
        assert len(durations) == WINDOW
    durations.add(running_at=None, done_at=10.5)
    assert len(durations) == 9


def test_typical_is_the_median_of_the_recent_durations() -> None:
    """typical() is the median of a kind's window; None for a kind never seen finishing."""
    learner = new_learner()
    assert learner.typical(KIND) is None
    for duration in (10.0, 20.0, 30.0, 40.0, 50.0):
        learner.learn(KIND, running_at=duration - 1.0, done_at=duration + 1.0)
    assert learner.typical(KIND) == 30.0


def test_expected_done_is_a_typical_duration_after_submit_and_a_lead_after_the_last_running_poll() -> None:
    """A known kind: submit + median, but never before lead after a poll found it running; unknown: now."""
    learner = new_learner()
    for duration in (10.0, 20.0, 30.0):
        learner.learn(KIND, running_at=duration - 1.0, done_at=duration + 1.0)
    assert learner.expected_done(KIND, submitted_at=100.0, running_at=None, now=101.0) == 120.0
    assert learner.expected_done(KIND, submitted_at=100.0, running_at=125.0, now=126.0) == 127.5
    assert learner.expected_done(None, submitted_at=100.0, running_at=None, now=101.0) == 101.0
    assert learner.expected_done(("edit", "4k"), submitted_at=100.0, running_at=104.0, now=105.0) == 106.5


def test_the_window_is_bounded() -> None:
    """However many tasks finish, a kind keeps WINDOW of them."""
    durations = Durations()
    rng = random.Random(3)
    for _ in range(10 * WINDOW):
        done_at = rng.uniform(10, 20)
        durations.add(running_at=done_at - 2, done_at=done_at)
    assert len(durations) == WINDOW == len(durations._sorted)
