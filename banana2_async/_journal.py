"""The journal of a bulk run: one sqlite3 file (WAL mode), used off the event loop.

A journal belongs to one job: its rows, each known by a key (the caller's
id for the row, else a digest of the request with its rank among identical
requests), so that the same job read again finds its rows wherever they
moved. It holds a row per request, moved through these states, each change
committed (``synchronous=FULL``) before the step it describes goes on::

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

A run holds its journal exclusively (sqlite's exclusive locking mode), so two
runs of one job never submit the same row. A file that is not a journal of
this job is never written to. A journal that cannot be written (a read-only
file, directory or file system) is refused before the run starts, as
``JournalError(reason="io")`` saying so, never as a corrupt one.

Format versions: 1 had no keys (rows were known by their position); a
version-1 journal is read as it is and brought to version 2 in place, in
one transaction, when a run opens it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import anyio
import anyio.to_thread

from ._exceptions import JournalError
from ._job import (
    STATES,
    JournalRow,
    Match,
    RowChange,
    RowState,
    StoredRow,
    content_keys,
    describe_change,
    fingerprint,
    job_keys,
    match_rows,
    request_body,
    row_fields,
)
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

# sqlite's own "which program wrote this file" header field: b"BAN2".
APPLICATION_ID: Final = 0x42414E32
SCHEMA_VERSION: Final = 2
FORMAT: Final = "banana2-journal"
_BUSY_TIMEOUT: Final = 0.2
_SQLITE_BUSY: Final = 5
_SQLITE_LOCKED: Final = 6
# Primary result codes of a database that could not be read or written, as opposed to one that is damaged.
_SQLITE_UNUSABLE: Final = frozenset(
    {
        3,  # SQLITE_PERM
        8,  # SQLITE_READONLY
        10,  # SQLITE_IOERR
        13,  # SQLITE_FULL
        14,  # SQLITE_CANTOPEN
        22,  # SQLITE_NOLFS
        23,  # SQLITE_AUTH
    }
)
_UNUSABLE_WORDS: Final = ("readonly", "read-only", "unable to open", "disk i/o", "full")
_READ_ONLY_ERRNOS: Final = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
# How many changed rows a refusal names one by one.
_CHANGES_NAMED: Final = 5
_ERROR_PREFIX: Final = re.compile(r"([A-Za-z_][A-Za-z0-9_]*): (.*)", re.S)

# Version 1, as it was written; version 2 is version 1 and `_UPGRADE`, so a journal made new and one
# brought up from version 1 have the same shape.
_SCHEMA: Final = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE requests (
    idx INTEGER PRIMARY KEY,
    body TEXT NOT NULL,
    credits INTEGER NOT NULL,
    state TEXT NOT NULL,
    task_id TEXT,
    images TEXT NOT NULL DEFAULT '[]',
    files TEXT NOT NULL DEFAULT '[]',
    error TEXT,
    updated REAL NOT NULL
);
"""
_UPGRADE: Final = """
ALTER TABLE requests ADD COLUMN key TEXT;
ALTER TABLE requests ADD COLUMN position INTEGER;
ALTER TABLE requests ADD COLUMN consumed INTEGER;
CREATE UNIQUE INDEX requests_key ON requests (key);
"""
_COLUMNS: Final = frozenset({"state", "task_id", "images", "files", "error", "consumed"})


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


def _error(path: Path, message: str, reason: str) -> JournalError:
    return JournalError(f"journal {str(path)!r} {message}", path=str(path), reason=reason)


def _changes_error(path: Path, changes: Sequence[RowChange]) -> JournalError:
    named = "; ".join(describe_change(change) for change in changes[:_CHANGES_NAMED])
    more = f"; and {len(changes) - _CHANGES_NAMED} more" if len(changes) > _CHANGES_NAMED else ""
    count = (
        "1 row paid for there (or maybe paid for) is"
        if len(changes) == 1
        else f"{len(changes)} rows paid for there (or maybe paid for) are"
    )
    return _error(
        path,
        f"belongs to another job: {count} not in this job as they were: "
        f"{named}{more}. Put them back as they were to resume that job, or use another journal path for a new job",
        "other-job",
    )


def _is_busy(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return bool(code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED))
    return "locked" in str(exc)  # pragma: no cover - Python 3.10 has no error codes


def _is_unusable(exc: sqlite3.Error) -> bool:
    """Whether sqlite could not read or write the file (permissions, a read-only or full disk), not parse it."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _SQLITE_UNUSABLE
    text = str(exc).lower()  # pragma: no cover - Python 3.10 has no error codes
    return any(word in text for word in _UNUSABLE_WORDS)  # pragma: no cover


def _unwritable(path: Path, what: str, exc: OSError) -> JournalError:
    reason = exc.strerror or type(exc).__name__
    if exc.errno in _READ_ONLY_ERRNOS:
        message = f"cannot be written: {what} is read-only or not writable ({reason}); it was left untouched"
    else:
        message = f"cannot be written: {what} could not be opened for writing ({reason})"
    return _error(path, message, "io")


def _check_writable(path: Path) -> None:
    """Refuse a journal this process cannot write: the file itself, or its directory (sqlite makes files there)."""
    try:
        os.close(os.open(path, os.O_RDWR))
    except OSError as exc:
        raise _unwritable(path, "the file", exc) from exc
    probe = path.with_name(f".{path.name}.{secrets.token_hex(4)}.probe")
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except OSError as exc:
        raise _unwritable(path, f"its directory {str(path.parent)!r}", exc) from exc
    probe.unlink(missing_ok=True)


def _text(value: bytes) -> str:
    # A journal edited by hand may hold bytes that are not UTF-8: they read as replacement characters.
    return value.decode("utf-8", errors="replace")


def _storable(value: Any) -> Any:
    """``value`` as sqlite can store it: text that cannot be UTF-8 (a lone surrogate) keeps an escaped form."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", errors="backslashreplace").decode("utf-8")
    return value


def _connect(path: Path) -> sqlite3.Connection:
    # mode=rw never creates a file: a path that vanished is an error, not a fresh empty journal.
    uri = f"{path.resolve().as_uri()}?mode=rw"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=_BUSY_TIMEOUT)
    conn.text_factory = _text
    return conn


def _statements(script: str) -> list[str]:
    return [statement for statement in script.split(";") if statement.strip()]


def _create(path: Path, requests: Sequence[GenerationRequest], keys: Sequence[str]) -> None:
    """Write a complete new journal beside ``path``, then link it into place unless a file got there first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.new")
    now = time.time()
    # Made here first, so that a directory that refuses it says why (sqlite would only say "unable to open").
    os.close(os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    try:
        conn = sqlite3.connect(temporary, isolation_level=None)
        try:
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("BEGIN")
            for statement in _statements(_SCHEMA) + _statements(_UPGRADE):
                conn.execute(statement)
            conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [("format", FORMAT), ("requests", str(len(requests))), ("created", str(now))],
            )
            conn.executemany(
                "INSERT INTO requests (idx, key, position, body, credits, state, updated) "
                "VALUES (?, ?, ?, ?, ?, 'pending', ?)",
                [
                    (index, _storable(key), index, request_body(request), request.credits, now)
                    for index, (request, key) in enumerate(zip(requests, keys, strict=True))
                ],
            )
            conn.execute("COMMIT")
        finally:
            conn.close()
        # A hard link never replaces an existing file, unlike a rename: a journal that
        # appeared meanwhile is kept, and validated like any other.
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _validate(conn: sqlite3.Connection, path: Path) -> int:
    """Check that the file is a banana2 journal, undamaged; return its format version."""
    (application_id,) = conn.execute("PRAGMA application_id").fetchone()
    if application_id != APPLICATION_ID:
        raise _error(path, "is not a banana2 journal (it is another sqlite database); it was left untouched", "corrupt")
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version not in (1, SCHEMA_VERSION):
        raise _error(path, f"has format version {version}; this banana2-async reads 1 and {SCHEMA_VERSION}", "corrupt")
    (check,) = conn.execute("PRAGMA quick_check").fetchone()
    if check != "ok":
        raise _error(path, f"is damaged ({check}); it was left untouched", "corrupt")
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    if meta.get("format") != FORMAT:
        raise _error(path, "is not a banana2 journal; it was left untouched", "corrupt")
    (count,) = conn.execute("SELECT count(*) FROM requests").fetchone()
    if str(count) != meta.get("requests"):
        raise _error(path, f"holds {count} rows where its header says {meta.get('requests')!r}", "corrupt")
    return int(version)


def _stored(conn: sqlite3.Connection, path: Path, version: int) -> list[StoredRow]:
    if version == 1:
        query = "SELECT idx, NULL, idx, body, state, task_id, images, files, error, NULL FROM requests ORDER BY idx"
    else:
        query = "SELECT idx, key, position, body, state, task_id, images, files, error, consumed FROM requests"
    records = conn.execute(query).fetchall()
    stored: list[StoredRow] = []
    for number, (idx, key, position, body, state, task_id, images, files, error, consumed) in enumerate(records):
        # Version 1 knew rows by their position only: every position from 0 must be there.
        if state not in STATES or (version == 1 and idx != number):
            raise _error(path, f"has an unreadable row {idx!r} (state {state!r})", "corrupt")
        try:
            image_list = tuple(str(url) for url in json.loads(images))
            file_list = tuple(str(name) for name in json.loads(files))
            if version != 1 and not (isinstance(key, str) and isinstance(position, int)):
                raise ValueError("no key")
        except (TypeError, ValueError) as exc:
            raise _error(path, f"has an unreadable row {idx}", "corrupt") from exc
        spent = consumed if isinstance(consumed, int) else None
        row = JournalRow(position, state, task_id, image_list, file_list, error, spent)
        stored.append(StoredRow(idx, key, position, body, row))
    if version == 1:
        keys = content_keys([item.body for item in stored])
        stored = [
            StoredRow(item.idx, str(key), item.position, item.body, item.row)
            for item, key in zip(stored, keys, strict=True)
        ]
    return stored


def _apply(
    conn: sqlite3.Connection,
    version: int,
    stored: Sequence[StoredRow],
    plan: Match,
    requests: Sequence[GenerationRequest],
    keys: Sequence[str],
) -> list[int]:
    """Write what `_plan` found, in the open transaction; return the journal's id of each request's row."""
    now = time.time()
    if version == 1:
        for statement in _statements(_UPGRADE):
            conn.execute(statement)
        conn.executemany(
            "UPDATE requests SET key = ?, position = ? WHERE idx = ?",
            [(_storable(item.key), item.position, item.idx) for item in stored],
        )
        conn.execute("DELETE FROM meta WHERE key = 'job'")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    if plan.removed:
        conn.executemany("DELETE FROM requests WHERE idx = ?", [(idx,) for idx in plan.removed])
    position = {idx: index for index, idx in enumerate(plan.ids) if idx is not None}
    if plan.reset:
        conn.executemany(
            "UPDATE requests SET body = ?, credits = ?, state = 'pending', task_id = NULL, images = '[]', "
            "files = '[]', error = NULL, consumed = NULL, updated = ? WHERE idx = ?",
            [(request_body(requests[position[idx]]), requests[position[idx]].credits, now, idx) for idx in plan.reset],
        )
    if plan.rekeyed:
        conn.executemany(
            "UPDATE requests SET key = ? WHERE idx = ?", [(_storable(key), idx) for idx, key in plan.rekeyed]
        )
    if plan.moved:
        conn.executemany(
            "UPDATE requests SET position = ? WHERE idx = ?", [(now_at, idx) for idx, now_at in plan.moved]
        )
    ids: list[int] = []
    (next_idx,) = conn.execute("SELECT coalesce(max(idx), -1) + 1 FROM requests").fetchone()
    added: list[tuple[Any, ...]] = []
    for index, idx in enumerate(plan.ids):
        if idx is None:
            idx, next_idx = next_idx, next_idx + 1
            request = requests[index]
            added.append((idx, _storable(keys[index]), index, request_body(request), request.credits, now))
        ids.append(idx)
    if added:
        conn.executemany(
            "INSERT INTO requests (idx, key, position, body, credits, state, updated) "
            "VALUES (?, ?, ?, ?, ?, 'pending', ?)",
            added,
        )
    if version == 1 or plan.removed or added:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'requests'", (str(len(requests)),))
    return ids


def _open(
    path: Path, requests: Sequence[GenerationRequest], keys: Sequence[str], *, lock: bool
) -> tuple[sqlite3.Connection, Match, int]:
    """Open and validate an existing journal against the job; with ``lock``, bring it up to date and hold it."""
    try:
        if path.is_dir():
            raise _error(path, "is a directory", "io")
        if path.stat().st_size == 0:
            raise _error(path, "is an empty file, not a journal; it was left untouched", "corrupt")
        if lock:
            _check_writable(path)
        conn = _connect(path)
    except (OSError, sqlite3.Error) as exc:
        raise _error(path, f"cannot be opened: {exc}", "io") from exc
    try:
        if lock:
            conn.execute("PRAGMA locking_mode = EXCLUSIVE")
            conn.execute("PRAGMA synchronous = FULL")
        conn.execute("BEGIN IMMEDIATE" if lock else "BEGIN")
        version = _validate(conn, path)
        stored = _stored(conn, path, version)
        plan = match_rows(stored, keys, [request_body(request) for request in requests])
        if lock:
            if plan.changes:
                raise _changes_error(path, plan.changes)
            ids = _apply(conn, version, stored, plan, requests, keys)
            plan = Match(plan.rows, [*ids], [], [], [], [])
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        conn.close()
        if _is_busy(exc):
            raise _error(path, "is in use by another run of this job", "in-use") from exc
        if _is_unusable(exc):
            raise _error(path, f"cannot be read or written ({exc}); it was left untouched", "io") from exc
        raise _error(path, f"is corrupt or not a journal ({exc}); it was left untouched", "corrupt") from exc
    except BaseException:
        conn.close()
        raise
    return conn, plan, version


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
        conn, plan, version = _open(target, requests, row_keys, lock=False)
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
        raise _changes_error(Path(path), view.changes)
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

        def open_or_create() -> tuple[sqlite3.Connection, Match]:
            if not target.exists():
                try:
                    _create(target, requests, row_keys)
                except OSError as exc:
                    if exc.errno in _READ_ONLY_ERRNOS:
                        where = f"its directory {str(target.parent)!r} is read-only or not writable"
                        raise _error(target, f"cannot be created: {where} ({exc.strerror})", "io") from exc
                    raise _error(target, f"cannot be created: {exc}", "io") from exc
                except sqlite3.Error as exc:
                    raise _error(target, f"cannot be created: {exc}", "io") from exc
            conn, plan, _ = _open(target, requests, row_keys, lock=True)
            return conn, plan

        conn, plan = await anyio.to_thread.run_sync(open_or_create)
        rows = [JournalRow(row.index, *row_fields(row)) for row in plan.rows]
        return cls(conn, target, [idx for idx in plan.ids if idx is not None]), rows

    async def _call(self, function: Callable[..., T], *args: Any) -> T:
        return await anyio.to_thread.run_sync(function, *args, limiter=self._limiter)

    @staticmethod
    def _update(conn: sqlite3.Connection, path: Path, idx: int, fields: dict[str, Any]) -> None:
        assert set(fields) <= _COLUMNS
        assignments = ", ".join(f"{column} = ?" for column in fields)
        try:
            # The column names come from this module, never from data: only values are bound.
            conn.execute(
                f"UPDATE requests SET {assignments}, updated = ? WHERE idx = ?",
                (*(_storable(value) for value in fields.values()), time.time(), idx),
            )
        except sqlite3.Error as exc:
            raise _error(path, f"could not be written: {exc}", "io") from exc

    async def _set(self, index: int, **fields: Any) -> None:
        conn, path = self._conn, self.path
        if conn is not None and path is not None:
            await self._call(self._update, conn, path, self._ids[index], fields)

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
