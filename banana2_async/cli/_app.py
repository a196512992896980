"""The ``banana2`` commands: generate, edit, status, wait, batch, simulate, demo."""

from __future__ import annotations

import codecs
import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.text import Text

from banana2_async._client import AsyncBanana2
from banana2_async._exceptions import (
    AuthenticationError,
    Banana2Error,
    ClientClosedError,
    EmptyResultError,
    InvalidRequestError,
    TaskError,
    TaskTimeoutError,
)
from banana2_async._models import GenerationRequest, GenerationResult
from banana2_async._types import ASPECT_RATIOS, OUTPUT_FORMATS, RESOLUTIONS
from banana2_async._types import DEFAULT_BATCH_CONCURRENCY as BATCH_CONCURRENCY
from banana2_async._version import __version__

from ._bulk import JOURNAL_NAME, BulkOptions, run_bulk
from ._common import (
    EXIT_FAILED,
    EXIT_OK,
    Output,
    api_options,
    configure_logging,
    error_json,
    make_client,
    poll_option,
    public_name,
    run_async,
    task_json,
)
from ._formats import FORMATS, Format
from ._gallery import GALLERY_NAME
from ._manifest import MANIFEST_NAME
from ._render import info_json, plural, result_json, summary_table

__all__ = ["JOURNAL_NAME", "app"]


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    invoke_without_command=True,
)
@click.version_option(__version__, prog_name="banana2")
@click.option("-v", "--verbose", count=True, help="Log what the SDK does: -v warnings, -vv everything.")
@click.pass_context
def app(context: click.Context, verbose: int) -> None:
    """Generate and edit images with the NanoBanana 2 API, run bulk jobs that resume without paying twice,
    and try it all offline with `banana2 demo`.

    The API key comes from --api-key or BANANA2_API_KEY and is never printed. Exit status: 0 all succeeded,
    1 some failed, 2 usage, 3 configuration or authentication.
    """
    if context.invoked_subcommand is None:
        click.echo(context.get_help())
        context.exit(0)
    # Transient trouble the SDK absorbs (a 429, a dropped poll) is not news on a terminal unless asked for.
    context.call_on_close(configure_logging(verbose))


if TYPE_CHECKING:
    _ParamType = click.ParamType[str]
else:
    # Generic in click's types since 8.3, not before.
    _ParamType = click.ParamType


class _RequestValue(_ParamType):
    """An option of a request, accepted as the SDK accepts it (``2K`` is ``2k``, ``jpg`` is ``jpeg``)."""

    def __init__(self, field: str, choices: Sequence[str]) -> None:
        self.name = field
        self._field = field
        self._choices = tuple(choices)

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str | None:
        return f"[{'|'.join(self._choices)}]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return getattr(GenerationRequest(prompt="-", **{self._field: value}), self._field)
        except InvalidRequestError:
            self.fail(f"{value!r} is not one of {', '.join(self._choices)}", param, ctx)


def _check_encoding(context: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None:
        try:
            codecs.lookup(value)
        except LookupError:
            message = f"{value!r} is not an encoding Python knows (cp1252, latin-1, utf-16, ...)"
            raise click.BadParameter(message) from None
    return value


def _task_options(function: Any) -> Any:
    function = click.option(
        "--out", type=click.Path(file_okay=False, path_type=Path), help="Download the images into this directory."
    )(function)
    function = click.option(
        "--format",
        "output_format",
        type=_RequestValue("output_format", OUTPUT_FORMATS),
        help="Default: png (jpg is jpeg).",
    )(function)
    function = click.option(
        "--resolution", type=_RequestValue("resolution", RESOLUTIONS), help="Default: 1k (any case: 2K is 2k)."
    )(function)
    return click.option("--aspect-ratio", type=_RequestValue("aspect_ratio", ASPECT_RATIOS), help="Default: 1:1.")(
        function
    )


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
    output.problem(f"task {exc.task_id} did not succeed: {public_name(exc)}: {exc}")
    if isinstance(exc, (TaskTimeoutError, ClientClosedError)):
        # Not a verdict on the task: it may still finish, and it may be paid for.
        output.paid_task_hint()
    if output.as_json:
        credits = exc.consumed_credits if isinstance(exc, EmptyResultError) else None
        output.json(task_json(exc.task_id, "failed", credits=credits, error=error_json(exc)))


def _show_download_error(output: Output, result: GenerationResult, exc: Banana2Error) -> None:
    output.problem(f"task {result.task_id} succeeded, but its images could not be saved: {public_name(exc)}: {exc}")
    output.note(f"its images: {' '.join(result.images)} (banana2 wait {result.task_id} --out DIR saves them)")
    if output.as_json:
        output.json(result_json(result, status="failed", error=error_json(exc)))


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
@poll_option
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
@poll_option
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
def status(task_id: str, api_key: str | None, base_url: str | None, as_json: bool) -> None:
    """Show a task as the server sees it now (one request, no waiting)."""
    output = Output(as_json=as_json, secret=api_key)

    async def main() -> int:
        async with make_client(api_key, base_url) as client:
            info = await client.status(task_id)
        if output.as_json:
            output.json(info_json(info))
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
@poll_option
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
                    output.problem(f"task {handle.task_id} did not succeed: {public_name(exc)}: {exc}")
                    records.append(task_json(handle.task_id, "failed", error=error_json(exc)))
                    continue
                records.append(result_json(result, files))
                if not output.as_json:
                    _show_result(output, result, files)
        if output.as_json:
            output.json({"tasks": records})
        elif failed:
            output.note(f"{plural(failed, 'task')} of {len(records)} did not succeed")
        return EXIT_FAILED if failed else EXIT_OK

    run_async(output, main)


# -- bulk runs ------------------------------------------------------------------------------------


@app.command()
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True, exists=True, path_type=str))
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the images go; the journal and the manifest too, unless --journal and --manifest say otherwise.",
)
@click.option(
    "--format",
    "input_format",
    type=click.Choice(FORMATS),
    help="The format of FILE. Default: from its extension (.csv .tsv .json .jsonl), else from its first line.",
)
@click.option(
    "--encoding",
    callback=_check_encoding,
    metavar="NAME",
    help="The encoding of FILE (cp1252, latin-1, ...). Default: UTF-8, or UTF-16/32 with a byte-order mark.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=BATCH_CONCURRENCY,
    show_default=True,
    help="Tasks in flight at once.",
)
@click.option("--max-credits", type=click.IntRange(min=0), help="Refuse to start if the run would cost more.")
@click.option("--dry-run", is_flag=True, help="Show the rows as read, what the run would do and cost; send nothing.")
@click.option(
    "--journal",
    type=click.Path(dir_okay=False, path_type=Path),
    help=f"The job's journal. Default: OUT/{JOURNAL_NAME}; the same command again resumes (and grows) the job.",
)
@click.option(
    "--manifest",
    type=click.Path(dir_okay=False, path_type=Path),
    help=f"Where to write the results manifest, one JSON line per row. Default: OUT/{MANIFEST_NAME}.",
)
@click.option("--gallery", is_flag=True, help=f"Also write OUT/{GALLERY_NAME}, the images and their rows on a page.")
@click.option(
    "--resubmit-uncertain",
    is_flag=True,
    help="Send again the requests of an earlier run that may have been paid for without an answer.",
)
@click.option(
    "--retry-failed",
    is_flag=True,
    help="Send again (and pay again for) rows whose task failed on the server, or succeeded without images.",
)
@api_options
@poll_option
def batch(
    file: str,
    out: Path,
    input_format: Format | None,
    encoding: str | None,
    concurrency: int,
    max_credits: int | None,
    dry_run: bool,
    journal: Path | None,
    manifest: Path | None,
    gallery: bool,
    resubmit_uncertain: bool,
    retry_failed: bool,
    api_key: str | None,
    base_url: str | None,
    poll_interval: float | None,
    as_json: bool,
) -> None:
    """Run every row of FILE, downloading the images into --out; run it again to resume, or after adding rows.

    \b
    FILE ("-" reads stdin) is one of:
      CSV or TSV  a header row, then a row per image: prompt (required), id, type,
                  images (a JSON array, or URLs separated by |), aspect_ratio,
                  resolution, output_format; meta_* columns are kept in the manifest
      JSON        an array of request objects ({"prompt": ..., "resolution": "2k"}) or prompts
      JSON Lines  one request object or prompt per line; blank and # lines skipped
      text        one prompt per line

    Rows are known by their id, else by their content: rows added to FILE are sent by the next run,
    rows finished are not sent again. After each run OUT/manifest.jsonl says what became of every row.
    """
    output = Output(as_json=as_json, secret=api_key)
    options = BulkOptions(
        file=file,
        out=out,
        concurrency=concurrency,
        max_credits=max_credits,
        dry_run=dry_run,
        journal=journal,
        manifest=manifest,
        gallery=gallery,
        resubmit_uncertain=resubmit_uncertain,
        retry_failed=retry_failed,
        input_format=input_format,
        encoding=encoding,
    )

    async def main() -> int:
        return await run_bulk(output, options, lambda: make_client(api_key, base_url, poll_interval))

    run_async(output, main, interrupted="interrupted; the journal keeps the run: the same command resumes it")


# -- offline ----------------------------------------------------------------------------------------


@app.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="0 takes a free port.")
@click.option("--credits", type=click.IntRange(min=0), default=None, help="The account's credits.")
@click.option("--speed", type=click.FloatRange(min=0.001), default=1.0, show_default=True, help="Divide task times.")
@click.option("--seed", type=int, default=None, help="Seed latencies and task ids, for repeatable runs.")
@click.option(
    "--api-key",
    default=None,
    metavar="KEY",
    help="The API key the simulator accepts (it prints it). Default: the simulator's own test key.",
)
def simulate(host: str, port: int, credits: int | None, speed: float, seed: int | None, api_key: str | None) -> None:
    """Serve the offline simulator of the API until Ctrl-C; point --base-url at it."""
    from banana2_async.testing.__main__ import main as serve

    argv = ["serve", "--host", host, "--port", str(port), "--speed", str(speed)]
    if api_key is not None:
        argv += ["--api-key", api_key]
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
