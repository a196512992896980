"""Bulk runs against a hostile or broken server: one poisoned row costs that row only, a success without
images is a failure, closing a run sends nothing new, and the journal never holds the API key."""

from __future__ import annotations

import collections
import json
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import anyio
import anyio.to_thread
import httpx
import pytest

import banana2_async
from banana2_async import (
    AsyncBanana2,
    Banana2Error,
    BatchOutcome,
    EmptyResultError,
    GenerationRequest,
    SubmissionUncertainError,
    TaskFailedError,
)
from banana2_async._journal import Journal, JournalRow, read_journal
from banana2_async.testing import Simulator

pytestmark = pytest.mark.anyio

POISON: Final = "the poisoned prompt"
PROMPTS: Final = [f"a quiet harbour, take {index}" for index in range(5)]
JOB: Final = [*PROMPTS[:2], POISON, *PROMPTS[2:]]
KEY: Final = "sk-test/abc+def/123+XYZ"

Answer = Callable[[httpx.Request], httpx.Response | None]


def _envelope(data: Any, *, code: Any = 200, message: str = "success") -> bytes:
    return json.dumps({"code": code, "message": message, "data": data}).encode()


def _prompt_of(request: httpx.Request) -> str | None:
    if request.method != "POST":
        return None
    try:
        return str(json.loads(request.content)["prompt"])
    except (ValueError, KeyError, TypeError):
        return None


class Poisoned(httpx.AsyncBaseTransport):
    """The simulator, except where ``answer`` has something else to say about a request."""

    def __init__(self, sim: Simulator, answer: Answer) -> None:
        self._inner = sim.transport()
        self._answer = answer
        self.posts: list[tuple[float, str | None]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            await request.aread()
            self.posts.append((time.monotonic(), _prompt_of(request)))
        special = self._answer(request)
        if special is not None:
            return special
        return await self._inner.handle_async_request(request)


def _submit_answer(body: bytes, *, status: int = 200) -> Answer:
    """Answer the poisoned prompt's submit with ``body``."""

    def answer(request: httpx.Request) -> httpx.Response | None:
        if _prompt_of(request) == POISON:
            return httpx.Response(status, content=body, headers={"content-type": "application/json"})
        return None

    return answer


def _task_id_answer(task_id_json: str) -> Answer:
    """Give the poisoned prompt's task the id that ``task_id_json`` (a JSON string literal) decodes to."""
    body = b'{"code": 200, "message": "success", "data": {"task_id": ' + task_id_json.encode() + b"}}"
    return _submit_answer(body)


def _status_answer(data: Callable[[str], dict[str, Any] | bytes], poisoned: set[str]) -> Answer:
    """Submit the poisoned prompt to the simulator but answer every poll of its task with ``data(task_id)``."""

    def answer(request: httpx.Request) -> httpx.Response | None:
        if request.method == "POST" and _prompt_of(request) == POISON:
            task_id = f"poisoned-{len(poisoned)}"
            poisoned.add(task_id)
            return httpx.Response(200, content=_envelope({"task_id": task_id, "status": "IN_PROGRESS"}))
        task_id = request.url.params.get("task_id", "")
        if request.method == "GET" and task_id in poisoned:
            reply = data(task_id)
            content = reply if isinstance(reply, bytes) else _envelope(reply)
            return httpx.Response(200, content=content, headers={"content-type": "application/json"})
        return None

    return answer


async def _run(
    sim: Simulator, transport: httpx.AsyncBaseTransport, journal: Path, dest_dir: Path | None = None
) -> list[BatchOutcome]:
    async with AsyncBanana2(
        api_key=sim.api_key, base_url=sim.base_url, transport=transport, poll_interval=0.001, seed=5
    ) as client:
        run = client.batch(JOB, concurrency=3, journal=journal, dest_dir=dest_dir, wait_timeout=0.5)
        return [outcome async for outcome in run]


def _typed(reason: str | None) -> bool:
    """Whether a journal's reason names an error class of the SDK, then says what happened."""
    match = re.match(r"([A-Za-z]+): \S", reason or "")
    if match is None:
        return False
    cls = getattr(banana2_async, match.group(1), None)
    return isinstance(cls, type) and issubclass(cls, Banana2Error)


async def _rows(journal: Path) -> list[JournalRow]:
    rows = await read_journal(journal, [GenerationRequest(prompt=prompt) for prompt in JOB])
    assert rows is not None
    return rows


POISONS: Final[dict[str, Callable[[set[str]], Answer]]] = {
    "truncated-json": lambda _: _submit_answer(b'{"code": 200, "message": "success", "data": {"task_id": "t-'),
    "not-json": lambda _: _submit_answer(b"<html><body>502 Bad Gateway</body></html>"),
    "not-utf8": lambda _: _submit_answer(b'{"code": 200, "data": {"task_id": "\xff\xfe"}}'),
    "huge-code": lambda _: _submit_answer(b'{"code": ' + b"9" * 5000 + b', "data": {"task_id": "t-1"}}'),
    "code-not-a-number": lambda _: _submit_answer(_envelope({"task_id": "t-1"}, code="\u0662\u0660\u0660")),
    "data-not-an-object": lambda _: _submit_answer(_envelope([1, 2, 3])),
    "task-id-control-characters": lambda _: _task_id_answer('"task\\u0000id\\r\\nX-Evil: 1"'),
    "task-id-lone-surrogate": lambda _: _task_id_answer('"task-\\ud800"'),
    "task-id-too-long": lambda _: _task_id_answer('"' + "x" * 70_000 + '"'),
    "task-id-not-a-string": lambda _: _task_id_answer('{"id": 7}'),
    "poll-garbage": lambda poisoned: _status_answer(lambda _: b"\x00\xff garbage", poisoned),
    "poll-about-no-task": lambda poisoned: _status_answer(lambda _: {"status": "SUCCESS", "task_id": 7}, poisoned),
}


# A poisoned poll is polled again until the row's deadline (0.5 s), in each of the two runs.
SLOW_POISONS: Final = frozenset({"poll-garbage", "poll-about-no-task"})


@pytest.mark.parametrize(
    "poison", [pytest.param(name, marks=pytest.mark.slow) if name in SLOW_POISONS else name for name in sorted(POISONS)]
)
async def test_one_poisoned_row_fails_that_row_only_and_a_rerun_goes_on(
    tmp_path: Path, poison: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A garbled answer or an unusable task id fails (or leaves uncertain) its own row with a typed reason;
    every other row completes, and running the job again does not stop on it either."""
    sim = Simulator(speed=1000, seed=21)
    poisoned: set[str] = set()
    journal = tmp_path / "run.db"
    outcomes = await _run(sim, Poisoned(sim, POISONS[poison](poisoned)), journal, dest_dir=tmp_path / "out")
    by_prompt = {outcome.request.prompt: outcome for outcome in outcomes}
    assert sorted(by_prompt) == sorted(JOB)
    bad = by_prompt.pop(POISON)
    assert bad.status in ("failed", "uncertain")
    assert isinstance(bad.error, Banana2Error)
    assert {outcome.status for outcome in by_prompt.values()} == {"succeeded"}
    assert sim.stats.tasks_per_prompt == dict.fromkeys(PROMPTS, 1)
    row = (await _rows(journal))[JOB.index(POISON)]
    assert row.state in ("submitting", "submitted", "failed")
    assert _typed(row.error), row.error

    again = await _run(sim, Poisoned(sim, POISONS[poison](poisoned)), journal, dest_dir=tmp_path / "out")
    assert [outcome.request.prompt for outcome in again] in ([], [POISON])
    assert all(outcome.status in ("failed", "uncertain") for outcome in again)
    assert all(isinstance(outcome.error, Banana2Error) for outcome in again)
    assert sim.stats.tasks_per_prompt == dict.fromkeys(PROMPTS, 1)


@pytest.mark.parametrize(
    "stored",
    [
        "CAST('task' || char(0) || 'id' AS TEXT)",
        "'bad' || char(10) || 'id'",
        "printf('%.70000c', 'x')",
        "CAST(x'eda080' AS TEXT)",
    ],
    ids=["nul", "newline", "too-long", "not-utf8"],
)
async def test_a_journal_holding_an_unusable_task_id_fails_that_row_and_runs_the_rest(
    tmp_path: Path, stored: str
) -> None:
    """A row an earlier run recorded with a task id that cannot be polled fails with a typed error; the rest run."""
    journal = tmp_path / "run.db"
    requests = [GenerationRequest(prompt=prompt) for prompt in JOB]
    opened, _ = await Journal.open(journal, requests)
    await opened.aclose()
    conn = sqlite3.connect(journal, isolation_level=None)
    conn.execute(f"UPDATE requests SET state = 'submitted', task_id = {stored} WHERE idx = ?", (JOB.index(POISON),))
    conn.close()
    sim = Simulator(speed=1000, seed=22)
    async with sim.client(not_found_grace=0) as client:
        outcomes = [outcome async for outcome in client.batch(JOB, concurrency=2, journal=journal, wait_timeout=2.0)]
        again = [outcome async for outcome in client.batch(JOB, concurrency=2, journal=journal, wait_timeout=2.0)]
    by_prompt = {outcome.request.prompt: outcome for outcome in outcomes}
    bad = by_prompt.pop(POISON)
    assert bad.status == "failed"
    assert isinstance(bad.error, Banana2Error)
    assert {outcome.status for outcome in by_prompt.values()} == {"succeeded"}
    assert sim.stats.tasks_per_prompt == dict.fromkeys(PROMPTS, 1)
    assert [outcome.request.prompt for outcome in again] in ([], [POISON])
    assert all(isinstance(outcome.error, Banana2Error) for outcome in again)
    assert _typed((await _rows(journal))[JOB.index(POISON)].error)


@pytest.mark.parametrize(
    "response",
    [None, [], "", [""], ["ftp://files.example/x.png"], ["not a url"]],
    ids=["null", "empty-list", "empty-string", "blank-url", "ftp", "no-scheme"],
)
@pytest.mark.parametrize("download", [False, True], ids=["urls-only", "download"])
async def test_a_success_without_images_is_a_failed_row(tmp_path: Path, response: Any, download: bool) -> None:
    """SUCCESS with no usable image URL fails its row with EmptyResultError (final, credits kept), never succeeded."""
    sim = Simulator(speed=1000, seed=23)
    poisoned: set[str] = set()

    def empty(task_id: str) -> dict[str, Any]:
        return {"task_id": task_id, "status": "SUCCESS", "response": response, "consumed_credits": 20}

    journal = tmp_path / "run.db"
    dest_dir = tmp_path / "out" if download else None
    outcomes = await _run(sim, Poisoned(sim, _status_answer(empty, poisoned)), journal, dest_dir=dest_dir)
    (bad,) = [outcome for outcome in outcomes if outcome.request.prompt == POISON]
    assert bad.status == "failed"
    assert not bad.files
    assert isinstance(bad.error, EmptyResultError)
    assert isinstance(bad.error, TaskFailedError)
    assert bad.error.task_id == bad.task_id
    assert bad.error.consumed_credits == 20
    assert collections.Counter(outcome.status for outcome in outcomes) == {"succeeded": 5, "failed": 1}
    row = (await _rows(journal))[JOB.index(POISON)]
    assert row.state == "failed"
    assert row.files == ()
    assert (row.error or "").startswith("EmptyResultError: ")
    assert (await _run(sim, Poisoned(sim, _status_answer(empty, poisoned)), journal)) == []


def _always_429(request: httpx.Request) -> httpx.Response | None:
    if request.method == "POST":
        return httpx.Response(
            429, json={"code": 429, "message": "slow down", "data": None}, headers={"Retry-After": "30"}
        )
    return None


@pytest.fixture
async def rate_limited(tmp_path: Path) -> AsyncIterator[tuple[AsyncBanana2, Poisoned]]:
    """A client whose every submit is answered 429 with Retry-After: 30."""
    sim = Simulator(speed=1000, seed=24)
    transport = Poisoned(sim, _always_429)
    async with AsyncBanana2(api_key=sim.api_key, base_url=sim.base_url, transport=transport, seed=6) as client:
        yield client, transport


async def _wait_for_posts(transport: Poisoned, count: int) -> None:
    with anyio.fail_after(5):
        while len(transport.posts) < count:  # noqa: ASYNC110 - a counter of the transport, no event to wait on
            await anyio.sleep(0.005)


async def test_aclose_abandons_submits_waiting_for_a_429_retry(
    rate_limited: tuple[AsyncBanana2, Poisoned], tmp_path: Path
) -> None:
    """Closing a run whose submits wait 30 s to retry a 429 returns at once, sends no further POST, and leaves the
    rows unsent (a 429 is not paid for), so the next run sends them."""
    client, transport = rate_limited
    journal = tmp_path / "run.db"
    run = client.batch(PROMPTS, concurrency=3, journal=journal)
    await run.__aenter__()
    # The first 429 holds every request of the client back for 30 s: the others wait at the gate.
    await _wait_for_posts(transport, 1)
    await anyio.sleep(0.05)
    started = time.monotonic()
    with anyio.move_on_after(10):
        await run.aclose()
    closed_at = time.monotonic()
    assert closed_at - started < 1.0
    await anyio.sleep(0.3)
    assert [at for at, _ in transport.posts if at > closed_at] == []
    rows = await read_journal(journal, [GenerationRequest(prompt=prompt) for prompt in PROMPTS])
    assert rows is not None
    assert {row.state for row in rows} == {"pending"}


async def test_cancelling_the_consumer_of_a_run_abandons_its_retries(
    rate_limited: tuple[AsyncBanana2, Poisoned], tmp_path: Path
) -> None:
    """A consumer cancelled inside ``async with run:`` gets control back at once, and no POST follows."""
    client, transport = rate_limited
    started = time.monotonic()
    with anyio.move_on_after(0.2):
        async with client.batch(PROMPTS, concurrency=2, journal=tmp_path / "run.db") as run:
            async for _ in run:
                pass
    closed_at = time.monotonic()
    assert len(transport.posts) >= 1
    assert closed_at - started < 1.2
    await anyio.sleep(0.3)
    assert [at for at, _ in transport.posts if at > closed_at] == []


async def test_a_run_closed_while_a_possibly_paid_submit_waits_to_be_retried_keeps_it_uncertain(
    tmp_path: Path,
) -> None:
    """With retry_uncertain_submits, a submit answered 500 may have been paid: closed before its retry, its row
    stays uncertain rather than being sent again by the next run."""
    sim = Simulator(speed=1000, seed=25)

    def always_500(request: httpx.Request) -> httpx.Response | None:
        if request.method == "POST":
            return httpx.Response(
                500, json={"code": 500, "message": "oops", "data": None}, headers={"Retry-After": "30"}
            )
        return None

    transport = Poisoned(sim, always_500)
    journal = tmp_path / "run.db"
    async with AsyncBanana2(
        api_key=sim.api_key, base_url=sim.base_url, transport=transport, retry_uncertain_submits=True
    ) as client:
        run = client.batch(PROMPTS[:1], journal=journal)
        await run.__aenter__()
        await _wait_for_posts(transport, 1)
        with anyio.fail_after(1):
            await run.aclose()
    assert len(transport.posts) == 1
    rows = await read_journal(journal, [GenerationRequest(prompt=PROMPTS[0])])
    assert rows is not None
    assert rows[0].state == "submitting"


def key_forms(key: str) -> list[str]:
    """The API key as a server may echo it: verbatim, JSON-escaped, \\u-escaped, percent-encoded."""
    return [
        key,
        key.replace("/", "\\/"),
        "".join(f"\\u{ord(char):04x}" for char in key),
        "".join(f"\\u{ord(char):04X}" for char in key),
        quote(key, safe=""),
        quote(key, safe="").lower(),
        quote(key, safe="/"),
    ]


def _echoing(key_in: Callable[[httpx.Request], str]) -> Answer:
    """A server that echoes the caller's key, in every form, in errors, headers and task failures."""

    def answer(request: httpx.Request) -> httpx.Response | None:
        key = key_in(request)
        echo = " ".join(key_forms(key))
        headers = {"x-request-id": quote(key, safe=""), "content-type": "application/json"}
        prompt = _prompt_of(request)
        if prompt == "refused":
            body = '{"code": 400, "message": "bad key ' + echo.replace("\\", "\\\\") + '", "data": null}'
            return httpx.Response(400, content=body.encode(), headers=headers)
        if prompt == "garbled":
            return httpx.Response(200, content=b"<p>key " + echo.encode() + b"</p>", headers=headers)
        if request.method == "GET" and "echo" in request.url.params.get("task_id", ""):
            data = {"task_id": request.url.params["task_id"], "status": "FAILED", "error": f"denied for {echo}"}
            return httpx.Response(200, content=_envelope(data), headers=headers)
        if prompt == "fails":
            return httpx.Response(200, content=_envelope({"task_id": "echo-1"}), headers=headers)
        return None

    return answer


def _journal_bytes(directory: Path) -> bytes:
    """Every byte of the journal and of the files sqlite keeps beside it."""
    return b"".join(path.read_bytes() for path in sorted(directory.iterdir()) if path.name.startswith("run.db"))


def _key_of(request: httpx.Request) -> str:
    return str(request.headers.get("authorization", "")).removeprefix("Bearer ")


async def test_the_journal_never_holds_the_api_key(tmp_path: Path) -> None:
    """A server echoing the key in every form in errors, headers and task failures leaves no form of it in the
    journal file."""
    sim = Simulator(speed=1000, seed=26, api_key=KEY)
    journal = tmp_path / "run.db"
    transport = Poisoned(sim, _echoing(_key_of))
    async with AsyncBanana2(api_key=KEY, base_url=sim.base_url, transport=transport, poll_interval=0.001) as client:
        outcomes = [outcome async for outcome in client.batch(["refused", "garbled", "fails", "fine"], journal=journal)]
    statuses = {outcome.request.prompt: outcome.status for outcome in outcomes}
    assert statuses == {"refused": "failed", "garbled": "uncertain", "fails": "failed", "fine": "succeeded"}
    stored = await anyio.to_thread.run_sync(_journal_bytes, tmp_path)
    found = [form for form in key_forms(KEY) if form.encode() in stored]
    assert found == []


def _all(outcomes: Iterable[BatchOutcome]) -> list[str]:
    return [outcome.status for outcome in outcomes]


async def test_an_unexpected_error_while_submitting_costs_its_row_only(tmp_path: Path) -> None:
    """An error below the batch that is not an SDK error leaves each row it hits uncertain (it may have been
    paid for), with a typed reason, and the run ends normally."""

    def broken(request: httpx.Request) -> httpx.Response:
        raise ValueError("transport bug")

    journal = tmp_path / "run.db"
    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(broken)) as http,
        AsyncBanana2(api_key="sk-test", base_url="https://api.banana2.invalid", http_client=http) as client,
    ):
        outcomes = [outcome async for outcome in client.batch(["a", "b"], concurrency=1, journal=journal)]
    assert _all(outcomes) == ["uncertain", "uncertain"]
    assert all(isinstance(outcome.error, SubmissionUncertainError) for outcome in outcomes)
    assert all(isinstance(getattr(outcome.error, "__cause__", None), ValueError) for outcome in outcomes)
    rows = await read_journal(journal, [GenerationRequest(prompt="a"), GenerationRequest(prompt="b")])
    assert rows is not None
    assert [row.state for row in rows] == ["submitting", "submitting"]
    assert all((row.error or "").startswith("SubmissionUncertainError: ") for row in rows)
    assert all("transport bug" in (row.error or "") for row in rows)
