"""How the command line shows things: a live progress bar of a bulk run, tables, JSON records."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from banana2_async._batch import BatchEvent, BatchOutcome, BatchPlan
from banana2_async._models import GenerationResult

from ._common import error_json

__all__ = ["BatchProgress", "Tally", "outcome_json", "plan_json", "print_problems", "result_json", "summary_table"]

_PROBLEMS_SHOWN: Final = 20
_PROMPT_SHOWN: Final = 48


def _short(text: str, limit: int = _PROMPT_SHOWN) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


@dataclass
class Tally:
    """What a run has done so far, counted from its events."""

    submitted: int = 0
    polls: int = 0
    succeeded: int = 0
    failed: int = 0
    uncertain: int = 0
    unsubmitted: int = 0
    credits: int = 0
    in_flight: set[int] = field(default_factory=set)

    def add(self, event: BatchEvent) -> None:
        """Count one event."""
        if event.kind in ("submitted", "tracked"):
            self.in_flight.add(event.index)
            if event.kind == "submitted":
                self.submitted += 1
                self.credits += event.request.credits
        elif event.kind == "polled":
            self.polls += 1
        elif event.outcome is not None:
            self.in_flight.discard(event.index)
            status = event.outcome.status
            if status == "succeeded":
                self.succeeded += 1
            elif status == "uncertain":
                self.uncertain += 1
            elif status == "unsubmitted":
                self.unsubmitted += 1
            else:
                self.failed += 1


class BatchProgress:
    """A live progress bar of a bulk run on ``console``; nothing at all when ``enabled`` is false.

    Call it with each `BatchEvent` (it is an ``on_event`` callback); it counts
    them in `tally` either way.
    """

    __slots__ = ("_progress", "_task", "_title", "_total", "tally")

    def __init__(self, console: Console, *, total: int, enabled: bool, title: str = "Generating") -> None:
        self.tally = Tally()
        self._total = total
        self._title = title
        self._task: TaskID | None = None
        self._progress: Progress | None = None
        if enabled:
            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[detail]}"),
                TimeElapsedColumn(),
                console=console,
            )

    def begin(self, *, done: int = 0) -> None:
        """Show the bar, with ``done`` requests already finished (by an earlier run)."""
        if self._progress is not None and self._task is None:
            self._task = self._progress.add_task(self._title, total=self._total, completed=done, detail="")

    def __enter__(self) -> BatchProgress:
        self.begin()
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def __call__(self, event: BatchEvent) -> None:
        self.tally.add(event)
        if self._progress is None or self._task is None:
            return
        tally = self.tally
        parts = [f"[green]✓ {tally.succeeded}[/]"]
        if tally.failed or tally.uncertain or tally.unsubmitted:
            parts.append(f"[red]✗ {tally.failed + tally.uncertain + tally.unsubmitted}[/]")
        parts.append(f"{len(tally.in_flight)} in flight")
        parts.append(f"{tally.polls} polls")
        advance = 1 if event.outcome is not None else 0
        self._progress.update(self._task, advance=advance, detail=" · ".join(parts))

    def note(self, message: str) -> None:
        """A line above the bar (or nothing, when there is no bar)."""
        if self._progress is not None:
            self._progress.console.print(message, markup=False, highlight=False)


def result_json(result: GenerationResult, files: Sequence[Path] = ()) -> dict[str, Any]:
    """A finished task as JSON."""
    return {
        "task_id": result.task_id,
        "status": "succeeded",
        "images": list(result.images),
        "files": [str(path) for path in files],
        "credits": result.consumed_credits,
    }


def outcome_json(outcome: BatchOutcome) -> dict[str, Any]:
    """One outcome of a bulk run as JSON."""
    return {
        "index": outcome.index,
        "prompt": outcome.request.prompt,
        "status": outcome.status,
        "task_id": outcome.task_id,
        "images": list(outcome.result.images) if outcome.result is not None else [],
        "files": [str(path) for path in outcome.files],
        "error": error_json(outcome.error) if outcome.error is not None else None,
    }


def plan_json(plan: BatchPlan) -> dict[str, int]:
    """A run's plan as JSON."""
    return {
        "tasks": plan.total,
        "to_submit": plan.submit,
        "to_track": plan.track,
        "uncertain": plan.uncertain,
        "already_succeeded": plan.succeeded,
        "already_failed": plan.failed,
        "credits": plan.credits,
        "job_credits": plan.job_credits,
    }


def summary_table(title: str, rows: Sequence[tuple[str, str]]) -> Table:
    """A two-column table of labelled values."""
    table = Table(title=title, show_header=False, title_justify="left", min_width=36)
    table.add_column(style="bold")
    table.add_column(justify="right")
    for label, value in rows:
        table.add_row(Text(label), Text(value))
    return table


def print_problems(console: Console, outcomes: Sequence[BatchOutcome]) -> None:
    """One line per request that did not succeed (the first few), saying why."""
    problems = [outcome for outcome in outcomes if not outcome.ok]
    for outcome in problems[:_PROBLEMS_SHOWN]:
        reason = f"{type(outcome.error).__name__}: {outcome.error}" if outcome.error is not None else ""
        line = Text()
        line.append(f"✗ #{outcome.index} {outcome.status}", style="red")
        line.append(f"  {_short(outcome.request.prompt)}  ")
        line.append(_short(reason, 160), style="dim")
        console.print(line, soft_wrap=True)
    if len(problems) > _PROBLEMS_SHOWN:
        console.print(f"… and {len(problems) - _PROBLEMS_SHOWN} more (--json lists every one)", markup=False)
