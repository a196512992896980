"""The soak's simulator, served over loopback from a process of its own.

Run as ``python -m soak._server``. The first line on stdin is the JSON
`ServerConfig`; the process answers ``READY <base_url>`` on stdout, then takes
one command per line: ``report`` prints the simulator's record of every task
and its counters as one JSON line, ``quit`` (or end of input) stops it.

A process of its own keeps the server off the client's interpreter lock and
out of its file descriptor table, so what the client leaves open is the
client's alone.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from banana2_async.testing import Fault, Simulator

__all__ = ["FAILURES", "FaultMix", "ServerConfig", "main", "report_of"]

FAILURES: Final[dict[str, str]] = {
    "FAILED": "soak: content policy violation",
    "error": "soak: the generator crashed",
    "CANCELLED": "soak: cancelled by the provider",
}
"""The failure statuses the soak's failed tasks end with, and the message each carries."""


@dataclass(frozen=True)
class FaultMix:
    """How often each fault strikes, as a share of the requests (or tasks) it can act on.

    ``server_error`` and ``drop`` hit polls: on a submit they would be
    indistinguishable from an ambiguous failure without the task being
    created. ``rate_limit`` and ``slow`` hit both endpoints (a slow submit
    times out after the task was created: ambiguous too). ``ambiguous``
    creates the task and then loses the answer, half as a 500, half as a
    dropped connection. ``failed`` tasks end with one of `FAILURES`.
    """

    server_error: float = 0.05
    drop: float = 0.02
    rate_limit: float = 0.01
    failed: float = 0.03
    slow: float = 0.01
    ambiguous: float = 0.01
    retry_after: float = 0.05
    slow_seconds: float = 1.5


@dataclass(frozen=True)
class ServerConfig:
    """What the server process builds: the simulator's options and its faults."""

    api_key: str
    speed: float
    seed: int
    faults: FaultMix = field(default_factory=FaultMix)

    def to_json(self) -> str:
        """One line of JSON for the server's stdin."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, line: str) -> ServerConfig:
        """The config sent by `to_json`."""
        raw = json.loads(line)
        return cls(api_key=raw["api_key"], speed=raw["speed"], seed=raw["seed"], faults=FaultMix(**raw["faults"]))


def build_simulator(config: ServerConfig) -> Simulator:
    """A simulator with the soak's faults injected, all at once."""
    sim = Simulator(api_key=config.api_key, speed=config.speed, seed=config.seed, credits=10**12)
    mix = config.faults
    # On arrival: the first rule that fires wins, so later shares are of what the earlier ones let through.
    sim.inject(Fault.server_error(500), on="status", probability=mix.server_error)
    sim.inject(Fault.drop(), on="status", probability=mix.drop)
    sim.inject(Fault.rate_limit(mix.retry_after), on="generate", probability=mix.rate_limit)
    sim.inject(Fault.rate_limit(mix.retry_after), on="status", probability=mix.rate_limit)
    # When a task is created: the answer is lost after the charge, or the task will fail.
    sim.inject(Fault.server_error(500, after_create=True), probability=mix.ambiguous / 2)
    sim.inject(Fault.drop(after_create=True), probability=mix.ambiguous / 2)
    for status, message in FAILURES.items():
        sim.inject(Fault.fail_task(message, status=status), probability=mix.failed / len(FAILURES))
    # On the answer: it comes after the client's read timeout.
    sim.inject(Fault.slow(mix.slow_seconds), on="generate", probability=mix.slow)
    sim.inject(Fault.slow(mix.slow_seconds), on="status", probability=mix.slow)
    return sim


def report_of(sim: Simulator) -> dict[str, Any]:
    """The simulator's record: every task, the counters, and how often each fault fired."""
    stats = sim.stats
    return {
        "tasks": [
            {
                "task_id": task.task_id,
                "prompt": task.prompt,
                "status": task.status,
                "credits": task.credits,
                # Seconds after creation: when it finished, and when each poll came.
                "finishes": round(task.finishes - task.created, 3),
                "polls": [round(when - task.created, 3) for when in task.poll_times],
            }
            for task in sim.tasks()
        ],
        "requests": [[endpoint, status, count] for (endpoint, status), count in sorted(stats.requests.items())],
        "tasks_per_prompt": dict(stats.tasks_per_prompt),
        "tasks_created": stats.tasks_created,
        "credits_spent": stats.credits_spent,
    }


def main() -> int:
    """Serve until told to quit; see the module's docstring for the protocol."""
    config = ServerConfig.from_json(sys.stdin.readline())
    sim = build_simulator(config)
    with sim.serve() as server:
        print(f"READY {server.base_url}", flush=True)
        for line in sys.stdin:
            command = line.strip()
            if command == "report":
                print(json.dumps(report_of(sim)), flush=True)
            elif command == "quit":
                break
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
