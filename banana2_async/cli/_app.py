"""The ``banana2`` commands: generate, edit, status, wait, batch, simulate, demo."""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import anyio.to_thread
import click
from rich.text import Text

from banana2_async._batch import DEFAULT_CONCURRENCY as BATCH_CONCURRENCY
from banana2_async._batch import BatchOutcome, plan_batch
from banana2_async._client import AsyncBanana2
from banana2_async._exceptions import (
    AuthenticationError,
    Banana2Error,
    ClientClosedError,
    EmptyResultError,
    InsufficientCreditsError,
    InvalidRequestError,
    TaskError,
    TaskTimeoutError,
)
from banana2_async._journal import read_journal
from banana2_async._models import GenerationRequest, GenerationResult
from banana2_async._types import ASPECT_RATIOS, OUTPUT_FORMATS, RESOLUTIONS
from banana2_async._version import __version__

from ._common import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    Output,
    api_options,
    configure_logging,
    error_json,
    make_client,
    run_async,
)
from ._inputs import parse_requests
from ._render import BatchProgress, outcome_json, plan_json, print_problems, result_json, summary_table

__all__ = ["app"]

JOURNAL_NAME = "banana2-journal.sqlite3"


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="banana2")
@click.option("-v", "--verbose", count=True, help="Log what the SDK does: -v warnings, -vv everything.")
def app(verbose: int) -> None:
    """Generate and edit images with the NanoBanana 2 API, run bulk jobs that resume without paying twice,
    and try it all offline with `banana2 demo`.

    The API key comes from --api-key or BANANA2_API_KEY and is never printed. Exit status: 0 all succeeded,
    1 some failed, 2 usage, 3 configuration or authentication.
    """
    # Transient trouble the SDK absorbs (a 429, a dropped poll) is not news on a terminal unless asked for.
    click.get_current_context().call_on_close(configure_logging(verbose))


def _task_options(function: Any) -> Any:
    function = click.option(
        "--out", type=click.Path(file_okay=False, path_type=Path), help="Download the images into this directory."
    )(function)
    function = click.option("--format", "output_format", type=click.Choice(OUTPUT_FORMATS), help="Default: png.")(
        function
    )
    function = click.option("--resolution", type=click.Choice(RESOLUTIONS), help="Default: 1k.")(function)
    return click.option("--aspect-ratio", type=click.Choice(ASPECT_RATIOS), help="Default: 1:1.")(function)


# -- one task ------------------------------------------------------------------------------------


def _show_result(output: Output, result: GenerationResult, files: Sequence[Path]) -> None:
    if output.as_json:
        output.json(result_json(result, files))
        return
    credits = f" · {result.consumed_credits} credits" if result.consumed_credits is not None else ""
    output.out.print(Text(f"✓ task {result.task_id} succeeded{credits}", style="green"))
    for url in result.images:
        output.out.print(Text(f"  {url}"), soft_wrap=True)
    for path in files:
        output.out.print(Text(f"  saved {path}"), soft_wrap=True)


def _show_task_error(output: Output, exc: TaskError) -> None:
    output.problem(f"task {exc.task_id} did not succeed: {type(exc).__name__}: {exc}")
    if isinstance(exc, (TaskTimeoutError, ClientClosedError)):
        # Not a verdict on the task: it may still finish, and it may be paid for.
        output.paid_task_hint()
    if output.as_json:
        output.json({"task_id": exc.task_id, "status": "failed", "error": error_json(exc)})


def _show_download_error(output: Output, result: GenerationResult, exc: Banana2Error) -> None:
    output.problem(f"task {result.task_id} succeeded, but its images could not be saved: {type(exc).__name__}: {exc}")
    output.note(f"its images: {' '.join(result.images)} (banana2 wait {result.task_id} --out DIR saves them)")
    if output.as_json:
        output.json({**result_json(result), "status": "download-failed", "error": error_json(exc)})


async def _one_task(output: Output, client: AsyncBanana2, request: GenerationRequest, out: Path | None) -> int:
    async with client:
        handle = await client.submit_request(request)
        # Named before the wait: from here on the task may be paid for, and every way out names it.
        output.submitted(handle.task_id)
        waiting = output.err.status(f"waiting for task {handle.task_id}…") if output.live else contextlib.nullcontext()
        try:
            with waiting:
                result = await handle
            if not any(url.lower().startswith(("http://", "https://")) for url in result.images):
                raise EmptyResultError(
                    f"task {result.task_id} reported success but gave no usable image URL",
                    task_id=result.task_id,
                    consumed_credits=result.consumed_credits,
                )
        except TaskError as exc:
            _show_task_error(output, exc)
            return EXIT_FAILED
        files: list[Path] = []
        if out is not None:
            try:
                files = await client.download(result, out)
            except Banana2Error as exc:
                _show_download_error(output, result, exc)
                return EXIT_FAILED
    _show_result(output, result, files)
    return EXIT_OK


@app.command()
@click.argument("prompt")
@_task_options
@api_options
def generate(
    prompt: str,
    aspect_ratio: str | None,
    resolution: str | None,
    output_format: str | None,
    out: Path | None,
    api_key: str | None,
    base_url: str | None,
    poll_interval: float | None,
    as_json: bool,
) -> None:
    """Generate an image from PROMPT (20 credits) and wait for it."""
    output = Output(as_json=as_json, secret=api_key)

    async def main() -> int:
        request = GenerationRequest(
            prompt=prompt, aspect_ratio=aspect_ratio, resolution=resolution, output_format=output_format
        )
        return await _one_task(output, make_client(api_key, base_url, poll_interval), request, out)

    run_async(output, main)


@app.command()
@click.argument("prompt")
@click.option("--image", "images", multiple=True, required=True, metavar="URL", help="A reference image URL (1 to 14).")
@_task_options
@api_options
def edit(
    prompt: str,
    images: tuple[str, ...],
    aspect_ratio: str | None,
    resolution: str | None,
    output_format: str | None,
    out: Path | None,
    api_key: str | None,
    base_url: str | None,
    poll_interval: float | None,
    as_json: bool,
) -> None:
    """Edit the --image references as PROMPT says (24 credits) and wait for the result."""
    output = Output(as_json=as_json, secret=api_key)

    async def main() -> int:
        request = GenerationRequest(
            prompt=prompt,
            type="edit",
            images=images,
            aspect_ratio=aspect_ratio,
            resolution=resolution,
            output_format=output_format,
        )
        return await _one_task(output, make_client(api_key, base_url, poll_interval), request, out)

    run_async(output, main)


@app.command()
@click.argument("task_id")
@api_options
def status(task_id: str, api_key: str | None, base_url: str | None, poll_interval: float | None, as_json: bool) -> None:
    """Show a task as the server sees it now (one request, no waiting)."""
    output = Output(as_json=as_json, secret=api_key)

    async def main() -> int:
        async with make_client(api_key, base_url, poll_interval) as client:
            info = await client.status(task_id)
        if output.as_json:
            output.json(info.model_dump(mode="json"))
        else:
            rows = [
                ("Task", info.task_id),
                ("Status", str(info.status)),
                ("Type", str(info.type or "")),
                ("Credits", "" if info.consumed_credits is None else str(info.consumed_credits)),
                ("Created", str(info.created_at or "")),
            ]
            rows += [(f"Image {index}", url) for index, url in enumerate(info.images)]
            if info.state == "failed" and info.error_detail:
                rows.append(("Error", info.error_detail))
            output.out.print(summary_table("Task status", rows))
        return EXIT_FAILED if info.state == "failed" else EXIT_OK

    run_async(output, main)


@app.command()
@click.argument("task_ids", nargs=-1, required=True, metavar="TASK_ID...")
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), help="Download the images into this directory."
)
@api_options
def wait(
    task_ids: tuple[str, ...],
    out: Path | None,
    api_key: str | None,
    base_url: str | None,
    poll_interval: float | None,
    as_json: bool,
) -> None:
    """Wait for tasks submitted earlier (by this or any program) and show, or download, their images."""
    output = Output(as_json=as_json, secret=api_key)

    async def main() -> int:
        records: list[dict[str, Any]] = []
        failed = 0
        async with make_client(api_key, base_url, poll_interval) as client:
            handles = [client.track(task_id) for task_id in dict.fromkeys(task_ids)]
            async for handle in client.as_completed(handles):
                try:
                    result = await handle
                    files = await client.download(result, out) if out is not None else []
                except AuthenticationError:
                    raise
                except Banana2Error as exc:
                    failed += 1
                    output.problem(f"task {handle.task_id} did not succeed: {type(exc).__name__}: {exc}")
                    records.append({"task_id": handle.task_id, "status": "failed", "error": error_json(exc)})
                    continue
                records.append(result_json(result, files))
                if not output.as_json:
                    _show_result(output, result, files)
        if output.as_json:
            output.json({"tasks": records})
        return EXIT_FAILED if failed else EXIT_OK

    run_async(output, main)


# -- bulk runs ------------------------------------------------------------------------------------


@app.command()
@click.argument("file", type=click.File("r", encoding="utf-8"))
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the images go; the journal too, unless --journal says otherwise.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=BATCH_CONCURRENCY,
    show_default=True,
    help="Tasks in flight at once.",
)
@click.option("--max-credits", type=click.IntRange(min=0), help="Refuse to start if the run would cost more.")
@click.option("--dry-run", is_flag=True, help="Print the number of tasks and their cost; send nothing.")
@click.option(
    "--journal",
    type=click.Path(dir_okay=False, path_type=Path),
    help=f"The run's journal. Default: OUT/{JOURNAL_NAME}; the same command again resumes.",
)
@click.option(
    "--resubmit-uncertain",
    is_flag=True,
    help="Send again the requests of an earlier run that may have been paid for without an answer.",
)
@api_options
def batch(
    file: IO[str],
    out: Path,
    concurrency: int,
    max_credits: int | None,
    dry_run: bool,
    journal: Path | None,
    resubmit_uncertain: bool,
    api_key: str | None,
    base_url: str | None,
    poll_interval: float | None,
    as_json: bool,
) -> None:
    """Run every request in FILE, downloading the images into --out; run it again to resume.

    FILE holds one prompt per line, or JSON Lines of request objects
    ({"prompt": ..., "aspect_ratio": "16:9", "images": [...]}); "-" reads stdin.
    """
    output = Output(as_json=as_json, secret=api_key)
    journal_path = journal if journal is not None else out / JOURNAL_NAME

    async def main() -> int:
        requests = parse_requests(file, source=getattr(file, "name", "FILE"))
        if dry_run:
            return await _dry_run(output, requests, journal_path, max_credits, resubmit_uncertain)
        client = make_client(api_key, base_url, poll_interval)
        # Before anything is paid for: images that cannot be saved would be paid for in vain.
        await anyio.to_thread.run_sync(_check_writable, out)
        async with client:
            progress = BatchProgress(output.err, total=len(requests), enabled=output.live)
            run = client.batch(
                requests,
                concurrency=concurrency,
                journal=journal_path,
                max_credits=max_credits,
                resubmit_uncertain=resubmit_uncertain,
                dest_dir=out,
                on_event=progress,
            )
            started = time.perf_counter()
            async with run:
                assert run.plan is not None
                plan = run.plan
                progress.begin(done=plan.succeeded + plan.failed)
                with progress:
                    progress.note(_plan_line(plan.total, plan.submit, plan.credits, plan.track, plan.succeeded))
                    outcomes = [outcome async for outcome in run]
            wall = time.perf_counter() - started
        tally = progress.tally
        summary = {
            "tasks": plan.total,
            "succeeded": plan.succeeded + tally.succeeded,
            "failed": plan.failed + tally.failed,
            "uncertain": tally.uncertain,
            "unsubmitted": tally.unsubmitted,
            "submitted": tally.submitted,
            "credits": tally.credits,
            "wall_time_seconds": round(wall, 2),
            "journal": str(journal_path),
            "out": str(out),
        }
        if output.as_json:
            output.json({"plan": plan_json(plan), "summary": summary, "outcomes": [outcome_json(o) for o in outcomes]})
        else:
            _show_batch(output, summary, outcomes)
        if any(isinstance(outcome.error, AuthenticationError) for outcome in outcomes):
            output.problem("the API key was refused; nothing more was sent")
            return EXIT_CONFIG
        return EXIT_OK if summary["succeeded"] == summary["tasks"] else EXIT_FAILED

    run_async(output, main, interrupted="interrupted; the journal keeps the run: the same command resumes it")


def _check_writable(out: Path) -> None:
    """Refuse an --out directory that cannot be made or written to (a file is made there, then removed)."""
    probe = out / f".banana2-probe-{secrets.token_hex(4)}"
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe.touch(exist_ok=False)
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise InvalidRequestError(
            f"--out {str(out)!r} cannot be written to ({reason}): the images would have nowhere to go; "
            "nothing was sent",
            field="out",
        ) from None


def _plan_line(total: int, submit: int, credits: int, track: int, done: int) -> str:
    parts = [f"{total} tasks in the job"]
    if done:
        parts.append(f"{done} finished earlier")
    if track:
        parts.append(f"{track} of an earlier run to wait for")
    parts.append(f"{submit} to submit for {credits} credits")
    return "; ".join(parts)


async def _dry_run(
    output: Output,
    requests: list[GenerationRequest],
    journal: Path,
    max_credits: int | None,
    resubmit_uncertain: bool,
) -> int:
    rows = await read_journal(journal, requests)
    plan = plan_batch(requests, rows, resubmit_uncertain=resubmit_uncertain)
    refused = max_credits is not None and plan.credits > max_credits
    if output.as_json:
        output.json({"dry_run": True, "plan": plan_json(plan), "max_credits": max_credits, "refused": refused})
    else:
        output.out.print(
            Text(_plan_line(plan.total, plan.submit, plan.credits, plan.track, plan.succeeded + plan.failed))
        )
        if plan.uncertain:
            output.out.print(Text(f"{plan.uncertain} may have been paid for already and will not be sent again"))
        output.out.print(Text("dry run: nothing was sent"))
    if refused:
        output.problem(f"the run would cost {plan.credits} credits, more than --max-credits {max_credits}")
        return EXIT_USAGE
    return EXIT_OK


def _show_batch(output: Output, summary: dict[str, Any], outcomes: Sequence[BatchOutcome]) -> None:
    print_problems(output.out, outcomes)
    rows = [
        ("Tasks", str(summary["tasks"])),
        ("Succeeded", str(summary["succeeded"])),
        ("Failed", str(summary["failed"])),
    ]
    if summary["uncertain"]:
        rows.append(("Uncertain", str(summary["uncertain"])))
    if summary["unsubmitted"]:
        rows.append(("Not submitted", str(summary["unsubmitted"])))
    rows += [
        ("Submitted now", f"{summary['submitted']} ({summary['credits']} credits)"),
        ("Wall time", f"{summary['wall_time_seconds']:.1f} s"),
    ]
    output.out.print(summary_table("banana2 batch", rows))
    output.out.print(Text(f"Images in {summary['out']}/ · journal {summary['journal']}"), soft_wrap=True)
    if any(isinstance(outcome.error, InsufficientCreditsError) for outcome in outcomes):
        output.out.print(
            Text(
                f"{summary['unsubmitted']} request(s) were not sent: the account ran out of credits. "
                "Top up, then run the same command again to resume."
            )
        )
    if summary["uncertain"]:
        output.out.print(
            Text(
                f"{summary['uncertain']} request(s) may have been paid for without an answer and are not sent again. "
                "Check your account; --resubmit-uncertain sends them anyway."
            )
        )


# -- offline ----------------------------------------------------------------------------------------


@app.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="0 takes a free port.")
@click.option("--credits", type=click.IntRange(min=0), default=None, help="The account's credits.")
@click.option("--speed", type=click.FloatRange(min=0.001), default=1.0, show_default=True, help="Divide task times.")
@click.option("--seed", type=int, default=None, help="Seed latencies and task ids, for repeatable runs.")
def simulate(host: str, port: int, credits: int | None, speed: float, seed: int | None) -> None:
    """Serve the offline simulator of the API until Ctrl-C; point --base-url at it."""
    from banana2_async.testing.__main__ import main as serve

    argv = ["serve", "--host", host, "--port", str(port), "--speed", str(speed)]
    if credits is not None:
        argv += ["--credits", str(credits)]
    if seed is not None:
        argv += ["--seed", str(seed)]
    click.get_current_context().exit(serve(argv))


@app.command()
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("banana2-demo"),
    show_default=True,
    help="Where the images go.",
)
@click.option("--count", type=click.IntRange(1, 500), default=24, show_default=True, help="How many tasks.")
@click.option("--concurrency", type=click.IntRange(min=1), default=12, show_default=True, help="Tasks in flight.")
@click.option("--seed", type=int, default=2026, show_default=True, help="Seed of the simulator.")
@click.option("--speed", type=click.FloatRange(min=1.0), default=1.0, hidden=True)
@click.option("--json", "as_json", is_flag=True, help="Print one machine-readable JSON document on stdout.")
def demo(out: Path, count: int, concurrency: int, seed: int, speed: float, as_json: bool) -> None:
    """A real bulk run against the built-in simulator: no key, no network, under a minute."""
    from ._demo import run_demo

    output = Output(as_json=as_json)

    async def main() -> int:
        return await run_demo(output, out=out, count=count, concurrency=concurrency, seed=seed, speed=speed)

    run_async(output, main)
