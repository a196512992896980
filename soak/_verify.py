"""The soak's invariants: what the client saw, held against the simulator's record.

`verify` returns one `Check` per invariant; the soak fails if any fails.
`render` prints the figures and the checks as a table, and `as_json` gives
the same for a file.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Final

from ._run import SoakRun
from ._server import FAILURES

__all__ = ["Check", "MemoryTrend", "as_json", "memory_trend", "render", "verify"]

# A handle kept with its result is about 4 KB and 40 blocks, a poller entry about 500 B and 5 blocks;
# between quiet moments, memory wanders by some 100-300 KB without a trend (pooled connections, buffers).
MAX_BYTES_PER_TASK: Final = 512.0
MAX_BLOCKS_PER_TASK: Final = 4.0
# Below this many tasks that wander outweighs a small leak: the trend is reported, not judged.
MIN_TASKS_FOR_MEMORY: Final = 1_000
_SHOWN: Final = 5


@dataclass(frozen=True)
class Check:
    """One invariant: its name, whether it held, and the figures behind it."""

    name: str
    ok: bool
    detail: str
    judged: bool = True


@dataclass(frozen=True)
class MemoryTrend:
    """Memory against completed tasks, after the warm-up: growth per task (least squares)."""

    samples: int
    bytes_per_task: float
    blocks_per_task: float
    first_traced: int
    last_traced: int
    peak_blocks: int


def _slope(points: list[tuple[float, float]]) -> float:
    if len(points) < 2:
        return 0.0
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    if spread == 0:
        return 0.0
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread


def memory_trend(run: SoakRun) -> MemoryTrend:
    """The growth of traced bytes and allocated blocks per completed task, between the quiet ends of phases.

    Samples are taken when every handle of a phase has settled; the first
    phase warms caches and pools up and is left out, as is the sample taken
    after the client closed.
    """
    # memory[0] is before any task, memory[-1] after the client closed; between them, one per phase.
    phases = run.memory[1:-1]
    steady = phases[1:] if len(phases) > 2 else phases
    return MemoryTrend(
        samples=len(steady),
        bytes_per_task=_slope([(float(done), float(traced)) for done, traced, _ in steady]),
        blocks_per_task=_slope([(float(done), float(blocks)) for done, _, blocks in steady]),
        first_traced=steady[0][1] if steady else 0,
        last_traced=steady[-1][1] if steady else 0,
        peak_blocks=max((blocks for _, _, blocks in phases), default=0),
    )


def verify(run: SoakRun, *, min_tasks_for_memory: int = MIN_TASKS_FOR_MEMORY) -> list[Check]:
    """Every invariant of the soak, each as a `Check`.

    The memory trend is judged only from ``min_tasks_for_memory`` tasks on;
    below, its check passes unjudged (``judged=False``) with the figures.
    """
    report = run.server_report
    records = {task["task_id"]: task for task in report["tasks"]}
    per_prompt: dict[str, int] = report["tasks_per_prompt"]
    outcomes = run.outcomes
    base = run.base_url.rstrip("/")
    mismatches: list[str] = []
    handles = 0
    uncertain = 0
    # Uncertain submits the simulator never acted on: only a client-side timeout can explain those
    # (a loaded machine; the request was dropped with its connection before the simulator handled it).
    never_landed: list[str] = []
    sent_prompts: set[str] = set()
    seen_ids: Counter[str] = Counter()

    for outcome in outcomes:
        kind, prompt = outcome["kind"], outcome["prompt"]
        sent_prompts.add(prompt)
        if kind == "uncertain":
            uncertain += 1
            if outcome["request_prompt"] != prompt:
                mismatches.append(f"uncertain {prompt!r}: the error carries {outcome['request_prompt']!r}")
            landed = per_prompt.get(prompt, 0)
            if landed == 0 and outcome["cause"].startswith("APITimeoutError"):
                never_landed.append(prompt)
            elif landed != 1:
                mismatches.append(f"uncertain {prompt!r} ({outcome['cause']}): the server holds {landed} tasks")
            continue
        if kind == "submit-error":
            mismatches.append(f"submit of {prompt!r} raised {outcome['error']}: {outcome['message']}")
            continue
        handles += 1
        task_id = outcome["task_id"]
        seen_ids[task_id] += 1
        record = records.get(task_id)
        if record is None or record["prompt"] != prompt:
            mismatches.append(f"{task_id}: no task of {prompt!r} on the server")
            continue
        status = record["status"]
        if kind == "succeeded":
            expected = [f"{base}/results/{task_id}/0.{outcome['format']}"]
            if status != "SUCCESS" or outcome["images"] != expected or outcome["credits"] != record["credits"]:
                mismatches.append(f"{task_id}: succeeded with {outcome['images']}, the server says {status}")
        elif kind == "failed":
            if status not in FAILURES or outcome["status"] != status or outcome["message"] != FAILURES[status]:
                mismatches.append(f"{task_id}: failed {outcome['status']} {outcome['message']!r}; server: {status}")
        else:
            polls = record["polls"]
            gaps = [later - earlier for earlier, later in itertools.pairwise(polls)]
            mismatches.append(
                f"{task_id}: {kind} {outcome.get('error', '')} after {outcome.get('waited', '?')} s; the server says "
                f"{status}, finished after {record['finishes']} s, polled {len(polls)} times, "
                f"last at {max(polls, default=0):.3f} s, longest gap {max(gaps, default=0):.3f} s"
            )

    created = report["tasks_created"]
    twice = {prompt: count for prompt, count in per_prompt.items() if count > 1}
    strangers = set(per_prompt) - sent_prompts
    credits = sum(task["credits"] for task in report["tasks"])
    hung = run.kinds["hung"]
    trend = memory_trend(run)
    sockets_left = run.sockets_after_close - run.sockets_before
    judge_memory = run.config.tasks >= min_tasks_for_memory
    flat = trend.bytes_per_task <= MAX_BYTES_PER_TASK and trend.blocks_per_task <= MAX_BLOCKS_PER_TASK
    text = json.dumps(outcomes)

    def shown(items: list[str]) -> str:
        more = f" (+{len(items) - _SHOWN} more)" if len(items) > _SHOWN else ""
        return "; ".join(items[:_SHOWN]) + more

    return [
        Check("every task accounted for", len(outcomes) == run.config.tasks, f"{len(outcomes)} of {run.config.tasks}"),
        Check(
            "every handle settles as the server's record says",
            not mismatches,
            shown(mismatches) if mismatches else f"{handles} handles, {uncertain} uncertain submits",
        ),
        Check(
            "tasks created == successful submits + uncertain",
            created == handles + uncertain - len(never_landed) and len(records) == created,
            f"{created} created, {handles} + {uncertain} = {handles + uncertain}"
            + (f" less {len(never_landed)} that timed out before reaching the simulator" if never_landed else ""),
        ),
        Check(
            "nothing paid twice",
            not twice and not strangers and all(count == 1 for count in seen_ids.values()),
            f"{len(twice)} prompts with 2+ tasks, {len(strangers)} unknown prompts",
        ),
        Check(
            "credits spent == credits of the tasks created",
            report["credits_spent"] == credits,
            f"{report['credits_spent']} spent, {credits} in tasks",
        ),
        Check("no handle hangs past its deadline", hung == 0, f"{hung} still pending after deadline + grace"),
        Check(
            "poller registry empty once all settled",
            run.registry_after == 0 and run.pending_after == 0 and not any(run.registry_at_barriers),
            f"{run.registry_after} tasks, {run.pending_after} handles at the end; "
            f"{run.registry_at_barriers} at the end of each phase",
        ),
        Check(
            "no task left after aclose()",
            not run.leaked_tasks,
            ", ".join(run.leaked_tasks[:_SHOWN]) or "none",
        ),
        Check(
            "no socket left after aclose()",
            sockets_left <= 0,
            f"{run.sockets_before} before the client, {run.sockets_after_close} right after aclose()",
        ),
        Check(
            "memory flat per completed task",
            flat or not judge_memory,
            f"{trend.bytes_per_task:+.1f} B/task traced (max {MAX_BYTES_PER_TASK:g}), "
            f"{trend.blocks_per_task:+.3f} blocks/task (max {MAX_BLOCKS_PER_TASK:g}), {trend.samples} samples"
            + ("" if judge_memory else f"; not judged under {min_tasks_for_memory:,} tasks"),
            judged=judge_memory,
        ),
        Check(
            "the API key appears in no log, repr or error",
            run.key_in_logs == 0 and not run.key_in_text and run.api_key not in text,
            f"{run.log_records} DEBUG+ records formatted, {run.key_in_logs + len(run.key_in_text)} showed it",
        ),
    ]


def _requests(run: SoakRun) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for endpoint, status, count in run.server_report["requests"]:
        counts[f"{endpoint} {'dropped' if status == 0 else status}"] += count
    return dict(sorted(counts.items()))


def as_json(run: SoakRun, checks: list[Check]) -> dict[str, Any]:
    """The soak's figures and checks, for a JSON file."""
    trend = memory_trend(run)
    total_requests = sum(count for _, _, count in run.server_report["requests"])
    return {
        "config": asdict(run.config),
        "wall_seconds": round(run.wall, 3),
        "tasks_per_second": round(run.config.tasks / run.wall, 1) if run.wall else None,
        "requests_per_second": round(total_requests / run.wall, 1) if run.wall else None,
        "outcomes": dict(run.kinds),
        "tasks_created": run.server_report["tasks_created"],
        "credits_spent": run.server_report["credits_spent"],
        "requests": _requests(run),
        "polls_sent": run.polls_sent,
        "memory": asdict(trend),
        "checks": [asdict(check) for check in checks],
        "ok": all(check.ok for check in checks),
    }


def _verdict(check: Check) -> str:
    if not check.judged:
        return "INFO"
    return "PASS" if check.ok else "FAIL"


def render(run: SoakRun, checks: list[Check]) -> str:
    """The soak's figures and checks as a plain-text table."""
    data = as_json(run, checks)
    config = run.config
    mix = config.faults
    lines = [
        f"soak: {config.tasks:,} tasks, {config.concurrency} at a time, over {run.base_url} "
        f"({config.backend}, seed {config.seed}, simulator speed x{config.speed:g})",
        f"faults: {mix.server_error:.0%} status 500s, {mix.drop:.0%} dropped connections, "
        f"{mix.rate_limit:.0%} 429 (Retry-After {mix.retry_after:g} s), {mix.failed:.0%} failed tasks, "
        f"{mix.slow:.0%} slower than the {config.read_timeout:g} s read timeout, {mix.ambiguous:.0%} ambiguous submits",
        "",
        f"  {'wall time':<34}{run.wall:>12.1f} s",
        f"  {'throughput':<34}{data['tasks_per_second']:>12,.1f} tasks/s",
        f"  {'requests served':<34}{data['requests_per_second']:>12,.1f} req/s",
        f"  {'polls sent by the client':<34}{run.polls_sent:>12,}",
        "",
        "  outcome",
    ]
    labels = {
        "succeeded": "succeeded, URLs as recorded",
        "failed": "TaskFailedError, message as recorded",
        "uncertain": "SubmissionUncertainError",
        "error": "other error (a failure)",
        "submit-error": "submit error (a failure)",
        "hung": "hung past deadline (a failure)",
    }
    for kind, label in labels.items():
        if run.kinds[kind] or kind in ("succeeded", "failed", "uncertain"):
            lines.append(f"    {label:<40}{run.kinds[kind]:>8,}")
    lines += [
        "",
        "  server",
        f"    {'tasks created':<40}{data['tasks_created']:>8,}",
        f"    {'credits spent':<40}{data['credits_spent']:>8,}",
    ]
    lines += [f"    {name:<40}{count:>8,}" for name, count in data["requests"].items()]
    memory = data["memory"]
    lines += [
        "",
        "  memory (after warm-up)",
        f"    {'traced, first sample':<40}{memory['first_traced'] / 1e6:>8.2f} MB",
        f"    {'traced, last sample':<40}{memory['last_traced'] / 1e6:>8.2f} MB",
        f"    {'growth per completed task':<40}{memory['bytes_per_task']:>+8.1f} B",
        "",
        "  invariants",
    ]
    lines += [f"    [{_verdict(check)}] {check.name}: {check.detail}" for check in checks]
    lines.append("")
    lines.append("soak: OK" if data["ok"] else "soak: FAILED")
    return "\n".join(lines)
