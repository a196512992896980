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

- `RUN` tasks in a row found done at their first poll: the first poll is too
  late. The window keeps only them, each counted at half its time; each
  task seen running past its first poll then replaces one of these guesses.
- `RUN` tasks in a row that ran longer than every other task in the window:
  the API slowed down. The window keeps only them.

Pure: no clock, no I/O; times are seconds since the task's submit.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Hashable
from typing import Final, Generic, TypeVar

__all__ = ["EARLY_SHARE", "MAX_FIRST_POLL", "MIN_SAMPLES", "RUN", "WINDOW", "DurationLearner", "Durations"]

K = TypeVar("K", bound=Hashable)

# The latest a first poll is placed, in seconds after the submit, however slow tasks have been.
MAX_FIRST_POLL: Final = 60.0
# How many recent tasks of a kind the schedule learns from.
WINDOW: Final = 32
# With fewer tasks of a kind than this seen finishing, a first poll comes no later than the fastest.
MIN_SAMPLES: Final = 8
# A task found done at its first poll, at t seconds, counts as having taken this share of t.
EARLY_SHARE: Final = 0.75
# This many tasks in a row that contradict the window mean that the API's speed changed.
RUN: Final = 3


class Durations:
    """The recent durations of one kind of task, in seconds, and what they say about the next one."""

    __slots__ = ("_early", "_guesses", "_samples", "_sorted")

    def __init__(self) -> None:
        # In arrival order: (duration, found done at the first poll).
        self._samples: deque[tuple[float, bool]] = deque()
        self._sorted: list[float] = []
        # Tasks found done at their first poll in a row; the window's first samples that are guesses.
        self._early = 0
        self._guesses = 0

    def __len__(self) -> int:
        return len(self._samples)

    def add(self, *, running_at: float | None, done_at: float) -> None:
        """Learn from a task found done ``done_at`` seconds after its submit.

        ``running_at`` is when the last poll that found it running was sent;
        ``None`` when its first poll found it done.
        """
        early = running_at is None or running_at <= 0
        duration = done_at * EARLY_SHARE if early else (max(running_at or 0.0, 0.0) + done_at) / 2
        self._early = self._early + 1 if early else 0
        self._push(max(duration, 0.0), early)
        if self._early >= RUN:
            # Faster than the window thought: start again from these, counted at half their time.
            latest = [(duration / EARLY_SHARE / 2, True) for duration, _ in list(self._samples)[-RUN:]]
            self._reset(latest)
            self._guesses = RUN
        elif self._slowed_down():
            self._reset(list(self._samples)[-RUN:])
        elif self._guesses and not early:
            # A task seen running past its first poll takes the place of the oldest guess.
            self._forget_oldest()

    def first_poll(self, *, lead: float, floor: float, cap: float = MAX_FIRST_POLL) -> float | None:
        """Seconds after its submit to poll a new task first; ``None`` until `MIN_SAMPLES` are known."""
        ordered = self._sorted
        if len(ordered) < RUN:
            return None
        if len(ordered) < MIN_SAMPLES:
            # Too few to tell how far below the fastest the next may be: no later than the fastest.
            return max(floor, min(cap, ordered[0]))
        median = ordered[(len(ordered) - 1) // 2]
        return max(floor, min(cap, median, ordered[0] + lead))

    def median(self) -> float | None:
        """The median of the recent durations; ``None`` when there are none."""
        ordered = self._sorted
        return ordered[(len(ordered) - 1) // 2] if ordered else None

    def _push(self, duration: float, early: bool) -> None:
        self._samples.append((duration, early))
        bisect.insort(self._sorted, duration)
        if len(self._samples) > WINDOW:
            self._forget_oldest()

    def _forget_oldest(self) -> None:
        oldest, _ = self._samples.popleft()
        del self._sorted[bisect.bisect_left(self._sorted, oldest)]
        self._guesses = max(0, self._guesses - 1)

    def _slowed_down(self) -> bool:
        samples = self._samples
        if len(samples) <= RUN * 2:
            return False
        latest = list(samples)[-RUN:]
        if any(early for _, early in latest):
            return False
        older = max(duration for duration, _ in list(samples)[:-RUN])
        return min(duration for duration, _ in latest) > older

    def _reset(self, samples: list[tuple[float, bool]]) -> None:
        self._samples = deque(samples)
        self._sorted = sorted(duration for duration, _ in samples)
        self._early = 0
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

    def kinds(self) -> dict[K, Durations]:
        """Every kind seen so far, and its durations."""
        return dict(self._kinds)
