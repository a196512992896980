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

from banana2_async import GenerationRequest, InvalidRequestError, JournalError
from banana2_async._job import request_body
from banana2_async._journal import (
    APPLICATION_ID,
    SCHEMA_VERSION,
    Journal,
    JournalRow,
    describe_change,
    fingerprint,
    inspect_journal,
    job_keys,
    read_journal,
    split_error,
)

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
    # Sent again, the row forgets its earlier task until the new one is known.
    journal, _ = await Journal.open(path, [*JOB, GenerationRequest(prompt="five")])
    await journal.mark_submitting(3)
    await journal.aclose()
    rows = await read_journal(path, [*JOB, GenerationRequest(prompt="five")])
    assert rows is not None
    assert rows[3] == JournalRow(3, "submitting")


async def test_read_journal_of_a_missing_file_is_none_and_creates_nothing(tmp_path: Path) -> None:
    """Planning against a journal that does not exist yet reads nothing and writes nothing."""
    assert await read_journal(tmp_path / "none.db", JOB) is None
    assert _listing(tmp_path) == []


async def _paid(path: Path) -> None:
    """A journal of JOB whose first row succeeded and whose second has a task in flight."""
    journal, _ = await Journal.open(path, JOB)
    await journal.mark_submitting(0)
    await journal.mark_submitted(0, "task-0")
    await journal.mark_succeeded(0, ["https://cdn/0.png"], ["out/task-0-0.png"], consumed=20)
    await journal.mark_submitting(1)
    await journal.mark_submitted(1, "task-1")
    await journal.aclose()


async def test_a_job_that_lost_a_row_paid_for_is_refused_and_untouched(tmp_path: Path) -> None:
    """A job without a row paid for (or maybe paid for) raises JournalError(other-job) naming that row; the file
    is unchanged."""
    path = tmp_path / "run.db"
    await _paid(path)
    before = _digest(path)
    for other in ([JOB[1], JOB[2]], [GenerationRequest(prompt="something else")], []):
        with pytest.raises(JournalError, match="another job") as caught:
            await Journal.open(path, other)
        assert caught.value.reason == "other-job"
        assert caught.value.path == str(path)
        assert "row 1 'a cat' (succeeded, task task-0) is not in the job any more" in str(caught.value)
        with pytest.raises(JournalError, match="another job"):
            await read_journal(path, other)
    with pytest.raises(JournalError, match=r"row 2 'a dog' \(submitted, task task-1\)"):
        await Journal.open(path, [JOB[0], JOB[2]])
    assert _digest(path) == before


async def test_a_job_grows_and_its_rows_may_move(tmp_path: Path) -> None:
    """Rows added to a job are added to its journal as pending; rows paid for are found wherever they moved."""
    path = tmp_path / "run.db"
    await _paid(path)
    grown = [GenerationRequest(prompt="new first"), JOB[2], JOB[1], JOB[0], GenerationRequest(prompt="new last")]
    planned = await read_journal(path, grown)
    assert planned is not None
    assert [(row.state, row.task_id, row.added) for row in planned] == [
        ("pending", None, True),
        ("pending", None, False),
        ("submitted", "task-1", False),
        ("succeeded", "task-0", False),
        ("pending", None, True),
    ]
    journal, rows = await Journal.open(path, grown)
    await journal.mark_submitted(0, "task-new")
    await journal.aclose()
    assert rows == planned
    again = await read_journal(path, grown)
    assert again is not None
    assert [row.task_id for row in again] == ["task-new", None, "task-1", "task-0", None]
    assert not any(row.added for row in again)
    assert again[3].consumed == 20
    # In any order, it is the same job.
    assert [row.task_id for row in await read_journal(path, grown[::-1]) or []] == [
        None,
        "task-0",
        "task-1",
        None,
        "task-new",
    ]


async def test_rows_never_paid_for_may_change_or_go(tmp_path: Path) -> None:
    """A row never paid for that is changed (same id) starts again as the new request; one that is gone is
    dropped; a row paid for and changed under the same id is refused, naming where it is now."""
    path = tmp_path / "run.db"
    ids = ["cat", "dog", "night"]
    journal, _ = await Journal.open(path, JOB, job_keys(JOB, ids))
    await journal.mark_submitting(0)
    await journal.mark_submitted(0, "task-0")
    await journal.mark_failed(1, "BadRequestError: 400: prompt refused", final=True)
    await journal.aclose()

    fixed = [JOB[0], GenerationRequest(prompt="a dog, fixed")]
    view = await inspect_journal(path, fixed, job_keys(fixed, ids[:2]))
    assert view is not None
    assert (view.changes, view.removed, view.version) == ([], 1, 2)
    journal, rows = await Journal.open(path, fixed, job_keys(fixed, ids[:2]))
    await journal.aclose()
    assert rows == [JournalRow(0, "submitted", "task-0"), JournalRow(1, "pending")]
    conn = sqlite3.connect(path)
    try:
        stored = conn.execute("SELECT key, body FROM requests ORDER BY idx").fetchall()
        assert conn.execute("SELECT value FROM meta WHERE key = 'requests'").fetchone() == ("2",)
    finally:
        conn.close()
    assert [key for key, _ in stored] == ["id:cat", "id:dog"]
    assert "a dog, fixed" in stored[1][1]

    changed = [GenerationRequest(prompt="a cat, but blue"), fixed[1]]
    view = await inspect_journal(path, changed, job_keys(changed, ids[:2]))
    assert view is not None
    (change,) = view.changes
    assert (change.key, change.position, change.now, change.task_id) == ("id:cat", 0, 0, "task-0")
    assert describe_change(change) == "row 1 (id 'cat') 'a cat' (submitted, task task-0) was changed (it is row 1 now)"
    with pytest.raises(JournalError, match="changed") as caught:
        await Journal.open(path, changed, job_keys(changed, ids[:2]))
    assert caught.value.reason == "other-job"


async def test_a_row_given_an_id_later_is_the_same_row(tmp_path: Path) -> None:
    """Rows known by their request, then given ids (an id column added to the file), are found by their request:
    nothing paid for is lost, and from then on the journal knows them by their ids."""
    path = tmp_path / "run.db"
    await _paid(path)
    ids = ["cat", "dog", "night"]
    view = await inspect_journal(path, JOB, job_keys(JOB, ids))
    assert view is not None
    assert (view.changes, [row.task_id for row in view.rows]) == ([], ["task-0", "task-1", None])
    journal, rows = await Journal.open(path, JOB, job_keys(JOB, ids))
    await journal.aclose()
    assert [row.state for row in rows] == ["succeeded", "submitted", "pending"]
    changed = [GenerationRequest(prompt="a cat, in blue"), *JOB[1:]]
    with pytest.raises(JournalError, match=r"row 1 \(id 'cat'\) 'a cat' .* was changed"):
        await read_journal(path, changed, job_keys(changed, ids))


def test_keys_name_rows_by_id_or_by_content() -> None:
    """A row with an id is known by it; others by their request and its rank among identical ones; ids are
    checked."""
    twice = [GenerationRequest(prompt="same"), GenerationRequest(prompt="same"), GenerationRequest(prompt="other")]
    keys = job_keys(twice)
    assert keys[0].startswith("body:")
    assert keys[0].endswith(":1")
    assert keys[1] == keys[0][:-1] + "2"
    assert keys[2].endswith(":1")
    assert job_keys(twice, ["a", None, "b"]) == ["id:a", keys[0], "id:b"]
    assert job_keys([GenerationRequest(prompt="same", type="text-to-image")]) == keys[:1]
    with pytest.raises(InvalidRequestError, match=r"keys\[1\] repeats keys\[0\]"):
        job_keys(twice, ["a", "a", None])
    with pytest.raises(InvalidRequestError, match="non-blank"):
        job_keys(twice, ["a", " ", None])
    with pytest.raises(InvalidRequestError, match="one id"):
        job_keys(twice, ["a"])


def test_recorded_errors_split_into_class_and_message() -> None:
    """The journal's "Class: message" reads back as its class name and message; other text as a message."""
    assert split_error("TaskFailedError: nope: really") == ("TaskFailedError", "nope: really")
    assert split_error("the run stopped") == (None, "the run stopped")
    assert split_error(None) == (None, None)


def _write_version_1(path: Path, requests: list[GenerationRequest], states: dict[int, tuple[str, str | None]]) -> None:
    """A journal as banana2-async wrote it before rows had keys (format version 1)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute("PRAGMA user_version = 1")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        conn.execute(
            "CREATE TABLE requests (idx INTEGER PRIMARY KEY, body TEXT NOT NULL, credits INTEGER NOT NULL, "
            "state TEXT NOT NULL, task_id TEXT, images TEXT NOT NULL DEFAULT '[]', "
            "files TEXT NOT NULL DEFAULT '[]', error TEXT, updated REAL NOT NULL)"
        )
        meta = [("format", "banana2-journal"), ("job", fingerprint(requests)), ("requests", str(len(requests)))]
        conn.executemany("INSERT INTO meta VALUES (?, ?)", [*meta, ("created", "0")])
        for index, request in enumerate(requests):
            state, task_id = states.get(index, ("pending", None))
            conn.execute(
                "INSERT INTO requests (idx, body, credits, state, task_id, updated) VALUES (?, ?, ?, ?, ?, 0)",
                (index, request_body(request), request.credits, state, task_id),
            )
    finally:
        conn.close()


async def test_a_version_1_journal_is_read_as_it_is_and_brought_up_to_date_by_a_run(tmp_path: Path) -> None:
    """A journal of format version 1 reads without a write; a run opening it upgrades it in place, keeping every
    row, and can grow it like any other."""
    path = tmp_path / "run.db"
    _write_version_1(path, JOB, {0: ("succeeded", "task-0"), 1: ("submitting", None)})
    before = _digest(path)
    rows = await read_journal(path, JOB)
    assert rows == [JournalRow(0, "succeeded", "task-0"), JournalRow(1, "submitting"), JournalRow(2, "pending")]
    view = await inspect_journal(path, JOB[:1])
    assert view is not None
    assert [change.position for change in view.changes] == [1]
    assert view.version == 1
    assert _digest(path) == before

    grown = [*JOB, GenerationRequest(prompt="one more")]
    journal, opened = await Journal.open(path, grown)
    await journal.mark_submitting(3)
    await journal.aclose()
    assert opened == [*rows, JournalRow(3, "pending")]
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert conn.execute("SELECT count(*) FROM meta WHERE key = 'job'").fetchone() == (0,)
    finally:
        conn.close()
    reread = await read_journal(path, grown)
    assert reread is not None
    assert [row.state for row in reread] == ["succeeded", "submitting", "pending", "submitting"]


def test_a_row_is_paid_for_once_it_may_have_been_sent() -> None:
    """Rows submitting, submitted, succeeded, or failed with a task count as paid for; pending ones and rows
    refused without a task do not."""
    assert [JournalRow(0, state).paid for state in ("pending", "submitting", "submitted", "succeeded", "failed")] == [
        False,
        True,
        True,
        True,
        False,
    ]
    assert JournalRow(0, "failed", "task").paid


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
        ("PRAGMA user_version = 99", "format version 99; this banana2-async reads 1 and 2"),
        ("UPDATE meta SET value = 'something-else' WHERE key = 'format'", "not a banana2 journal"),
        ("DELETE FROM requests WHERE idx = 2", "holds 2 rows where its header says '3'"),
        ("UPDATE requests SET key = NULL WHERE idx = 1", "unreadable row 1"),
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
