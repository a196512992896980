"""What the simulator saw: snapshots of its counters and of its tasks."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["DROPPED", "SimulatedTask", "SimulatorStats"]

DROPPED: Final = 0
"""The status counted for a request whose connection was dropped without an answer."""


@dataclass(frozen=True, slots=True)
class SimulatorStats:
    """The simulator's counters at one moment.

    ``requests`` maps (endpoint, HTTP status) to a count; the endpoint is
    ``"generate"``, ``"status"``, ``"result"`` or ``"other"``, and the status
    is `DROPPED` (0) for a connection closed without an answer.
    ``poll_times`` holds, per task id, the simulator clock at each
    ``GET /api/status`` naming it, whatever the answer. Every counter
    starts from the last `Simulator.reset_stats`.
    """

    requests: Mapping[tuple[str, int], int]
    poll_times: Mapping[str, tuple[float, ...]]
    tasks_per_prompt: Mapping[str, int]
    credits_spent: int
    tasks_created: int

    def count(self, endpoint: str | None = None, status: int | None = None) -> int:
        """Requests seen, optionally only for one endpoint and/or one status."""
        return sum(
            number
            for (seen_endpoint, seen_status), number in self.requests.items()
            if endpoint in (None, seen_endpoint) and status in (None, seen_status)
        )

    def polls(self, task_id: str) -> tuple[float, ...]:
        """The simulator clock at each poll of ``task_id``."""
        return self.poll_times.get(task_id, ())


@dataclass(frozen=True, slots=True)
class SimulatedTask:
    """One task as the simulator holds it.

    ``status`` is what the next poll would report; ``created`` and ``finishes``
    are simulator clock readings.
    """

    task_id: str
    prompt: str
    type: str
    status: str
    request: Mapping[str, Any]
    credits: int
    created: float
    finishes: float
    poll_times: tuple[float, ...]
