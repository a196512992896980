"""The journal of a bulk run: states that survive reopening, one job per file, corrupt files never touched."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sqlite3
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from banana2_async import GenerationRequest, JournalError
from banana2_async._journal import APPLICATION_ID, Journal, JournalRow, fingerprint, read_journal

pytestmark = pytest.mark.anyio

JOB = [
    GenerationRequest(prompt="a cat"),
    GenerationRequest(prompt="a dog", resolution="2k"),
    GenerationRequest(prompt="night", images=("https://example.com/day.png",)),
]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def _make(path: Path, requests: list[GenerationRequest] = JOB) -> None:
    journal, _ = await Journal.open(path, requests)
    await journal.aclose()


def _listing(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


def _raw(path: Path, *statements: str) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for statement in statements:
            conn.execute(statement)
    finally:
        conn.close()


async def test_a_new_journal_holds_a_pending_row_per_request(tmp_path: Path) -> None:
    """A missing journal is created in WAL mode with every request pending, and nothing else in its directory."""
    path = tmp_path / "nested" / "run.db"
    journal, rows = await Journal.open(path, JOB)
    await journal.aclose()
    assert rows == [JournalRow(0, "pending"), JournalRow(1, "pending"), JournalRow(2, "pending")]
    assert sorted(p.name for p in path.parent.iterdir()) == ["run.db"]
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA application_id").fetchone() == (APPLICATION_ID,)
        assert conn.execute("SELECT credits FROM requests ORDER BY idx").fetchall() == [(20,), (20,), (24,)]
    finally:
        conn.close()


async def test_every_state_survives_reopening(tmp_path: Path) -> None:
    """Each mark is committed at once: a reopened journal shows submitting, submitted, succeeded, failed, pending."""
    path = tmp_path / "run.db"
    journal, _ = await Journal.open(path, [*JOB, GenerationRequest(prompt="five")])
    await journal.mark_submitting(0)
    await journal.mark_submitting(1)
    await journal.mark_submitted(1, "task-1")
    await journal.mark_succeeded(1, ["https://cdn/1.png"], ["out/task-1-0.png"])
    await journal.mark_submitting(2)
    await journal.mark_uncertain(2, "SubmissionUncertainError: lost")
    await journal.mark_submitted(3, "task-3")
    await journal.mark_failed(3, "TaskTimeoutError: late", final=False, images=["https://cdn/3.png"])
    await journal.mark_unsent(0, "InsufficientCreditsError: 402")
    await journal.aclose()
    await journal.aclose()

    rows = await read_journal(path, [*JOB, GenerationRequest(prompt="five")])
    assert rows == [
        JournalRow(0, "pending", error="InsufficientCreditsError: 402"),
        JournalRow(1, "succeeded", "task-1", ("https://cdn/1.png",), ("out/task-1-0.png",)),
        JournalRow(2, "submitting", error="SubmissionUncertainError: lost"),
        JournalRow(3, "submitted", "task-3", ("https://cdn/3.png",), error="TaskTimeoutError: late"),
    ]
    journal, _ = await Journal.open(path, [*JOB, GenerationRequest(prompt="five")])
    await journal.mark_failed(3, "TaskFailedError: nope", final=True)
    await journal.aclose()
    rows = await read_journal(path, [*JOB, GenerationRequest(prompt="five")])
    assert rows is not None
    assert rows[3] == JournalRow(3, "failed", "task-3", ("https://cdn/3.png",), error="TaskFailedError: nope")


async def test_read_journal_of_a_missing_file_is_none_and_creates_nothing(tmp_path: Path) -> None:
    """Planning against a journal that does not exist yet reads nothing and writes nothing."""
    assert await read_journal(tmp_path / "none.db", JOB) is None
    assert _listing(tmp_path) == []


async def test_a_journal_of_another_job_is_refused_and_untouched(tmp_path: Path) -> None:
    """Other requests, or the same ones in another order, raise JournalError(other-job); the file is unchanged."""
    path = tmp_path / "run.db"
    await _make(path)
    before = _digest(path)
    for other in ([*JOB, GenerationRequest(prompt="one more")], list(reversed(JOB)), JOB[:2]):
        with pytest.raises(JournalError, match="another job") as caught:
            await Journal.open(path, other)
        assert caught.value.reason == "other-job"
        assert caught.value.path == str(path)
        with pytest.raises(JournalError, match="another job"):
            await read_journal(path, other)
    assert _digest(path) == before


def test_the_job_fingerprint_ignores_spelling_but_not_content() -> None:
    """An explicit default type is the same job; a changed option or order is another."""
    implicit = [GenerationRequest(prompt="a"), GenerationRequest(prompt="b", images=("https://x.io/i.png",))]
    explicit = [
        GenerationRequest(prompt="a", type="text-to-image"),
        GenerationRequest(prompt="b", type="edit", images=("https://x.io/i.png",)),
    ]
    assert fingerprint(implicit) == fingerprint(explicit)
    assert fingerprint(implicit) != fingerprint(implicit[::-1])
    assert fingerprint(implicit) != fingerprint([GenerationRequest(prompt="a", resolution="4k"), implicit[1]])


@pytest.mark.parametrize(
    "content",
    [b"", b"this is not a database, just some text\n" * 200, b"SQLite format 3\x00" + b"\xff" * 4000],
    ids=["empty", "text", "bad-header"],
)
async def test_a_file_that_is_not_a_journal_is_refused_and_untouched(tmp_path: Path, content: bytes) -> None:
    """Garbage, an empty file, or a damaged header raise JournalError(corrupt) and are never overwritten."""
    path = tmp_path / "run.db"
    path.write_bytes(content)
    with pytest.raises(JournalError) as caught:
        await Journal.open(path, JOB)
    assert caught.value.reason == "corrupt"
    assert path.read_bytes() == content
    assert _listing(tmp_path) == ["run.db"]


async def test_a_truncated_journal_is_refused(tmp_path: Path) -> None:
    """A journal cut in half is reported as corrupt, and left as it is."""
    path = tmp_path / "run.db"
    await _make(path, [GenerationRequest(prompt=f"prompt {index} " + "x" * 400) for index in range(60)])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(JournalError) as caught:
        await Journal.open(path, [GenerationRequest(prompt=f"prompt {index} " + "x" * 400) for index in range(60)])
    assert caught.value.reason == "corrupt"
    assert path.read_bytes() == data[: len(data) // 2]


async def test_another_sqlite_database_is_not_a_journal(tmp_path: Path) -> None:
    """A sqlite file of another program is refused by its application id and left untouched."""
    path = tmp_path / "app.db"
    _raw(path, "CREATE TABLE users (name TEXT)", "INSERT INTO users VALUES ('ada')")
    before = _digest(path)
    with pytest.raises(JournalError, match="not a banana2 journal"):
        await Journal.open(path, JOB)
    assert _digest(path) == before


@pytest.mark.parametrize(
    ("statement", "message"),
    [
        ("PRAGMA user_version = 99", "format version 99"),
        ("UPDATE meta SET value = 'something-else' WHERE key = 'format'", "not a banana2 journal"),
        ("DELETE FROM requests WHERE idx = 2", "holds 2 rows"),
        ("UPDATE requests SET state = 'exploded' WHERE idx = 1", "unreadable row 1"),
        ("UPDATE requests SET files = '{not json' WHERE idx = 0", "unreadable row 0"),
    ],
)
async def test_a_journal_damaged_inside_is_refused(tmp_path: Path, statement: str, message: str) -> None:
    """A newer format, a foreign meta table, missing rows or unreadable rows raise JournalError(corrupt)."""
    path = tmp_path / "run.db"
    await _make(path)
    _raw(path, statement)
    before = _digest(path)
    with pytest.raises(JournalError, match=message) as caught:
        await Journal.open(path, JOB)
    assert caught.value.reason == "corrupt"
    assert _digest(path) == before


async def test_a_journal_is_held_by_one_run_at_a_time(tmp_path: Path) -> None:
    """While a run holds the journal, opening or reading it raises JournalError(in-use); closing releases it."""
    path = tmp_path / "run.db"
    journal, _ = await Journal.open(path, JOB)
    await journal.mark_submitting(0)
    with pytest.raises(JournalError, match="in use") as caught:
        await Journal.open(path, JOB)
    assert caught.value.reason == "in-use"
    with pytest.raises(JournalError, match="in use"):
        await read_journal(path, JOB)
    await journal.aclose()
    second, rows = await Journal.open(path, JOB)
    await second.aclose()
    assert rows[0].state == "submitting"


async def test_paths_that_cannot_hold_a_journal(tmp_path: Path) -> None:
    """A directory, or a path under a regular file, raise JournalError(io)."""
    with pytest.raises(JournalError, match="is a directory") as caught:
        await Journal.open(tmp_path, JOB)
    assert caught.value.reason == "io"
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(JournalError, match="cannot be created") as caught:
        await Journal.open(blocker / "run.db", JOB)
    assert caught.value.reason == "io"


async def test_a_write_that_fails_is_a_journal_error(tmp_path: Path) -> None:
    """When sqlite refuses a write, the mark raises JournalError(io) instead of going on unrecorded."""
    path = tmp_path / "run.db"
    await _make(path)
    _raw(path, "CREATE TRIGGER refuse BEFORE UPDATE ON requests BEGIN SELECT RAISE(ABORT, 'disk says no'); END")
    journal, _ = await Journal.open(path, JOB)
    try:
        with pytest.raises(JournalError, match="disk says no") as caught:
            await journal.mark_submitting(0)
        assert caught.value.reason == "io"
    finally:
        await journal.aclose()


async def test_a_memory_journal_records_nothing(tmp_path: Path) -> None:
    """Journal.memory takes every mark and writes no file."""
    journal = Journal.memory()
    await journal.mark_submitting(0)
    await journal.mark_submitted(0, "task")
    await journal.mark_succeeded(0, [], [])
    await journal.aclose()
    assert journal.path is None
    assert _listing(tmp_path) == []


async def test_a_damaged_page_is_caught_before_any_use(tmp_path: Path) -> None:
    """A journal whose b-tree pages are damaged is refused as corrupt (sqlite's quick_check), and left as it is."""
    requests = [GenerationRequest(prompt=f"prompt {index} " + "x" * 300) for index in range(40)]
    path = tmp_path / "run.db"
    await _make(path, requests)
    data = bytearray(path.read_bytes())
    for page in (2, 4):
        # The first cell pointer of an interior page, pointed past the end of the page.
        data[page * 4096 + 8 : page * 4096 + 12] = b"\xff\xff\xff\xff"
    path.write_bytes(bytes(data))
    with pytest.raises(JournalError) as caught:
        await Journal.open(path, requests)
    assert caught.value.reason == "corrupt"
    assert path.read_bytes() == bytes(data)


@contextlib.contextmanager
def _unwritable(path: Path) -> Iterator[None]:
    """Make ``path`` (a file or directory) unwritable, even for root, for the block.

    As root, permission bits do not stop a write: the immutable attribute does (``chattr +i``,
    where the file system has it). Elsewhere the write bits are cleared.
    """
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
        try:
            yield
        finally:
            path.chmod(mode)
        return
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(path)], capture_output=True, check=False).returncode:
        pytest.skip("running as root without an immutable attribute to make a path read-only")
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", str(path)], check=True)


async def test_a_read_only_journal_says_so_and_is_left_alone(tmp_path: Path) -> None:
    """A journal file that cannot be written raises JournalError(io) saying read-only, never corrupt."""
    path = tmp_path / "run.db"
    await _make(path)
    before = _digest(path)
    with _unwritable(path), pytest.raises(JournalError) as caught:
        await Journal.open(path, JOB)
    assert caught.value.reason == "io"
    assert "read-only" in str(caught.value)
    assert "corrupt" not in str(caught.value)
    assert _digest(path) == before


async def test_a_journal_in_a_read_only_directory_says_so(tmp_path: Path) -> None:
    """In a directory that cannot be written, opening a journal or creating one says read-only, never corrupt."""
    directory = tmp_path / "jobs"
    directory.mkdir()
    await _make(directory / "run.db")
    with _unwritable(directory):
        for path in (directory / "run.db", directory / "new.db"):
            with pytest.raises(JournalError) as caught:
                await Journal.open(path, JOB)
            assert caught.value.reason == "io"
            assert "read-only" in str(caught.value)
            assert "corrupt" not in str(caught.value)
    assert _listing(directory) == ["run.db"]


@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs Linux's sysfs")
async def test_a_journal_where_no_one_may_write_says_so() -> None:
    """Under /sys, where even root cannot create files, a new journal is refused as not writable (no privileges
    or file attributes needed to check it)."""
    with pytest.raises(JournalError) as caught:
        await Journal.open(Path("/sys/kernel/banana2-journal/run.db"), JOB)
    assert caught.value.reason == "io"
    assert "read-only or not writable" in str(caught.value)


async def test_text_that_is_not_unicode_is_stored_escaped(tmp_path: Path) -> None:
    """A server's text holding a lone surrogate (a task id, an error) is recorded in an escaped form, not refused."""
    path = tmp_path / "run.db"
    journal, _ = await Journal.open(path, JOB)
    await journal.mark_submitted(0, "task-\ud800")
    await journal.mark_failed(1, "TaskFailedError: bad \udcff text", final=True)
    await journal.aclose()
    rows = await read_journal(path, JOB)
    assert rows is not None
    assert rows[0].task_id == "task-\\ud800"
    assert rows[1].error == "TaskFailedError: bad \\udcff text"
