"""The one gate every request of a client waits at: `RateBudget` applied with anyio's clock."""

from __future__ import annotations

import random

import anyio

from ._schedule import RateBudget

__all__ = ["Throttle"]


class Throttle:
    """The shared gate of a client: its rate limit, and the pause after a 429.

    The wire waits here before every request, poll or submit; a 429 anywhere
    pauses them all, for the server's ``Retry-After`` or a backoff that grows
    with each 429 in a row (`RateBudget.rate_limited`).
    """

    __slots__ = ("_rng", "budget")

    def __init__(self, budget: RateBudget, *, rng: random.Random) -> None:
        self.budget: RateBudget = budget
        self._rng = rng

    def __repr__(self) -> str:
        return f"<Throttle rate={self.budget.rate} paused={self.pause_remaining():.1f}s>"

    async def acquire(self) -> float:
        """Wait until the rate budget and any 429 pause let one request go; return that moment."""
        now = anyio.current_time()
        delay = self.budget.reserve(now)
        while delay > 0:
            await anyio.sleep(delay)
            now = anyio.current_time()
            delay = self.budget.pause_remaining(now)
        return now

    def rate_limited(self, retry_after: float | None) -> float:
        """A 429 came: pause every request; return for how many seconds."""
        return self.budget.rate_limited(anyio.current_time(), retry_after, rng=self._rng)

    def answered(self) -> None:
        """An answer that was no 429 came: the next 429 starts the backoff afresh."""
        self.budget.answered()

    def pause_remaining(self) -> float:
        """Seconds left of the current 429 pause."""
        return self.budget.pause_remaining(anyio.current_time())
