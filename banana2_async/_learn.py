"""How long tasks take, learned from the tasks seen finishing: where a new task's first poll goes.

Polling from the moment of submit spends most polls on tasks that cannot be
done yet. `DurationLearner` keeps, per kind of task (its type and
resolution), the durations of the last `WINDOW` tasks seen finishing, and
places a new task's first poll at

    min(median, fastest + lead)

seconds after its submit, kept within ``[floor, MAX_FIRST_POLL]``: the median
of the recent durations, but never more than ``lead`` (the mean poll interval)
after the fastest recent task finished, so a task as fast as the fastest
waits no longer to be noticed than under the plain interval schedule. After
the first poll, the interval schedule takes over.

What a poll tells is an interval, not a duration: a task found done was done
somewhere after the last poll that found it running. A sample counts as the
middle of that interval. A task found done at its *first* poll says only that
it took less than that: it counts as `EARLY_SHARE` of that time, which pulls
the first poll earlier the more often that happens.

The speed of the API can change at once. Two rules let the window follow
within a few tasks instead of `WINDOW`:

- Tasks in a row found done at their first poll, so many that the window
  gives such a run less than `UNLIKELY` a chance (each as likely as the share
  of the window done by its first poll): the API sped up. The window keeps
  only them, each counted at half its time; each task seen running past its
  first poll then replaces one of these guesses. With first polls at the
  median this takes eight or nine in a row, with first polls below every
  known duration two.
- `RUN` tasks in a row that ran longer than nine in ten of the window's (a
  chance of 1 in 10,000): the API slowed down. The window keeps only them.

Pure: no clock, no I/O; times are seconds since the task's submit.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Hashable
from typing import Final, Generic, TypeVar

__all__ = [
    "COLD",
    "EARLY_SHARE",
    "MAX_FIRST_POLL",
    "MIN_SAMPLES",
    "RUN",
    "SLOW_QUANTILE",
    "UNLIKELY",
    "WINDOW",
    "DurationLearner",
    "Durations",
]

K = TypeVar("K", bound=Hashable)

# The latest a first poll is placed, in seconds after the submit, however slow tasks have been.
MAX_FIRST_POLL: Final = 60.0
# How many recent tasks of a kind the schedule learns from.
WINDOW: Final = 32
# Until this many tasks of a kind are seen finishing, a new one is first polled one interval on.
COLD: Final = 3
# With fewer than this, a first poll comes no later than the fastest.
MIN_SAMPLES: Final = 8
# A task found done at its first poll, at t seconds, counts as having taken this share of t.
EARLY_SHARE: Final = 0.75
# This many tasks in a row slower than nine in ten of the window mean that the API slowed down.
RUN: Final = 4
SLOW_QUANTILE: Final = 0.9
# A run of tasks found done at their first poll that the window gives less than this chance means a speed-up.
UNLIKELY: Final = 0.01


class Durations:
    """The recent durations of one kind of task, in seconds, and what they say about the next one."""

    __slots__ = ("_chance", "_early", "_guesses", "_samples", "_sorted")

    def __init__(self) -> None:
        # In arrival order: (duration, when its first poll found it done, or None if a poll found it running).
        self._samples: deque[tuple[float, float | None]] = deque()
        self._sorted: list[float] = []
        # The current run of tasks found done at their first poll: how many, and the window's chance of it.
        self._early = 0
        self._chance = 1.0
        # How many of the window's oldest samples are guesses (after a speed-up).
        self._guesses = 0

    def __len__(self) -> int:
        return len(self._samples)

    def add(self, *, running_at: float | None, done_at: float) -> None:
        """Learn from a task found done ``done_at`` seconds after its submit.

        ``running_at`` is when the last poll that found it running was sent;
        ``None`` when its first poll found it done.
        """
        done_at = max(done_at, 0.0)
        if running_at is None or running_at <= 0:
            # As likely as the share of the window done by then (counted with one more either way).
            self._chance *= (bisect.bisect_right(self._sorted, done_at) + 1) / (len(self._sorted) + 2)
            self._early += 1
            self._push(done_at * EARLY_SHARE, done_at)
            if self._chance < UNLIKELY:
                # Faster than the window thought: start again from these, counted at half their time.
                run = list(self._samples)[-self._early :]
                self._reset([(first / 2, first) for _, first in run if first is not None])
                self._guesses = len(self._samples)
            return
        self._early, self._chance = 0, 1.0
        self._push((running_at + done_at) / 2, None)
        if self._slowed_down():
            self._reset(list(self._samples)[-RUN:])
        elif self._guesses:
            # A task seen running past its first poll takes the place of the oldest guess.
            self._forget_oldest()

    def first_poll(self, *, lead: float, floor: float, cap: float = MAX_FIRST_POLL) -> float | None:
        """Seconds after its submit to poll a new task first; ``None`` until `MIN_SAMPLES` are known."""
        ordered = self._sorted
        if len(ordered) < COLD and not self._guesses:
            return None
        if len(ordered) < MIN_SAMPLES:
            # Too few to tell how far below the fastest the next may be: no later than the fastest.
            return max(floor, min(cap, ordered[0]))
        median = ordered[(len(ordered) - 1) // 2]
        # The fewer known, the less the fastest of them says of how fast the next may be: the less lead.
        lead *= min(1.0, len(ordered) / WINDOW)
        return max(floor, min(cap, median, ordered[0] + lead))

    def median(self) -> float | None:
        """The median of the recent durations; ``None`` when there are none."""
        ordered = self._sorted
        return ordered[(len(ordered) - 1) // 2] if ordered else None

    def _push(self, duration: float, first: float | None) -> None:
        self._samples.append((duration, first))
        bisect.insort(self._sorted, duration)
        if len(self._samples) > WINDOW:
            self._forget_oldest()

    def _forget_oldest(self) -> None:
        oldest, _ = self._samples.popleft()
        del self._sorted[bisect.bisect_left(self._sorted, oldest)]
        self._guesses = max(0, self._guesses - 1)

    def _slowed_down(self) -> bool:
        samples = self._samples
        if len(samples) < 2 * MIN_SAMPLES:
            # Too few to tell a slower API from the slow end of this one.
            return False
        latest = list(samples)[-RUN:]
        if any(first is not None for _, first in latest):
            return False
        older = sorted(duration for duration, _ in list(samples)[:-RUN])
        return min(duration for duration, _ in latest) > older[int(SLOW_QUANTILE * (len(older) - 1))]

    def _reset(self, samples: list[tuple[float, float | None]]) -> None:
        self._samples = deque(samples)
        self._sorted = sorted(duration for duration, _ in samples)
        self._early, self._chance = 0, 1.0
        self._guesses = 0


class DurationLearner(Generic[K]):
    """Per kind of task (a key such as ``("text-to-image", "4k")``), its recent `Durations`.

    Args:
        lead: how long after the fastest recent task a first poll may come,
            in seconds: the mean poll interval.
        floor: the earliest a first poll comes: the shortest poll interval.
        cap: the latest a first poll comes, however slow tasks have been.
    """

    __slots__ = ("_cap", "_floor", "_kinds", "_lead")

    def __init__(self, *, lead: float, floor: float, cap: float = MAX_FIRST_POLL) -> None:
        self._lead = lead
        self._floor = floor
        self._cap = max(cap, floor)
        self._kinds: dict[K, Durations] = {}

    def __repr__(self) -> str:
        return f"<DurationLearner {len(self._kinds)} kinds>"

    def learn(self, key: K, *, running_at: float | None, done_at: float) -> None:
        """A task of kind ``key`` was found done; see `Durations.add`."""
        durations = self._kinds.get(key)
        if durations is None:
            durations = self._kinds[key] = Durations()
        durations.add(running_at=running_at, done_at=done_at)

    def first_poll(self, key: K) -> float | None:
        """Seconds after its submit to poll a new task of kind ``key`` first; ``None``: not known yet."""
        durations = self._kinds.get(key)
        if durations is None:
            return None
        return durations.first_poll(lead=self._lead, floor=self._floor, cap=self._cap)

    def typical(self, key: K) -> float | None:
        """How long tasks of kind ``key`` typically take (the median), in seconds; ``None``: not known yet."""
        durations = self._kinds.get(key)
        return None if durations is None else durations.median()

    def expected_done(self, key: K | None, *, submitted_at: float, running_at: float | None, now: float) -> float:
        """When a task is expected done, on the caller's clock: to rank its polls under a rate limit.

        A task of a known kind is expected done a typical duration after
        ``submitted_at``; one of a kind not known yet (or ``key`` ``None``), at
        ``now``. Never sooner than ``lead`` after ``running_at``, when a poll
        last found it running, so that an overdue task does not take every turn.
        """
        typical = None if key is None else self.typical(key)
        expected = now if typical is None else submitted_at + typical
        if running_at is not None:
            expected = max(expected, running_at + self._lead)
        return expected

    def kinds(self) -> dict[K, Durations]:
        """Every kind seen so far, and its durations."""
        return dict(self._kinds)
