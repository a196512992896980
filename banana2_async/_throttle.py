"""The one gate every request of a client waits at: `RateBudget` and `Line` applied with anyio's clock."""

from __future__ import annotations

import random

import anyio

from ._line import Line
from ._schedule import RateBudget

__all__ = ["Throttle"]


class _Waiter:
    """One request waiting in the line: woken when it is granted, or when the granter's role is free."""

    __slots__ = ("event", "granted")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.granted = False


class Throttle:
    """The shared gate of a client: its rate limit, who goes first under it, and the pause after a 429.

    The wire waits here before every request, poll or submit; a 429 anywhere
    pauses them all, for the server's ``Retry-After`` or a backoff that grows
    with each 429 in a row (`RateBudget.rate_limited`).

    With a rate limit, a request that finds tokens in hand and nobody waiting
    goes at once. Otherwise it joins the `Line`, which picks who gets each
    token at the moment it becomes free: polls by priority, with at least one
    grant in three kept for the foreground (submits, ``status()``). There is
    no task of the gate's own: the first waiter that finds nobody granting
    becomes the granter. It sleeps until the next token, grants the line's
    pick, and repeats until its own ticket is granted; leaving then, or
    cancelled on the way, it wakes the next waiter to take the role over.
    """

    __slots__ = ("_granter", "_line", "_rng", "_waiters", "budget")

    def __init__(self, budget: RateBudget, *, rng: random.Random) -> None:
        self.budget: RateBudget = budget
        self._rng = rng
        self._line = Line()
        self._waiters: dict[int, _Waiter] = {}
        # The ticket of the waiter granting tokens, or None: then the next waiter to look takes the role.
        self._granter: int | None = None

    def __repr__(self) -> str:
        return f"<Throttle rate={self.budget.rate} waiting={len(self._line)} paused={self.pause_remaining():.1f}s>"

    @property
    def waiting(self) -> int:
        """How many requests wait in line for the rate limit."""
        return len(self._line)

    async def acquire(self, priority: float | None = None) -> float:
        """Wait until the rate budget and any 429 pause let one request go; return that moment.

        ``priority`` is ``None`` for a foreground request (a submit, a user's
        ``status()``), else a poll's priority: higher goes first (see `Line`).
        Without a rate limit it makes no difference; only a pause is waited.
        """
        budget = self.budget
        now = anyio.current_time()
        if budget.rate is None:
            delay = budget.reserve(now)
            while delay > 0:
                await anyio.sleep(delay)
                now = anyio.current_time()
                delay = budget.pause_remaining(now)
            return now
        if not self._line and budget.token_wait(now) == 0.0:
            budget.take(now)
            return now
        await self._wait_in_line(priority)
        return anyio.current_time()

    def rate_limited(self, retry_after: float | None) -> float:
        """A 429 came: pause every request; return for how many seconds."""
        return self.budget.rate_limited(anyio.current_time(), retry_after, rng=self._rng)

    def answered(self) -> None:
        """An answer that was no 429 came: the next 429 starts the backoff afresh."""
        self.budget.answered()

    def pause_remaining(self) -> float:
        """Seconds left of the current 429 pause."""
        return self.budget.pause_remaining(anyio.current_time())

    async def _wait_in_line(self, priority: float | None) -> None:
        ticket = self._line.join(priority)
        waiter = self._waiters[ticket] = _Waiter()
        try:
            while not waiter.granted:
                if self._granter is None:
                    self._granter = ticket
                    await self._grant_until(waiter)
                else:
                    await waiter.event.wait()
                    waiter.event = anyio.Event()
        finally:
            self._leave(ticket, waiter)

    async def _grant_until(self, waiter: _Waiter) -> None:
        """As the granter: give each token to the line's pick as it comes free, until ``waiter`` has one."""
        budget, line, waiters = self.budget, self._line, self._waiters
        while not waiter.granted:
            now = anyio.current_time()
            delay = budget.token_wait(now)
            if delay > 0:
                await anyio.sleep(delay)
                continue
            budget.take(now)
            ticket = line.pick()
            if ticket is None:
                raise AssertionError("the granter's own ticket is in the line until it is granted")
            chosen = waiters.pop(ticket)
            chosen.granted = True
            chosen.event.set()

    def _leave(self, ticket: int, waiter: _Waiter) -> None:
        """A waiter goes, granted or cancelled: out of the line, and the granter's role handed on if it is free."""
        if not waiter.granted:
            self._line.leave(ticket)
            del self._waiters[ticket]
        # The role is free when this waiter held it, or when the waiter it was handed to has not taken it yet
        # (this may be that waiter, cancelled): wake the next in line to take it, else nobody would grant.
        if self._granter == ticket or self._granter is None:
            self._granter = None
            successor = self._line.peek()
            if successor is not None:
                self._waiters[successor].event.set()
