"""B1's minimal in-process transport: answers ``GET /api/status`` from a precomputed table.

Every answer body is built before a round starts, so what a round measures is
the client, not the fake. The table also keeps the round's books: the polls
each task got, the schedule slip of each poll and the ideal poll count.

Slip needs each poll's due time. The per-task baseline tells the table its due
times itself. The SDK's poller draws its intervals from ``random.Random(seed)``
in the order it registers tasks and receives answers; nothing awaits between
the transport's answer and that draw, so the table mirrors the draws with a
generator of the same seed, in the same order, and knows every due time
without looking inside the client. `TaskTable.mirror_errors` counts polls that
arrived earlier than the mirrored due time, which would show the mirror out of
step (the poller never polls early).

Memory measurements leave this module's allocations out (`FAKE_FILE`).
"""

from __future__ import annotations

import json
import math
import random
import time
from array import array
from collections.abc import Callable
from typing import Final

import httpx

__all__ = ["BASE_URL", "FAKE_FILE", "HEADERS", "STATUS_URL", "TableTransport", "TaskTable"]

FAKE_FILE: Final = __file__
BASE_URL: Final = "https://bench.banana2.invalid"
STATUS_URL: Final = f"{BASE_URL}/api/status"
API_KEY: Final = "sk-bench-0000"
HEADERS: Final = {"Authorization": f"Bearer {API_KEY}"}

_PREFIX: Final = b"task_id="
_EARLY: Final = -0.002


def _envelope(data: dict[str, object]) -> bytes:
    return json.dumps({"code": 200, "message": "success", "data": data}, separators=(",", ":")).encode()


class TaskTable:
    """N tasks: ids, durations, registration offsets, answer bodies, and the books of a round.

    Times are ``time.monotonic()`` seconds, the clock anyio and asyncio read.
    """

    def __init__(
        self,
        n: int,
        *,
        durations: tuple[float, float],
        interval: tuple[float, float],
        ramp: float,
        seed: int,
    ) -> None:
        rng = random.Random(seed)
        self.n = n
        self.interval = interval
        self.ids = [f"n82bench{index:07d}nb2" for index in range(n)]
        self.index = {task_id: index for index, task_id in enumerate(self.ids)}
        self.duration = array("d", (rng.uniform(*durations) for _ in range(n)))
        # Registrations spread evenly over `ramp` seconds, as if submitted at a steady pace.
        self.offset = array("d", (ramp * index / n for index in range(n)))
        self.running = [
            _envelope({"task_id": task_id, "type": "text-to-image", "status": "IN_PROGRESS"}) for task_id in self.ids
        ]
        self.done = [
            _envelope(
                {
                    "task_id": task_id,
                    "status": "SUCCESS",
                    "type": "text-to-image",
                    "model": "nano-banana-2",
                    "consumed_credits": 20,
                    "response": [f"https://cdn.banana2.invalid/{task_id}.png"],
                    "request": {"prompt": "a benchmark"},
                    "created_at": "2025-03-20T10:00:00Z",
                }
            )
            for task_id in self.ids
        ]
        self.finish = array("d", [math.inf]) * n
        self.registered = array("d", [math.nan]) * n
        self.resolved = array("d", [math.nan]) * n
        self.polls = array("l", [0]) * n
        self.due = array("d", [math.nan]) * n
        self.drawn = array("d", [0.0]) * n
        self.draws = array("l", [0]) * n
        self.ideal = array("l", [0]) * n
        self.slips = array("d")
        self.resolved_count = 0
        self.polled_once = 0
        # Called once every task is resolved, and once every task has been polled.
        self.on_all_resolved: Callable[[], object] | None = None
        self.on_all_polled: Callable[[], object] | None = None
        self.mirror_errors = 0
        self.mirror: random.Random | None = None

    def start_mirror(self, seed: int) -> None:
        """Mirror the interval draws of an SDK poller built with ``seed=seed``."""
        self.mirror = random.Random(seed)

    def mirrored(self) -> float:
        """The SDK poller's next interval draw."""
        assert self.mirror is not None
        return self.mirror.uniform(*self.interval)

    def register(self, index: int, now: float) -> None:
        """Task ``index`` was submitted at ``now``: it finishes its duration later."""
        self.registered[index] = now
        self.finish[index] = now + self.duration[index]

    def schedule(self, index: int, now: float, interval: float) -> None:
        """Task ``index``'s next poll is due ``interval`` after ``now``."""
        self.due[index] = now + interval
        drawn = self.drawn[index] + interval
        self.drawn[index] = drawn
        draws = self.draws[index] + 1
        self.draws[index] = draws
        if not self.ideal[index] and drawn >= self.duration[index]:
            # A poller without slip, on the same draws, would see the task done at this poll.
            self.ideal[index] = draws

    def resolve(self, index: int, now: float) -> None:
        """The client noticed that task ``index`` is done."""
        if math.isnan(self.resolved[index]):
            self.resolved[index] = now
            self.resolved_count += 1
            if self.resolved_count == self.n and self.on_all_resolved is not None:
                self.on_all_resolved()

    def answer(self, task_id: str, now: float) -> bytes:
        """The body of a poll of ``task_id`` at ``now``, booking the poll."""
        index = self.index[task_id]
        polls = self.polls[index]
        if not polls:
            self.polled_once += 1
            if self.polled_once == self.n and self.on_all_polled is not None:
                self.on_all_polled()
        self.polls[index] = polls + 1
        slip = now - self.due[index]
        self.slips.append(slip)
        if slip < _EARLY:
            self.mirror_errors += 1
        if now >= self.finish[index]:
            return self.done[index]
        if self.mirror is not None:
            self.schedule(index, now, self.mirrored())
        return self.running[index]

    def ideal_polls(self, seed: int) -> int:
        """Polls a slip-free poller would have sent on the same draws.

        A task that finished before its observed draws added up to its
        duration (slip stretched its intervals) gets fresh draws for the rest.
        """
        extra = random.Random(seed)
        total = 0
        for index in range(self.n):
            ideal = self.ideal[index]
            if not ideal:
                drawn, ideal = self.drawn[index], self.draws[index]
                while drawn < self.duration[index]:
                    drawn += extra.uniform(*self.interval)
                    ideal += 1
            total += ideal
        return total

    def notice_latencies(self) -> list[float]:
        """For each resolved task: resolved minus finished, in seconds."""
        return [
            resolved - finish
            for resolved, finish in zip(self.resolved, self.finish, strict=True)
            if resolved == resolved
        ]


_CONTENT_TYPE: Final = (b"content-type", b"application/json")


class TableTransport(httpx.AsyncBaseTransport):
    """Answers every request with the table's body for its ``task_id``; never awaits."""

    def __init__(self, table: TaskTable) -> None:
        self.table = table

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Book the poll and answer it from the table."""
        query = request.url.query
        task_id = query[query.index(_PREFIX) + len(_PREFIX) :].split(b"&", 1)[0].decode()
        body = self.table.answer(task_id, time.monotonic())
        return httpx.Response(
            200,
            headers=[_CONTENT_TYPE, (b"content-length", str(len(body)).encode())],
            stream=httpx.ByteStream(body),
        )
