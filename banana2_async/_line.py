"""PURE: who goes next through the rate limit: the foreground's share, and the polls by priority.

`Line` holds the requests waiting for a token of the client's rate budget and
says which one the next token goes to. It reads no clock and does no I/O: the
gate (`Throttle`) asks it at the moment a token is free.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from typing import Final

__all__ = ["FOREGROUND_SHARE", "Line"]

FOREGROUND_SHARE: Final = 1 / 3
"""The least share of grants the foreground gets while polls wait too: one in three."""

# A float sum of shares that should make a whole credit may fall short of one by a rounding error.
_WHOLE: Final = 1.0 - 1e-9


class Line:
    """Requests waiting for the rate budget, in two lanes, and the choice of which goes next.

    The **foreground** lane (submits, a user's own ``status()`` calls) is first
    come first served. The **poll** lane goes by priority, higher first, first
    come first served among equal priorities; a NaN priority ranks lowest.

    While both lanes wait, the oldest foreground request goes first when it
    has waited longer than every waiting poll: between the lanes, first come
    first served. Otherwise the best-ranked poll goes, except that the
    foreground gets at least one grant in ``share`` (`FOREGROUND_SHARE`, one
    in three): each grant made while foreground requests wait adds ``share`` to
    a credit, capped at one, and a whole credit gives the grant to the
    foreground, which spends it. The credit grows only while the foreground
    waits, so it never piles up. A lane with nothing waiting leaves every grant
    to the other.

    `join` returns a ticket; `pick` removes and returns the ticket of the next
    grant; `leave` takes a ticket out without a grant (a cancelled waiter).
    """

    __slots__ = ("_arrivals", "_credit", "_foreground", "_foreground_live", "_heap", "_polls", "_tickets", "share")

    def __init__(self, share: float = FOREGROUND_SHARE) -> None:
        if not 0.0 < share <= 1.0:
            raise ValueError(f"the foreground's share must be in (0, 1], got {share!r}")
        self.share: float = share
        self._credit = 0.0
        self._tickets = itertools.count()
        # Leaving marks a ticket gone; its entry in the deque or heap is skipped when it surfaces.
        self._foreground: deque[int] = deque()
        self._foreground_live: set[int] = set()
        self._polls: dict[int, float] = {}
        self._heap: list[tuple[float, int]] = []
        # The polls in the order they came, to tell the oldest.
        self._arrivals: deque[int] = deque()

    def __repr__(self) -> str:
        return f"<Line foreground={self.foreground_waiting} polls={self.polls_waiting} credit={self._credit:.2f}>"

    def __len__(self) -> int:
        return len(self._foreground_live) + len(self._polls)

    def __contains__(self, ticket: object) -> bool:
        return ticket in self._foreground_live or ticket in self._polls

    @property
    def foreground_waiting(self) -> int:
        """How many foreground requests wait."""
        return len(self._foreground_live)

    @property
    def polls_waiting(self) -> int:
        """How many polls wait."""
        return len(self._polls)

    def join(self, priority: float | None = None) -> int:
        """A request joins the line: a foreground one for ``None``, else a poll of ``priority``; return its ticket."""
        ticket = next(self._tickets)
        if priority is None:
            self._foreground.append(ticket)
            self._foreground_live.add(ticket)
        else:
            rank = -math.inf if math.isnan(priority) else float(priority)
            self._polls[ticket] = rank
            # The ticket, counted up, keeps equal priorities first come first served.
            heapq.heappush(self._heap, (-rank, ticket))
            self._arrivals.append(ticket)
        return ticket

    def leave(self, ticket: int) -> bool:
        """Take ``ticket`` out of the line without a grant; return whether it was waiting."""
        if ticket in self._foreground_live:
            self._foreground_live.remove(ticket)
            if len(self._foreground) > 2 * len(self._foreground_live) + 64:
                self._foreground = deque(t for t in self._foreground if t in self._foreground_live)
            return True
        if self._polls.pop(ticket, None) is not None:
            self._compact_polls()
            return True
        return False

    def peek(self) -> int | None:
        """The ticket `pick` would grant now, left in the line; ``None`` when nobody waits."""
        if self._foreground_next(self._raised_credit()):
            return self._first_foreground()
        return self._first_poll()

    def pick(self) -> int | None:
        """Grant the next request: remove its ticket from the line and return it; ``None`` when nobody waits."""
        credit = self._raised_credit()
        if self._foreground_next(credit):
            ticket = self._first_foreground()
            self._foreground.popleft()
            self._foreground_live.remove(ticket)
            self._credit = max(0.0, credit - 1.0)
            return ticket
        self._credit = credit
        poll = self._first_poll()
        if poll is not None:
            heapq.heappop(self._heap)
            del self._polls[poll]
            self._compact_polls()
        return poll

    def _raised_credit(self) -> float:
        """The credit once this grant's share is added: it grows only while the foreground waits."""
        if self._foreground_live:
            return min(1.0, self._credit + self.share)
        return self._credit

    def _foreground_next(self, credit: float) -> bool:
        if not self._foreground_live:
            return False
        if not self._polls or credit >= _WHOLE:
            return True
        # Tickets are numbered as they come: a smaller one waited longer.
        return self._first_foreground() < self._oldest_poll()

    def _oldest_poll(self) -> int:
        arrivals, polls = self._arrivals, self._polls
        while arrivals[0] not in polls:
            arrivals.popleft()
        return arrivals[0]

    def _compact_polls(self) -> None:
        """Drop the entries of polls gone from the heap and the arrivals once they outnumber the live ones."""
        polls = self._polls
        if len(self._heap) > 2 * len(polls) + 64:
            self._heap = [entry for entry in self._heap if entry[1] in polls]
            heapq.heapify(self._heap)
        if len(self._arrivals) > 2 * len(polls) + 64:
            self._arrivals = deque(ticket for ticket in self._arrivals if ticket in polls)

    def _first_foreground(self) -> int:
        queue, live = self._foreground, self._foreground_live
        while queue[0] not in live:
            queue.popleft()
        return queue[0]

    def _first_poll(self) -> int | None:
        heap, polls = self._heap, self._polls
        while heap and heap[0][1] not in polls:
            heapq.heappop(heap)
        return heap[0][1] if heap else None
