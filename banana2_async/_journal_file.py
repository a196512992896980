"""The journal's sqlite file: its format, and creating, checking, upgrading and opening one against a job.

One sqlite3 file in WAL mode, marked as a banana2 journal by sqlite's
``application_id`` header field and its ``meta`` table. A new journal is
written whole beside its path and linked into place, so a crash never leaves
half a journal; an existing one is opened without ever being created
(``mode=rw``), validated (`open_file`), and, when a run takes it, held
exclusively with every write committed ``synchronous=FULL``.

Format versions: 1 had no keys (rows were known by their position); a
version-1 journal is read as it is and brought to version 2 in place, in
one transaction, when a run opens it.

A file that is not a journal of the job is never written to; one that
cannot be read or written is refused as ``JournalError(reason="io")``, never
as a corrupt one. Every function here is blocking: `_journal` runs them in a
worker thread.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import sqlite3
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from ._exceptions import JournalError
from ._job import (
    STATES,
    JournalRow,
    Match,
    RowChange,
    StoredRow,
    content_keys,
    describe_change,
    match_rows,
    request_body,
)
from ._models import GenerationRequest

__all__ = [
    "APPLICATION_ID",
    "FORMAT",
    "SCHEMA_VERSION",
    "changes_error",
    "open_file",
    "open_or_create",
    "update_row",
]

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


def _error(path: Path, message: str, reason: str) -> JournalError:
    return JournalError(f"journal {str(path)!r} {message}", path=str(path), reason=reason)


def changes_error(path: Path, changes: Sequence[RowChange]) -> JournalError:
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
    """Write what `match_rows` found, in the open transaction; return the journal's id of each request's row."""
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


def open_file(
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
                raise changes_error(path, plan.changes)
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


def open_or_create(
    path: Path, requests: Sequence[GenerationRequest], keys: Sequence[str]
) -> tuple[sqlite3.Connection, Match]:
    """The journal at ``path`` opened for a run of the job and held, created first if there is none."""
    if not path.exists():
        try:
            _create(path, requests, keys)
        except OSError as exc:
            if exc.errno in _READ_ONLY_ERRNOS:
                where = f"its directory {str(path.parent)!r} is read-only or not writable"
                raise _error(path, f"cannot be created: {where} ({exc.strerror})", "io") from exc
            raise _error(path, f"cannot be created: {exc}", "io") from exc
        except sqlite3.Error as exc:
            raise _error(path, f"cannot be created: {exc}", "io") from exc
    conn, plan, _ = open_file(path, requests, keys, lock=True)
    return conn, plan


def update_row(conn: sqlite3.Connection, path: Path, idx: int, fields: Mapping[str, Any]) -> None:
    """Set ``fields`` (columns of the journal's rows) of row ``idx``, in one committed statement."""
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
