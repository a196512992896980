"""The journal of a bulk run: one sqlite3 file (WAL mode), used off the event loop.

A journal belongs to one job, the ordered list of its requests, named by a
fingerprint of their bodies. It holds a row per request, moved through these
states, each change committed (``synchronous=FULL``) before the step it
describes goes on::

    pending ──> submitting ──> submitted ──> succeeded
       ^            │              │
       └── refused ─┘              └──────> failed
                    (an answer lost: stays submitting, "uncertain")

``submitting`` is written BEFORE the ``POST``: a row found in that state by a
later run may have been paid for without an answer, and is not sent again
unless the caller says so. The task id is written as soon as it is known, so
a later run tracks the task instead of paying for it twice.

A run holds its journal exclusively (sqlite's exclusive locking mode), so two
runs of one job never submit the same row. A file that is not a journal of
this job is never written to. A journal that cannot be written (a read-only
file, directory or file system) is refused before the run starts, as
``JournalError(reason="io")`` saying so, never as a corrupt one.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

import anyio
import anyio.to_thread

from ._exceptions import JournalError
from ._models import GenerationRequest

__all__ = ["APPLICATION_ID", "SCHEMA_VERSION", "Journal", "JournalRow", "RowState", "fingerprint", "read_journal"]

T = TypeVar("T")

RowState = Literal["pending", "submitting", "submitted", "succeeded", "failed"]
STATES: Final[frozenset[str]] = frozenset({"pending", "submitting", "submitted", "succeeded", "failed"})

# sqlite's own "which program wrote this file" header field: b"BAN2".
APPLICATION_ID: Final = 0x42414E32
SCHEMA_VERSION: Final = 1
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
_COLUMNS: Final = frozenset({"state", "task_id", "images", "files", "error"})


@dataclass(frozen=True, slots=True)
class JournalRow:
    """One request of a job as the journal last recorded it."""

    index: int
    state: RowState
    task_id: str | None = None
    images: tuple[str, ...] = ()
    files: tuple[str, ...] = ()
    error: str | None = None


_Opened = tuple[sqlite3.Connection, list[JournalRow]]


def request_body(request: GenerationRequest) -> str:
    """The canonical JSON of a request: the same task gives the same text however it was written."""
    body = request.to_wire()
    body["type"] = request.task_type
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def fingerprint(requests: Sequence[GenerationRequest]) -> str:
    """The identity of a job: a SHA-256 over its requests, in order."""
    digest = hashlib.sha256()
    for request in requests:
        digest.update(request_body(request).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def _error(path: Path, message: str, reason: str) -> JournalError:
    return JournalError(f"journal {str(path)!r} {message}", path=str(path), reason=reason)


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
    return any(
        word in text for word in ("readonly", "read-only", "unable to open", "disk i/o", "full")
    )  # pragma: no cover


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


def _create(path: Path, requests: Sequence[GenerationRequest], job: str) -> None:
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
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [("format", FORMAT), ("job", job), ("requests", str(len(requests))), ("created", str(now))],
            )
            conn.executemany(
                "INSERT INTO requests (idx, body, credits, state, updated) VALUES (?, ?, ?, 'pending', ?)",
                [(index, request_body(request), request.credits, now) for index, request in enumerate(requests)],
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


def _validate(conn: sqlite3.Connection, path: Path, requests: Sequence[GenerationRequest], job: str) -> None:
    (application_id,) = conn.execute("PRAGMA application_id").fetchone()
    if application_id != APPLICATION_ID:
        raise _error(path, "is not a banana2 journal (it is another sqlite database); it was left untouched", "corrupt")
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version != SCHEMA_VERSION:
        raise _error(path, f"has format version {version}; this banana2-async reads {SCHEMA_VERSION}", "corrupt")
    (check,) = conn.execute("PRAGMA quick_check").fetchone()
    if check != "ok":
        raise _error(path, f"is damaged ({check}); it was left untouched", "corrupt")
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    if meta.get("format") != FORMAT:
        raise _error(path, "is not a banana2 journal; it was left untouched", "corrupt")
    if meta.get("job") != job:
        raise _error(
            path,
            f"belongs to another job ({meta.get('requests', '?')} requests, not these {len(requests)}): "
            "use another journal path for this job, or the same requests as before to resume that one",
            "other-job",
        )
    (count,) = conn.execute("SELECT count(*) FROM requests").fetchone()
    if count != len(requests):
        raise _error(path, f"holds {count} rows for a job of {len(requests)} requests", "corrupt")


def _rows(conn: sqlite3.Connection, path: Path) -> list[JournalRow]:
    rows: list[JournalRow] = []
    for index, state, task_id, images, files, error in conn.execute(
        "SELECT idx, state, task_id, images, files, error FROM requests ORDER BY idx"
    ):
        if index != len(rows) or state not in STATES:
            raise _error(path, f"has an unreadable row {index!r} (state {state!r})", "corrupt")
        try:
            image_list = tuple(str(url) for url in json.loads(images))
            file_list = tuple(str(name) for name in json.loads(files))
        except (TypeError, ValueError) as exc:
            raise _error(path, f"has an unreadable row {index}", "corrupt") from exc
        rows.append(JournalRow(index, state, task_id, image_list, file_list, error))
    return rows


def _open(path: Path, requests: Sequence[GenerationRequest], *, lock: bool) -> _Opened:
    """Open and validate an existing journal; with ``lock``, hold it for this run until closed."""
    job = fingerprint(requests)
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
        _validate(conn, path, requests, job)
        rows = _rows(conn, path)
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
    return conn, rows


async def read_journal(path: str | os.PathLike[str], requests: Sequence[GenerationRequest]) -> list[JournalRow] | None:
    """The rows of the journal at ``path`` for this job, or ``None`` if there is none yet.

    Reads only; for planning a run (``--dry-run``).

    Raises:
        JournalError: the file is not a journal of this job, is corrupt, or is in use.
    """
    target = Path(path)

    def read() -> list[JournalRow] | None:
        if not target.exists():
            return None
        conn, rows = _open(target, requests, lock=False)
        conn.close()
        return rows

    return await anyio.to_thread.run_sync(read)


class Journal:
    """The open journal of one run, or a journal kept in memory only (`Journal.memory`).

    Every write is one committed sqlite transaction, run in a worker thread,
    one at a time. A write that has started finishes even if its caller is
    cancelled.
    """

    __slots__ = ("_conn", "_limiter", "path")

    def __init__(self, conn: sqlite3.Connection | None, path: Path | None) -> None:
        self._conn = conn
        self.path = path
        self._limiter = anyio.CapacityLimiter(1)

    @classmethod
    def memory(cls) -> Journal:
        """A journal that records nothing: a run without a journal file."""
        return cls(None, None)

    @classmethod
    async def open(
        cls, path: str | os.PathLike[str], requests: Sequence[GenerationRequest]
    ) -> tuple[Journal, list[JournalRow]]:
        """Open the journal at ``path`` for a run of ``requests``, creating it if absent; return it and its rows.

        Raises:
            JournalError: the file is not a journal of this job (``"other-job"``),
                is corrupt (``"corrupt"``), is held by another run (``"in-use"``),
                or cannot be created or written, read-only included (``"io"``).
        """
        target = Path(path)

        def open_or_create() -> _Opened:
            if not target.exists():
                try:
                    _create(target, requests, fingerprint(requests))
                except OSError as exc:
                    if exc.errno in _READ_ONLY_ERRNOS:
                        where = f"its directory {str(target.parent)!r} is read-only or not writable"
                        raise _error(target, f"cannot be created: {where} ({exc.strerror})", "io") from exc
                    raise _error(target, f"cannot be created: {exc}", "io") from exc
                except sqlite3.Error as exc:
                    raise _error(target, f"cannot be created: {exc}", "io") from exc
            return _open(target, requests, lock=True)

        conn, rows = await anyio.to_thread.run_sync(open_or_create)
        return cls(conn, target), rows

    async def _call(self, function: Callable[..., T], *args: Any) -> T:
        return await anyio.to_thread.run_sync(function, *args, limiter=self._limiter)

    @staticmethod
    def _update(conn: sqlite3.Connection, path: Path, index: int, fields: dict[str, Any]) -> None:
        assert set(fields) <= _COLUMNS
        assignments = ", ".join(f"{column} = ?" for column in fields)
        try:
            # The column names come from this module, never from data: only values are bound.
            conn.execute(
                f"UPDATE requests SET {assignments}, updated = ? WHERE idx = ?",
                (*(_storable(value) for value in fields.values()), time.time(), index),
            )
        except sqlite3.Error as exc:
            raise _error(path, f"could not be written: {exc}", "io") from exc

    async def _set(self, index: int, **fields: Any) -> None:
        conn, path = self._conn, self.path
        if conn is not None and path is not None:
            await self._call(self._update, conn, path, index, fields)

    async def mark_submitting(self, index: int) -> None:
        """Record that the request's ``POST`` is about to be sent."""
        await self._set(index, state="submitting", error=None)

    async def mark_submitted(self, index: int, task_id: str) -> None:
        """Record the task id the server gave the request."""
        await self._set(index, state="submitted", task_id=task_id, error=None)

    async def mark_unsent(self, index: int, error: str) -> None:
        """Record that the request was certainly not paid for (refused, or never sent): a later run sends it."""
        await self._set(index, state="pending", task_id=None, error=error)

    async def mark_uncertain(self, index: int, error: str) -> None:
        """Record that the request's ``POST`` may have been paid for without an answer."""
        await self._set(index, state="submitting", error=error)

    async def mark_succeeded(self, index: int, images: Sequence[str], files: Sequence[str]) -> None:
        """Record the task's result URLs and the files written from them."""
        await self._set(
            index, state="succeeded", images=json.dumps(list(images)), files=json.dumps(list(files)), error=None
        )

    async def mark_failed(self, index: int, error: str, *, final: bool, images: Sequence[str] = ()) -> None:
        """Record a failure: ``final`` ends the row; otherwise a later run tracks its task again."""
        if final:
            await self._set(index, state="failed", error=error)
        else:
            await self._set(index, error=error, images=json.dumps(list(images)))

    async def aclose(self) -> None:
        """Close the file, releasing it for the next run. Safe to call more than once."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with anyio.CancelScope(shield=True):
                await self._call(conn.close)
