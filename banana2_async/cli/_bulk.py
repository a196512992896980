"""``banana2 batch``: a bulk job read from a file, planned, run, and recorded (manifest, gallery).

The job is the whole input file, whatever run it is: the journal knows its
rows by their ``id`` column, else by their content, so a file that grows is
the same job, and a row already paid for that changed or went is refused by
name before anything is sent. After every run the manifest describes every
row of the job; the summary, the progress bar and ``--json`` count them all.
"""

from __future__ import annotations

import secrets
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import anyio
import anyio.to_thread
from rich.table import Table
from rich.text import Text

from banana2_async._batch import BatchOutcome, BatchPlan, plan_batch, row_kind
from banana2_async._client import AsyncBanana2
from banana2_async._exceptions import (
    APIConnectionError,
    AuthenticationError,
    BudgetExceededError,
    InsufficientCreditsError,
    InvalidRequestError,
    JournalError,
)
from banana2_async._journal import JournalRow, JournalView, RowChange, describe_change, inspect_journal, job_keys
from banana2_async._journal import read_journal as read_rows

from ._common import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, EXIT_USAGE, Output
from ._formats import Format
from ._gallery import GALLERY_NAME, write_gallery
from ._inputs import Input, read_input
from ._manifest import MANIFEST_NAME, counts, job_records, options_of, write_manifest
from ._render import BatchProgress, plan_json, plural, print_problems, short, summary_table

__all__ = ["JOURNAL_NAME", "BulkOptions", "plan_line", "run_bulk"]

JOURNAL_NAME: Final = "banana2-journal.sqlite3"
_PREVIEW_ROWS: Final = 10
_CHANGES_NAMED: Final = 10


@dataclass(frozen=True, slots=True)
class BulkOptions:
    """What ``banana2 batch`` was asked to do."""

    file: str
    out: Path
    concurrency: int
    max_credits: int | None = None
    dry_run: bool = False
    journal: Path | None = None
    manifest: Path | None = None
    gallery: bool = False
    resubmit_uncertain: bool = False
    retry_failed: bool = False
    input_format: Format | None = None
    encoding: str | None = None

    @property
    def journal_path(self) -> Path:
        """The journal: ``--journal``, else in ``--out``."""
        return self.journal if self.journal is not None else self.out / JOURNAL_NAME

    @property
    def manifest_path(self) -> Path:
        """The manifest: ``--manifest``, else in ``--out``."""
        return self.manifest if self.manifest is not None else self.out / MANIFEST_NAME


def _read_file(file: str) -> tuple[bytes, str]:
    if file == "-":
        return sys.stdin.buffer.read(), "stdin"
    try:
        return Path(file).read_bytes(), file
    except OSError as exc:
        raise InvalidRequestError(f"{file} cannot be read: {exc.strerror or exc}", field="requests") from None


async def load_job(options: BulkOptions) -> Input:
    """The job in the input file.

    Raises:
        InvalidRequestError: the file cannot be read, decoded or parsed; nothing is sent.
    """
    data, source = await anyio.to_thread.run_sync(_read_file, options.file)
    name = "" if options.file == "-" else options.file
    return read_input(data, source=source, name=name, format=options.input_format, encoding=options.encoding)


def plan_line(plan: BatchPlan) -> str:
    """What a run will do, in one line."""
    parts = [f"{plural(plan.total, 'task')} in the job"]
    if plan.succeeded + plan.failed:
        parts.append(f"{plan.succeeded + plan.failed} finished earlier")
    if plan.track:
        parts.append(f"{plan.track} of an earlier run to wait for")
    parts.append(f"{plan.submit} to submit for {plan.credits} credits")
    return "; ".join(parts)


def _changes_error(options: BulkOptions, job: Input, changes: Sequence[RowChange]) -> JournalError:
    lines = [describe_change(change) for change in changes[:_CHANGES_NAMED]]
    if len(changes) > _CHANGES_NAMED:
        lines.append(f"… and {len(changes) - _CHANGES_NAMED} more")
    journal = options.journal_path
    one = len(changes) == 1
    count = plural(len(changes), "row")
    message = (
        f"the journal {journal} is of another job: {count} paid for there (or maybe paid for) "
        f"{'is' if one else 'are'} not in {job.source} as {'it was' if one else 'they were'}:\n  "
        + "\n  ".join(lines)
        + "\nPut them back as they were to go on with that job; or start a new job with its own journal: "
        "--journal NEW.sqlite3, or another --out. Nothing was sent."
    )
    return JournalError(message, path=str(journal), reason="other-job")


async def _view(options: BulkOptions, job: Input, keys: Sequence[str]) -> JournalView | None:
    view = await inspect_journal(options.journal_path, job.requests, keys)
    if view is not None and view.changes:
        raise _changes_error(options, job, view.changes)
    return view


def _plan(options: BulkOptions, job: Input, rows: Sequence[JournalRow] | None) -> BatchPlan:
    return plan_batch(
        job.requests, rows, resubmit_uncertain=options.resubmit_uncertain, retry_failed=options.retry_failed
    )


async def run_bulk(output: Output, options: BulkOptions, make_client: Callable[[], AsyncBanana2]) -> int:
    """Plan the job, and unless it is a dry run, run it; returns the exit status."""
    job = await load_job(options)
    keys = job_keys(job.requests, job.ids)
    view = await _view(options, job, keys)
    plan = _plan(options, job, view.rows if view is not None else None)
    if options.dry_run:
        return _dry_run(output, options, job, view, plan)
    if options.max_credits is not None and plan.credits > options.max_credits:
        raise BudgetExceededError(
            f"this run would cost {plan.credits} credits for {plural(plan.submit, 'task')}, more than "
            f"--max-credits {options.max_credits}; nothing was sent",
            credits=plan.credits,
            max_credits=options.max_credits,
        )
    client = make_client()
    # Before anything is paid for: images, or their record, that cannot be saved would be paid for in vain.
    await anyio.to_thread.run_sync(_check_writable, options.out, "--out", "the images would have nowhere to go")
    if options.manifest is not None:
        await anyio.to_thread.run_sync(
            _check_writable, options.manifest.parent, "--manifest", "the manifest could not be written"
        )
    return await _run(output, options, job, keys, client)


async def _run(output: Output, options: BulkOptions, job: Input, keys: list[str], client: AsyncBanana2) -> int:
    outcomes: list[BatchOutcome] = []
    started = time.perf_counter()
    records: list[dict[str, Any]] = []
    after: BatchPlan | None = None
    async with client:
        progress = BatchProgress(output.err, total=len(job.rows), enabled=output.live)
        run = client.batch(
            job.requests,
            keys=job.ids,
            concurrency=options.concurrency,
            journal=options.journal_path,
            max_credits=options.max_credits,
            resubmit_uncertain=options.resubmit_uncertain,
            retry_failed=options.retry_failed,
            dest_dir=options.out,
            on_event=progress,
        )
        try:
            async with run:
                assert run.plan is not None
                progress.begin(succeeded=run.plan.succeeded, failed=run.plan.failed)
                with progress:
                    progress.note(plan_line(run.plan))
                    # One by one: a run cut short (Ctrl-C) keeps what it had for the manifest.
                    async for outcome in run:
                        outcomes.append(outcome)  # noqa: PERF401
        finally:
            if run.plan is not None:
                # Also when the run is cut short (Ctrl-C): the record says where every row stands.
                with anyio.CancelScope(shield=True):
                    records, after = await _record(output, options, job, keys, outcomes)
    plan = run.plan
    assert plan is not None
    wall = time.perf_counter() - started
    tally = progress.tally
    summary = {
        "tasks": len(job.rows),
        **counts(records),
        "submitted": tally.submitted,
        "credits": tally.credits,
        "wall_time_seconds": round(wall, 2),
        "base_url": str(client.base_url),
        "journal": str(options.journal_path),
        "out": str(options.out),
        "manifest": str(options.manifest_path),
        "gallery": str(options.out / GALLERY_NAME) if options.gallery else None,
    }
    done = {outcome.index for outcome in outcomes}
    if output.as_json:
        output.json(
            {
                "input": _input_json(job),
                "plan": plan_json(plan),
                "summary": summary,
                "outcomes": [record for index, record in enumerate(records) if index in done],
            }
        )
    else:
        _show(output, summary, outcomes, after)
    return _exit_status(output, outcomes)


async def _record(
    output: Output, options: BulkOptions, job: Input, keys: list[str], outcomes: Sequence[BatchOutcome]
) -> tuple[list[dict[str, Any]], BatchPlan | None]:
    """Write the manifest (and the gallery) of the whole job from its journal; return the records, and the plan
    of the same command run again."""
    by_index = {outcome.index: outcome for outcome in outcomes}
    try:
        rows = await read_rows(options.journal_path, job.requests, keys)
    except JournalError as exc:
        output.problem(f"the manifest could not be made from the journal: {exc}")
        return [], None
    records = job_records(job.rows, rows, by_index)
    try:
        await anyio.to_thread.run_sync(write_manifest, options.manifest_path, records)
        if options.gallery:
            title = f"banana2 batch · {Path(job.source).name}"
            await anyio.to_thread.run_sync(lambda: write_gallery(options.out / GALLERY_NAME, records, title=title))
    except OSError as exc:
        output.problem(f"the manifest or gallery could not be written: {exc.strerror or exc}")
    return records, plan_batch(job.requests, rows)


def _exit_status(output: Output, outcomes: Sequence[BatchOutcome]) -> int:
    if any(isinstance(outcome.error, AuthenticationError) for outcome in outcomes):
        output.problem("the API key was refused; nothing more was sent")
        return EXIT_CONFIG
    # Rows that ended in an earlier run are that run's news: a finished job exits 0 when run again.
    return EXIT_OK if all(outcome.ok for outcome in outcomes) else EXIT_FAILED


def _check_writable(directory: Path, flag: str, why: str) -> None:
    """Refuse a directory that cannot be made or written to (a file is made there, then removed)."""
    probe = directory / f".banana2-probe-{secrets.token_hex(4)}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe.touch(exist_ok=False)
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise InvalidRequestError(
            f"{flag} {str(directory)!r} cannot be written to ({reason}): {why}; nothing was sent", field=flag
        ) from None


def _input_json(job: Input) -> dict[str, Any]:
    return {"file": job.source, "format": job.format, "encoding": job.encoding, "rows": len(job.rows)}


# -- a dry run ------------------------------------------------------------------------------------


def _action(plan_kind: str, row: JournalRow | None, price: int) -> str:
    if plan_kind == "submit":
        verb = "retry" if row is not None and row.state == "failed" else "submit"
        verb = "resubmit" if row is not None and row.state == "submitting" else verb
        return f"{verb} ({price} credits)"
    if plan_kind == "track":
        return f"wait for task {row.task_id}" if row is not None else "wait"
    if plan_kind == "uncertain":
        return "skip: may be paid for"
    return f"skip: {plan_kind}"


def _options_text(options: dict[str, Any]) -> str:
    parts = [str(value) for name, value in options.items() if name not in ("type", "images")]
    if options.get("type") == "edit":
        parts.insert(0, f"edit of {plural(len(options.get('images') or ()), 'image')}")
    return " · ".join(parts) or "defaults"


def _dry_run(output: Output, options: BulkOptions, job: Input, view: JournalView | None, plan: BatchPlan) -> int:
    rows = view.rows if view is not None else None
    preview = []
    for index, input_row in enumerate(job.rows[:_PREVIEW_ROWS]):
        row = rows[index] if rows is not None else None
        kind = row_kind(row, resubmit_uncertain=options.resubmit_uncertain, retry_failed=options.retry_failed)
        preview.append(
            {
                "row": input_row.number,
                "id": input_row.id,
                "line": input_row.line,
                "prompt": input_row.request.prompt,
                "options": options_of(input_row.request),
                "action": _action(kind, row, input_row.request.credits),
            }
        )
    added = sum(row.added for row in rows) if rows is not None and view is not None else 0
    removed = view.removed if view is not None else 0
    refused = options.max_credits is not None and plan.credits > options.max_credits
    if output.as_json:
        output.json(
            {
                "dry_run": True,
                "input": _input_json(job),
                "journal": str(options.journal_path),
                "plan": plan_json(plan),
                "added": added,
                "removed": removed,
                "preview": preview,
                "max_credits": options.max_credits,
                "refused": refused,
            }
        )
    else:
        _show_dry_run(output, job, plan, preview, added=added, removed=removed, resumed=view is not None)
    if refused:
        output.problem(f"the run would cost {plan.credits} credits, more than --max-credits {options.max_credits}")
        return EXIT_USAGE
    return EXIT_OK


def _show_dry_run(
    output: Output,
    job: Input,
    plan: BatchPlan,
    preview: Sequence[dict[str, Any]],
    *,
    added: int,
    removed: int,
    resumed: bool,
) -> None:
    say = output.out.print
    say(Text(f"{job.source}: {job.format.upper()}, {job.encoding}, {plural(len(job.rows), 'row')}"))
    table = Table(show_lines=False)
    table.add_column("Row", justify="right")
    if any(item["id"] for item in preview):
        table.add_column("Id")
    table.add_column("Prompt", overflow="fold")
    table.add_column("Options")
    table.add_column("This run")
    for item in preview:
        cells = [str(item["row"])]
        if len(table.columns) == 5:
            cells.append(item["id"] or "")
        cells += [short(item["prompt"]), _options_text(item["options"]), item["action"]]
        table.add_row(*(Text(cell) for cell in cells))
    say(table)
    if len(job.rows) > len(preview):
        say(Text(f"… and {plural(len(job.rows) - len(preview), 'more row')}"))
    say(Text(plan_line(plan)))
    if resumed and added:
        say(Text(f"{plural(added, 'row')} added since the last run will be sent"))
    if removed:
        say(Text(f"{plural(removed, 'row')} never sent and no longer in the file will be dropped from the journal"))
    if plan.retry:
        say(
            Text(
                f"{plural(plan.retry, 'row')} that failed on the server will be sent again, "
                f"for {plan.retry_credits} credits"
            )
        )
    if plan.retryable:
        say(
            Text(
                f"{plural(plan.retryable, 'row')} failed on the server; "
                f"--retry-failed would send {'it' if plan.retryable == 1 else 'them'} again for "
                f"{plan.retry_credits} credits"
            )
        )
    if plan.uncertain:
        say(
            Text(
                f"{plan.uncertain} may have been paid for already and will not be sent again "
                "(--resubmit-uncertain sends them)"
            )
        )
    say(Text("dry run: nothing was sent"))


# -- after a run ----------------------------------------------------------------------------------


def _show(output: Output, summary: dict[str, Any], outcomes: Sequence[BatchOutcome], after: BatchPlan | None) -> None:
    print_problems(output.out, outcomes)
    rows = [
        ("Tasks in the job", str(summary["tasks"])),
        ("Succeeded", str(summary["succeeded"])),
        ("Failed", str(summary["failed"])),
    ]
    for key, label in (("uncertain", "Uncertain"), ("unsubmitted", "Not submitted"), ("in_progress", "In progress")):
        if summary[key]:
            rows.append((label, str(summary[key])))
    rows += [
        ("Submitted now", f"{summary['submitted']} ({summary['credits']} credits)"),
        ("Wall time", f"{summary['wall_time_seconds']:.1f} s"),
    ]
    say = output.out.print
    say(summary_table("banana2 batch", rows))
    where = [f"Images in {summary['out']}/", f"manifest {summary['manifest']}"]
    if summary["gallery"]:
        where.append(f"gallery {summary['gallery']}")
    where.append(f"journal {summary['journal']}")
    say(Text(" · ".join(where)), soft_wrap=True)
    unsent = [outcome for outcome in outcomes if outcome.status == "unsubmitted"]
    if any(isinstance(outcome.error, InsufficientCreditsError) for outcome in unsent):
        say(
            Text(
                f"{plural(len(unsent), 'request')} {'was' if len(unsent) == 1 else 'were'} not sent: the account ran "
                "out of credits. Top up, then run the same command again to resume."
            )
        )
    if any(isinstance(outcome.error, APIConnectionError) for outcome in unsent):
        say(
            Text(
                f"{plural(len(unsent), 'request')} {'was' if len(unsent) == 1 else 'were'} not sent: "
                f"{summary['base_url']} could not be reached. Check --base-url and the network, then run the same "
                "command again."
            )
        )
    if summary["uncertain"]:
        say(
            Text(
                f"{plural(summary['uncertain'], 'request')} may have been paid for without an answer and "
                f"{'is' if summary['uncertain'] == 1 else 'are'} not sent again. "
                "Check your account; --resubmit-uncertain sends them anyway."
            )
        )
    if after is not None and after.retryable:
        say(
            Text(
                f"{plural(after.retryable, 'row')} failed on the server; --retry-failed sends "
                f"{'it' if after.retryable == 1 else 'them'} again ({after.retry_credits} credits)."
            )
        )
