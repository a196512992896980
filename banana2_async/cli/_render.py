"""How the command line shows things: a live progress bar of a bulk run, tables, a task as JSON."""

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
from banana2_async._models import GenerationResult, TaskInfo

from ._common import cli_text, task_json

__all__ = [
    "BatchProgress",
    "Tally",
    "info_json",
    "plan_json",
    "plural",
    "print_problems",
    "result_json",
    "short",
    "summary_table",
]

_PROBLEMS_SHOWN: Final = 20
_PROMPT_SHOWN: Final = 48


def short(text: str, limit: int = _PROMPT_SHOWN) -> str:
    """``text`` on one line, cut to ``limit`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def plural(count: int, word: str, many: str | None = None) -> str:
    """``1 task``, ``2 tasks``."""
    return f"{count} {word if count == 1 else many or word + 's'}"


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

    __slots__ = ("_earlier", "_progress", "_task", "_title", "_total", "tally")

    def __init__(self, console: Console, *, total: int, enabled: bool, title: str = "Generating") -> None:
        self.tally = Tally()
        self._earlier = (0, 0)
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

    def begin(self, *, succeeded: int = 0, failed: int = 0) -> None:
        """Show the bar, with the rows of the job an earlier run finished counted in."""
        if self._task is not None:
            return
        self._earlier = (succeeded, failed)
        if self._progress is not None:
            self._task = self._progress.add_task(
                self._title, total=self._total, completed=succeeded + failed, detail=self._detail()
            )

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

    def _detail(self) -> str:
        tally = self.tally
        succeeded, failed = self._earlier
        parts = [f"[green]✓ {succeeded + tally.succeeded}[/]"]
        not_ok = failed + tally.failed + tally.uncertain + tally.unsubmitted
        if not_ok:
            parts.append(f"[red]✗ {not_ok}[/]")
        parts.append(f"{len(tally.in_flight)} in flight")
        parts.append(plural(tally.polls, "poll"))
        return " · ".join(parts)

    def __call__(self, event: BatchEvent) -> None:
        self.tally.add(event)
        if self._progress is None or self._task is None:
            return
        advance = 1 if event.outcome is not None else 0
        self._progress.update(self._task, advance=advance, detail=self._detail())

    def note(self, message: str) -> None:
        """A line above the bar (or nothing, when there is no bar)."""
        if self._progress is not None:
            self._progress.console.print(message, markup=False, highlight=False)


def result_json(result: GenerationResult, files: Sequence[Path] = (), **extra: Any) -> dict[str, Any]:
    """A finished task as JSON (`task_json`); ``extra`` overrides its fields (a failed download, say)."""
    fields: dict[str, Any] = {
        "server_status": result.info.status,
        "task_type": result.type,
        "images": result.images,
        "files": files,
        "credits": result.consumed_credits,
        "created_at": result.created_at,
    }
    fields.update(extra)
    status = fields.pop("status", "succeeded")
    return task_json(result.task_id, status, **fields)


_STATES: Final = {"success": "succeeded", "failed": "failed", "running": "running", "unknown": "unknown"}


def info_json(info: TaskInfo) -> dict[str, Any]:
    """A task as the server sees it now, as JSON (`task_json`)."""
    status = _STATES[info.state]
    error = None
    if status == "failed":
        error = {"type": "TaskFailedError", "message": info.error_detail or f"the server reports {info.status}"}
    return task_json(
        info.task_id,
        status,
        server_status=info.status,
        task_type=info.type,
        images=info.images,
        credits=info.consumed_credits,
        created_at=info.created_at,
        error=error,
    )


def plan_json(plan: BatchPlan) -> dict[str, int]:
    """A run's plan as JSON."""
    return {
        "tasks": plan.total,
        "to_submit": plan.submit,
        "to_track": plan.track,
        "uncertain": plan.uncertain,
        "already_succeeded": plan.succeeded,
        "already_failed": plan.failed,
        "to_retry": plan.retry,
        "retryable": plan.retryable,
        "retry_credits": plan.retry_credits,
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
        reason = f"{type(outcome.error).__name__}: {cli_text(str(outcome.error))}" if outcome.error else ""
        line = Text()
        line.append(f"✗ row {outcome.index + 1} {outcome.status}", style="red")
        line.append(f"  {short(outcome.request.prompt)}  ")
        line.append(short(reason, 160), style="dim")
        console.print(line, soft_wrap=True)
    if len(problems) > _PROBLEMS_SHOWN:
        console.print(f"… and {len(problems) - _PROBLEMS_SHOWN} more (--json lists every one)", markup=False)
