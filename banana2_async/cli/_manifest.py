"""The results manifest of a bulk job: one JSON line per input row, whatever run it was done in.

Each line holds the row (its number, id, prompt, options and metadata), what
became of it (status, task id, error) and what it left (credits, image URLs,
files). The manifest is made from the journal after a run, so it describes
the whole job; it is written to a temporary file and renamed into place.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Literal

from banana2_async._batch import BatchOutcome
from banana2_async._exceptions import EmptyResultError
from banana2_async._journal import JournalRow, split_error
from banana2_async._models import GenerationRequest

from ._common import cli_text
from ._inputs import InputRow

__all__ = ["MANIFEST_NAME", "STATUSES", "RowStatus", "counts", "job_records", "relative_files", "write_manifest"]

MANIFEST_NAME: Final = "manifest.jsonl"
RowStatus = Literal["succeeded", "failed", "uncertain", "unsubmitted", "in_progress"]
STATUSES: Final[tuple[RowStatus, ...]] = ("succeeded", "failed", "uncertain", "unsubmitted", "in_progress")


def options_of(request: GenerationRequest) -> dict[str, Any]:
    """A request's options: its type, and each option that was set."""
    body = request.to_wire()
    body.pop("prompt")
    return {"type": request.task_type, **body}


def _status_of(row: JournalRow) -> RowStatus:
    if row.state == "pending":
        return "unsubmitted"
    if row.state == "submitting":
        return "uncertain"
    if row.state == "submitted":
        # A task known and not finished: the run stopped while it ran, or could not finish with it.
        return "failed" if row.error else "in_progress"
    return row.state


def _error_of(type_name: str | None, message: str | None) -> dict[str, str | None] | None:
    if message is None:
        return None
    return {"type": type_name, "message": cli_text(message)}


def _from_journal(row: JournalRow, outcome: BatchOutcome | None) -> dict[str, Any]:
    type_name, message = split_error(row.error)
    if message is None and outcome is not None and outcome.error is not None and row.state != "succeeded":
        # A row the run did not send (it stopped first) keeps no reason in the journal; the run knows it.
        type_name, message = type(outcome.error).__name__, str(outcome.error)
    return {
        "status": _status_of(row),
        "task_id": row.task_id,
        "error": _error_of(type_name, message),
        "credits": row.consumed,
        "images": list(row.images),
        "files": list(row.files),
    }


def _from_outcome(outcome: BatchOutcome) -> dict[str, Any]:
    error = outcome.error
    credits = outcome.result.consumed_credits if outcome.result is not None else None
    if isinstance(error, EmptyResultError):
        credits = error.consumed_credits
    return {
        "status": outcome.status,
        "task_id": outcome.task_id,
        "error": None if error is None else _error_of(type(error).__name__, str(error)),
        "credits": credits,
        "images": list(outcome.result.images) if outcome.result is not None else [],
        "files": [str(path) for path in outcome.files],
    }


def job_records(
    rows: Sequence[InputRow],
    journal: Sequence[JournalRow] | None,
    outcomes: Mapping[int, BatchOutcome],
) -> list[dict[str, Any]]:
    """One record per input row: from the journal after the run if there is one, else from this run's outcomes.

    ``files`` are the paths as written; see `relative_files`.
    """
    records: list[dict[str, Any]] = []
    for index, row in enumerate(rows):
        outcome = outcomes.get(index)
        if journal is not None:
            result = _from_journal(journal[index], outcome)
        elif outcome is not None:
            result = _from_outcome(outcome)
        else:
            result = {
                "status": "unsubmitted",
                "task_id": None,
                "error": None,
                "credits": None,
                "images": [],
                "files": [],
            }
        records.append(
            {
                "row": row.number,
                "id": row.id,
                "line": row.line,
                "prompt": row.request.prompt,
                "options": options_of(row.request),
                "metadata": dict(row.metadata),
                **result,
                "price": row.request.credits,
            }
        )
    return records


def relative_files(records: Sequence[Mapping[str, Any]], directory: Path) -> list[dict[str, Any]]:
    """``records`` with their files as paths relative to ``directory`` (where the manifest or gallery is)."""
    base = directory.resolve()
    relative: list[dict[str, Any]] = []
    for record in records:
        files = []
        for name in record["files"]:
            try:
                files.append(Path(os.path.relpath(Path(name).resolve(), base)).as_posix())
            except ValueError:
                # Another drive (Windows): no relative path leads there.
                files.append(str(Path(name).resolve()))
        relative.append({**record, "files": files})
    return relative


def counts(records: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """How many rows are in each status, every status named."""
    tally = Counter(record["status"] for record in records)
    return {status: tally.get(status, 0) for status in STATUSES}


def write_manifest(path: Path, records: Sequence[Mapping[str, Any]]) -> None:
    """Write the manifest at ``path`` whole: to a temporary file beside it, synced, then renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        # A lone surrogate (text a server chose) is written as its JSON escape.
        with temporary.open("w", encoding="utf-8", errors="backslashreplace", newline="\n") as file:
            for record in relative_files(records, path.parent):
                file.write(json.dumps(record, ensure_ascii=False) + "\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
