"""Pure scheduling: which task is due when, jitter, backoff, the 429 pause, the rate budget.

Nothing here reads a clock or sleeps: every method that needs the time takes
``now``, and randomness comes from a `random.Random` the caller owns. The
poller is the async shell that calls these and does the I/O.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Hashable
from typing import Final, Generic, TypeVar

from ._retry import backoff

__all__ = ["Interval", "PollSchedule", "RateBudget", "TimerHeap", "parse_interval"]

K = TypeVar("K", bound=Hashable)

Interval = tuple[float, float]

MAX_BACKOFF: Final = 60.0


def parse_interval(value: float | tuple[float, float]) -> Interval:
    """Normalise a poll interval: a number, or ``(low, high)`` with ``0 < low <= high``.

    Raises `ValueError` for anything else.
    """
    if isinstance(value, (bool, str, bytes)):
        raise ValueError("poll_interval must be seconds or a (low, high) pair")
    if isinstance(value, (int, float)):
        low = high = float(value)
    else:
        try:
            low, high = (float(part) for part in value)
        except (TypeError, ValueError):
            raise ValueError("poll_interval must be seconds or a (low, high) pair") from None
    if not (0 < low <= high < float("inf")):
        raise ValueError(f"poll_interval needs 0 < low <= high, got ({low}, {high})")
    return (low, high)


class TimerHeap(Generic[K]):
    """Keys with due times; the earliest first.

    Re-timing or removing a key leaves its old heap entry behind, to be
    skipped when it surfaces; the heap is rebuilt when such leftovers
    outnumber live keys, so it never grows past a small multiple of them.
    """

    __slots__ = ("_at", "_heap", "_seq")

    def __init__(self) -> None:
        self._at: dict[K, float] = {}
        self._heap: list[tuple[float, int, K]] = []
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._at)

    def __contains__(self, key: object) -> bool:
        return key in self._at

    def due_time(self, key: K) -> float | None:
        """When ``key`` is due, or ``None`` if it is not here."""
        return self._at.get(key)

    def set(self, key: K, when: float) -> None:
        """Make ``key`` due at ``when`` (replacing any earlier time)."""
        self._at[key] = when
        heapq.heappush(self._heap, (when, next(self._seq), key))
        if len(self._heap) > 2 * len(self._at) + 64:
            self._compact()

    def discard(self, key: K) -> None:
        """Forget ``key``; a no-op if it is not here."""
        if self._at.pop(key, None) is not None and len(self._heap) > 2 * len(self._at) + 64:
            self._compact()

    def next_time(self) -> float | None:
        """The earliest due time, or ``None`` when empty."""
        heap = self._heap
        while heap:
            when, _, key = heap[0]
            if self._at.get(key) == when:
                return when
            heapq.heappop(heap)
        return None

    def pop_due(self, now: float, limit: int | None = None) -> list[K]:
        """Remove and return the keys due at or before ``now``, earliest first."""
        heap, at = self._heap, self._at
        due: list[K] = []
        while heap and heap[0][0] <= now and (limit is None or len(due) < limit):
            when, _, key = heapq.heappop(heap)
            if at.get(key) == when:
                del at[key]
                due.append(key)
        return due

    def _compact(self) -> None:
        at = self._at
        self._heap = [entry for entry in self._heap if at.get(entry[2]) == entry[0]]
        heapq.heapify(self._heap)


class PollSchedule(Generic[K]):
    """When each task is next polled.

    A task is first due one interval after it is added, or when the caller
    says (a first poll learned from how long tasks take). After each poll it is
    due one freshly drawn interval after the moment that poll was *sent*, so a
    stall never causes a burst of catch-up polls. After a failed poll the wait
    doubles with each consecutive failure, up to `MAX_BACKOFF`.
    """

    __slots__ = ("_failures", "_high", "_low", "_rng", "_timers")

    def __init__(self, interval: Interval, rng: random.Random) -> None:
        self._low, self._high = interval
        self._rng = rng
        self._timers: TimerHeap[K] = TimerHeap()
        self._failures: dict[K, int] = {}

    def __len__(self) -> int:
        return len(self._timers)

    def __contains__(self, key: object) -> bool:
        return key in self._timers

    def draw(self) -> float:
        """One poll interval, drawn uniformly from ``(low, high)``."""
        return self._rng.uniform(self._low, self._high)

    def add(self, key: K, now: float, *, immediately: bool = False, delay: float | None = None) -> float:
        """Schedule a new task's first poll, one interval on or ``delay`` seconds on; return when it is due."""
        when = now if immediately else now + (self.draw() if delay is None else delay)
        self._timers.set(key, when)
        return when

    def discard(self, key: K) -> None:
        """Stop polling ``key``."""
        self._timers.discard(key)
        self._failures.pop(key, None)

    def due_time(self, key: K) -> float | None:
        """When ``key`` is next due, or ``None`` while it is being polled or not here."""
        return self._timers.due_time(key)

    def next_time(self) -> float | None:
        """The earliest due time, or ``None`` when nothing is scheduled."""
        return self._timers.next_time()

    def pop_due(self, now: float, limit: int | None = None) -> list[K]:
        """Take the tasks due at ``now``; each must come back through `polled` or `failed`."""
        return self._timers.pop_due(now, limit)

    def polled(self, key: K, sent_at: float) -> float:
        """Reschedule after a poll that got an answer; return the next due time."""
        self._failures.pop(key, None)
        when = sent_at + self.draw()
        self._timers.set(key, when)
        return when

    def defer(self, key: K, when: float) -> float:
        """Make ``key``, taken by `pop_due` and not polled, due again at ``when``; return ``when``."""
        self._timers.set(key, when)
        return when

    def failed(self, key: K, sent_at: float, *, retry_after: float | None = None) -> float:
        """Reschedule after a poll that failed transiently, backing off; return the next due time.

        ``retry_after``, the server's own hint in seconds, is waited at least.
        """
        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        interval = self.draw()
        # The cap bounds the backoff, never the interval itself.
        delay = max(interval, min(MAX_BACKOFF, interval * float(2 ** min(failures - 1, 16))))
        when = sent_at + max(delay, retry_after or 0.0)
        self._timers.set(key, when)
        return when

    def failures(self, key: K) -> int:
        """How many polls of ``key`` in a row have failed."""
        return self._failures.get(key, 0)


class RateBudget:
    """The one budget every request draws from: an optional rate, and the 429 pause.

    ``rate`` requests per second with bursts of up to ``burst``; ``None``
    means no rate limit, only the pause.
    """

    __slots__ = ("_limited", "_tokens", "_updated", "burst", "paused_until", "pauses", "rate")

    def __init__(self, rate: float | None = None, *, burst: float | None = None) -> None:
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate > 0):
            raise ValueError(f"rate_limit must be a positive number of requests per second, got {rate!r}")
        self.rate: float | None = rate
        self.burst: float = max(1.0, burst if burst is not None else (rate or 1.0))
        self._tokens = self.burst
        self._updated: float | None = None
        self.paused_until: float = float("-inf")
        # 429s in a row, for the backoff of the next pause; and every pause so far.
        self._limited = 0
        self.pauses = 0

    def pause(self, now: float, seconds: float) -> None:
        """Hold every request back until ``now + seconds`` (never shortening a pause)."""
        self.paused_until = max(self.paused_until, now + max(seconds, 0.0))

    def rate_limited(self, now: float, retry_after: float | None, *, rng: random.Random) -> float:
        """A 429 came: pause every request for ``retry_after`` seconds, else for a backoff.

        The backoff grows with each 429 in a row (one second, then about two,
        four, ...) until an answer that is no 429 (`answered`). Returns the
        pause, in seconds.
        """
        self._limited += 1
        self.pauses += 1
        seconds = retry_after if retry_after is not None else backoff(self._limited - 1, rng=rng, base=1.0)
        self.pause(now, seconds)
        return seconds

    def answered(self) -> None:
        """An answer that was no 429 came: the next 429's backoff starts afresh."""
        self._limited = 0

    def pause_remaining(self, now: float) -> float:
        """Seconds left of the current pause."""
        return max(0.0, self.paused_until - now)

    def reserve(self, now: float) -> float:
        """Take one request's share; return how long to wait before sending it.

        First come first served: each call books the next free moment. The
        gate uses it only without a rate; with one it asks `token_wait` and
        `take`, and lets a `Line` choose who gets each token.
        """
        wait = self.pause_remaining(now)
        if self.rate is None:
            return wait
        self._refill(now, self.rate)
        self._tokens -= 1.0
        if self._tokens < 0:
            wait = max(wait, -self._tokens / self.rate)
        return wait

    def token_wait(self, now: float) -> float:
        """Seconds until one request may go: the rest of any pause, and until a whole token is in hand."""
        wait = self.pause_remaining(now)
        if self.rate is None:
            return wait
        self._refill(now, self.rate)
        # A token refilled to within a rounding error of whole is whole: no sleep of a femtosecond.
        if self._tokens < 1.0 - 1e-9:
            wait = max(wait, (1.0 - self._tokens) / self.rate)
        return wait

    def take(self, now: float) -> None:
        """Spend one token at ``now``, when `token_wait` says one is in hand; a no-op without a rate."""
        if self.rate is not None:
            self._refill(now, self.rate)
            self._tokens -= 1.0

    def _refill(self, now: float, rate: float) -> None:
        if self._updated is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._updated) * rate)
        self._updated = now
