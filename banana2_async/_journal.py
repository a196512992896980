"""The journal of a bulk run: what a run records of each row, so that the next run pays for nothing twice.

A journal belongs to one job: its rows, each known by a key (the caller's
id for the row, else a digest of the request with its rank among identical
requests), so that the same job read again finds its rows wherever they
moved. It holds a row per request, moved through these states, each change
committed before the step it describes goes on::

    pending ──> submitting ──> submitted ──> succeeded
       ^            │              │
       └── refused ─┘              └──────> failed
                    (an answer lost: stays submitting, "uncertain")

``submitting`` is written BEFORE the ``POST``: a row found in that state by a
later run may have been paid for without an answer, and is not sent again
unless the caller says so. The task id is written as soon as it is known, so
a later run tracks the task instead of paying for it twice.

A job may grow: rows added since the journal was written are added to it as
pending, and rows never paid for may change or go. A row that was paid for
(or may have been) and is missing or changed makes the job another one: the
journal is refused (``JournalError(reason="other-job")``) naming those rows,
and left untouched.

A run holds its journal exclusively, so two runs of one job never submit the
same row. The file itself (one sqlite3 file, its format versions, how it is
created, checked and upgraded) is `_journal_file`'s; this module reads it
for planning and moves a run's rows through their states, off the event loop.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import anyio
import anyio.to_thread

from ._job import JournalRow, RowChange, RowState, describe_change, fingerprint, job_keys, row_fields
from ._journal_file import APPLICATION_ID, SCHEMA_VERSION, changes_error, open_file, open_or_create, update_row
from ._models import GenerationRequest

__all__ = [
    "APPLICATION_ID",
    "SCHEMA_VERSION",
    "Journal",
    "JournalRow",
    "JournalView",
    "RowChange",
    "RowState",
    "describe_change",
    "fingerprint",
    "inspect_journal",
    "job_keys",
    "read_journal",
    "split_error",
]

T = TypeVar("T")

_ERROR_PREFIX: Final = re.compile(r"([A-Za-z_][A-Za-z0-9_]*): (.*)", re.S)


@dataclass(frozen=True, slots=True)
class JournalView:
    """A journal read against a job, without writing to it.

    ``rows`` has one row per request of the job (new ones marked ``added``);
    ``changes`` lists the rows paid for that the job no longer has as they
    were: a run of this job would be refused while there are any.
    ``removed`` counts rows never paid for that the job no longer has (a run
    drops them). ``version`` is the file's format version.
    """

    rows: list[JournalRow]
    changes: list[RowChange]
    removed: int
    version: int


def split_error(text: str | None) -> tuple[str | None, str | None]:
    """A recorded error as (class name, message): the journal keeps ``"ClassName: message"``."""
    if not text:
        return None, None
    match = _ERROR_PREFIX.fullmatch(text)
    if match is None:
        return None, text
    return match.group(1), match.group(2)


async def inspect_journal(
    path: str | os.PathLike[str],
    requests: Sequence[GenerationRequest],
    keys: Sequence[str] | None = None,
) -> JournalView | None:
    """The journal at ``path`` read against a job, or ``None`` if there is none yet; writes nothing.

    ``keys`` are the rows' keys (`job_keys`); by default each request's content.

    Raises:
        JournalError: the file is not a readable journal, or is in use.
    """
    target = Path(path)
    row_keys = job_keys(requests) if keys is None else list(keys)

    def read() -> JournalView | None:
        if not target.exists():
            return None
        conn, plan, version = open_file(target, requests, row_keys, lock=False)
        conn.close()
        return JournalView(plan.rows, plan.changes, len(plan.removed), version)

    return await anyio.to_thread.run_sync(read)


async def read_journal(
    path: str | os.PathLike[str],
    requests: Sequence[GenerationRequest],
    keys: Sequence[str] | None = None,
) -> list[JournalRow] | None:
    """The rows of the journal at ``path`` for this job, or ``None`` if there is none yet.

    Reads only; for planning a run (``--dry-run``). Rows the journal does not
    hold yet come back pending, marked ``added``.

    Raises:
        JournalError: the file is not a journal of this job (rows paid for
            are missing or changed), is corrupt, or is in use.
    """
    view = await inspect_journal(path, requests, keys)
    if view is None:
        return None
    if view.changes:
        raise changes_error(Path(path), view.changes)
    return view.rows


class Journal:
    """The open journal of one run, or a journal kept in memory only (`Journal.memory`).

    Every write is one committed sqlite transaction, run in a worker thread,
    one at a time. A write that has started finishes even if its caller is
    cancelled. Rows are named by their position in the job the journal was
    opened with.
    """

    __slots__ = ("_conn", "_ids", "_limiter", "path")

    def __init__(self, conn: sqlite3.Connection | None, path: Path | None, ids: Sequence[int] = ()) -> None:
        self._conn = conn
        self.path = path
        self._ids = list(ids)
        self._limiter = anyio.CapacityLimiter(1)

    @classmethod
    def memory(cls) -> Journal:
        """A journal that records nothing: a run without a journal file."""
        return cls(None, None)

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        requests: Sequence[GenerationRequest],
        keys: Sequence[str] | None = None,
    ) -> tuple[Journal, list[JournalRow]]:
        """Open the journal at ``path`` for a run of ``requests``, creating it if absent; return it and its rows.

        ``keys`` are the rows' keys (`job_keys`); by default each request's
        content. Rows new to the journal are added as pending; rows never paid
        for that the job no longer has, or has changed, are dropped or reset.

        Raises:
            JournalError: the file is not a journal of this job (``"other-job"``:
                rows paid for are missing or changed; the message names them),
                is corrupt (``"corrupt"``), is held by another run (``"in-use"``),
                or cannot be created or written, read-only included (``"io"``).
        """
        target = Path(path)
        row_keys = job_keys(requests) if keys is None else list(keys)

        conn, plan = await anyio.to_thread.run_sync(open_or_create, target, requests, row_keys)
        rows = [JournalRow(row.index, *row_fields(row)) for row in plan.rows]
        return cls(conn, target, [idx for idx in plan.ids if idx is not None]), rows

    async def _call(self, function: Callable[..., T], *args: Any) -> T:
        return await anyio.to_thread.run_sync(function, *args, limiter=self._limiter)

    async def _set(self, index: int, **fields: Any) -> None:
        conn, path = self._conn, self.path
        if conn is not None and path is not None:
            await self._call(update_row, conn, path, self._ids[index], fields)

    async def mark_submitting(self, index: int) -> None:
        """Record that the request's ``POST`` is about to be sent (what an earlier task of the row left is cleared)."""
        await self._set(index, state="submitting", task_id=None, images="[]", files="[]", error=None, consumed=None)

    async def mark_submitted(self, index: int, task_id: str) -> None:
        """Record the task id the server gave the request."""
        await self._set(index, state="submitted", task_id=task_id, error=None)

    async def mark_unsent(self, index: int, error: str) -> None:
        """Record that the request was certainly not paid for (refused, or never sent): a later run sends it."""
        await self._set(index, state="pending", task_id=None, error=error)

    async def mark_uncertain(self, index: int, error: str) -> None:
        """Record that the request's ``POST`` may have been paid for without an answer."""
        await self._set(index, state="submitting", error=error)

    async def mark_succeeded(
        self, index: int, images: Sequence[str], files: Sequence[str], *, consumed: int | None = None
    ) -> None:
        """Record the task's result URLs, the files written from them, and the credits the server reported."""
        await self._set(
            index,
            state="succeeded",
            images=json.dumps(list(images)),
            files=json.dumps(list(files)),
            error=None,
            consumed=consumed,
        )

    async def mark_failed(
        self, index: int, error: str, *, final: bool, images: Sequence[str] = (), consumed: int | None = None
    ) -> None:
        """Record a failure: ``final`` ends the row; otherwise a later run tracks its task again."""
        if final:
            await self._set(index, state="failed", error=error, consumed=consumed)
        else:
            await self._set(index, error=error, images=json.dumps(list(images)), consumed=consumed)

    async def aclose(self) -> None:
        """Close the file, releasing it for the next run. Safe to call more than once."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with anyio.CancelScope(shield=True):
                await self._call(conn.close)
