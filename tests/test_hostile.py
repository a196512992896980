"""AsyncBanana2 against a hostile server: bombs, drips, echoed keys, poisoned values, empty successes.

Every case runs against the simulator's hostile faults and pins what the
client promises: bounded memory and time, a typed error from the tree, and
the API key never shown again, in any form, on any surface.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import time
import traceback
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote

import anyio
import httpx
import pytest
from _marks import HTTPX_ABANDONED_STREAMS

from banana2_async import (
    APIResponseError,
    APIStatusError,
    APITimeoutError,
    AsyncBanana2,
    Banana2Error,
    DownloadError,
    EmptyResultError,
    GenerationResult,
    RateLimitError,
    SubmissionUncertainError,
    TaskFailedError,
    TaskTimeoutError,
)
from banana2_async.testing import (
    ECHO_FORMS,
    EMPTY_RESPONSES,
    POISONED_CODES,
    POISONED_RESULT_URLS,
    POISONED_RETRY_AFTERS,
    POISONED_TASK_IDS,
    BombEncoding,
    EchoForm,
    Fault,
    Simulator,
    SimulatorServer,
)

pytestmark = [pytest.mark.anyio, HTTPX_ABANDONED_STREAMS]

KEY: Final = "sk-test/abc+def/123+XYZ"
MiB: Final = 1 << 20
ENCODINGS: Final[tuple[BombEncoding, ...]] = ("gzip", "deflate", "br", "zstd")
# Deadlines short enough for a test, and the slack allowed past them.
DEADLINE: Final = 0.3
SLACK: Final = 1.0
# A task takes 6-135 ms at the simulator's speed (11 ms at the median for 1k): ample time for one to finish.
WAIT: Final = 2.0
# A bomb far past the API answer cap (1 MiB) and the download cap used here, and the memory allowed for it.
BOMB: Final = 128 * MiB
DOWNLOAD_CAP: Final = MiB
MEMORY: Final = 48 * MiB
UNTYPED: Final = (ValueError, OverflowError, UnicodeError, httpx.InvalidURL)
DOWNLOAD_DEADLINE: Final[dict[str, Any]] = {"timeout": DEADLINE}

Connect = Callable[..., AbstractAsyncContextManager[AsyncBanana2]]


def _short(value: object) -> str:
    """A test id for a poisoned value: its repr, or its start and length (a 5,000-digit int has no repr)."""
    if isinstance(value, int) and abs(value) > 10**4000:
        return f"{'-' if value < 0 else ''}9x5000"
    if isinstance(value, str) and len(value) > 40:
        return f"{value[:12]!r}..{len(value)}-chars"
    return repr(value)[:40]


def _needs(encoding: str) -> None:
    if encoding == "br":
        pytest.importorskip("brotli")
    if encoding == "zstd":
        pytest.importorskip("zstandard")


@pytest.fixture(scope="module")
def sim() -> Simulator:
    """One fast simulator for the module whose key holds '/' and '+'; each test clears its faults."""
    return Simulator(api_key=KEY, speed=1000, seed=21)


@pytest.fixture(scope="module")
def server(sim: Simulator) -> Iterator[SimulatorServer]:
    """That simulator on a loopback port."""
    with sim.serve() as running:
        yield running


@pytest.fixture
def inprocess(sim: Simulator) -> Iterator[Connect]:
    """Clients wired to the simulator in-process, with its key; no fault left from another test."""
    sim.clear_faults()
    yield sim.client
    sim.clear_faults()


@pytest.fixture(params=["in-process", "loopback"])
def connect(request: pytest.FixtureRequest, sim: Simulator, server: SimulatorServer) -> Iterator[Connect]:
    """Clients with the simulator's key: in-process, then over loopback."""
    sim.clear_faults()
    yield sim.client if request.param == "in-process" else server.client
    sim.clear_faults()


@pytest.fixture
def sdk_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """The SDK's log records, down to DEBUG."""
    caplog.set_level(logging.DEBUG, logger="banana2_async")
    return caplog


@contextlib.contextmanager
def _peak_memory() -> Iterator[list[int]]:
    """The peak of Python's traced allocations inside the block, in bytes (appended on exit)."""
    peak: list[int] = []
    tracemalloc.start()
    try:
        yield peak
    finally:
        peak.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()


def _readings(text: str) -> list[str]:
    """``text``, and what it says once repr's doubled backslashes, JSON escapes and percent-encoding are undone."""
    undoubled = re.sub(r"\\+", lambda match: "\\", text)
    unescaped = re.sub(r"\\u([0-9a-fA-F]{4})", lambda match: chr(int(match[1], 16)), undoubled).replace("\\/", "/")
    return [text, undoubled, unescaped, unquote(text), unquote(unescaped)]


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        pending += [current.__cause__, current.__context__]


def _assert_no_key(exc: BaseException, log: pytest.LogCaptureFixture) -> None:
    """The key shows in no form on any surface of ``exc``, its causes, or the SDK's log records."""
    surfaces = {
        "str": str(exc),
        "repr": repr(exc),
        "traceback": "".join(traceback.format_exception(exc)),
        "log": log.text + "\n".join(f"{record.getMessage()} {record.args!r}" for record in log.records),
    }
    for index, link in enumerate(_chain(exc)):
        surfaces[f"attributes of {type(link).__name__} #{index}"] = repr(vars(link))
        body = getattr(link, "body", None)
        if body is not None:
            surfaces[f"body of {type(link).__name__} #{index}"] = json.dumps(body, default=repr) + repr(body)
    for surface, text in surfaces.items():
        for reading in _readings(text):
            assert KEY not in reading, f"the key shows in the {surface}"


def _assert_typed(exc: BaseException) -> None:
    """``exc`` is an error of the SDK's tree, and none of the bare errors a parser or URL builder raises."""
    assert isinstance(exc, Banana2Error), repr(exc)
    assert not isinstance(exc, UNTYPED), repr(exc)


async def _outcome(call: Callable[[], Any]) -> Any:
    """What ``await call()`` returned, or the exception it raised."""
    try:
        return await call()
    except Exception as exc:
        return exc


async def _finished(client: AsyncBanana2, prompt: str = "a quiet street") -> GenerationResult:
    return await client.generate(prompt, wait_timeout=WAIT)


def _left_in(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir()) if directory.exists() else []


# Compression bombs: caps count decoded bytes, while streaming


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_a_bombed_status_answer_is_an_api_response_error_in_bounded_memory(
    connect: Connect, sim: Simulator, encoding: BombEncoding
) -> None:
    """A status answer that inflates to 128 MiB raises APIResponseError, holding about the cap in memory."""
    _needs(encoding)
    with anyio.fail_after(20):
        async with connect(max_retries=0) as client:
            task_id = (await client.submit("bombed status")).task_id
            sim.inject(Fault.compression_bomb(BOMB, encoding=encoding), on="status", times=1)
            with _peak_memory() as peak, pytest.raises(APIResponseError):
                await client.status(task_id)
    assert peak[0] < MEMORY


async def test_a_bombed_poll_costs_one_poll(connect: Connect, sim: Simulator) -> None:
    """A poll whose answer is a bomb fails that poll only: the task still completes, in bounded memory."""
    with anyio.fail_after(20):
        async with connect() as client:
            sim.inject(Fault.compression_bomb(BOMB), on="status", times=1)
            with _peak_memory() as peak:
                result = await _finished(client, "bombed poll")
    assert result.images
    assert peak[0] < MEMORY


async def test_a_bombed_submit_answer_is_uncertain(connect: Connect, sim: Simulator) -> None:
    """A submit whose answer is a bomb was paid for: SubmissionUncertainError carrying the request."""
    with anyio.fail_after(20):
        async with connect() as client:
            sim.inject(Fault.compression_bomb(BOMB), on="generate", times=1)
            with _peak_memory() as peak, pytest.raises(SubmissionUncertainError) as caught:
                await client.submit("bombed submit")
    assert caught.value.request.prompt == "bombed submit"
    assert peak[0] < MEMORY


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_a_bombed_download_is_a_download_error_and_leaves_no_file(
    connect: Connect, sim: Simulator, encoding: BombEncoding, tmp_path: Path
) -> None:
    """An image that inflates past max_bytes raises DownloadError, in bounded memory, and leaves no file behind."""
    _needs(encoding)
    with anyio.fail_after(20):
        async with connect() as client:
            result = await _finished(client, "bombed image")
            sim.inject(Fault.compression_bomb(BOMB, encoding=encoding), on="result", times=1)
            with _peak_memory() as peak, pytest.raises(DownloadError):
                await client.download(result, tmp_path / "out", max_bytes=DOWNLOAD_CAP, max_retries=0)
    assert peak[0] < MEMORY
    assert _left_in(tmp_path / "out") == []


# Slow drips: every request has a whole-request deadline


async def test_a_dripping_status_call_times_out_at_its_deadline(connect: Connect, sim: Simulator) -> None:
    """A status answer dripping a byte every 50 ms ends in APITimeoutError soon after request_timeout."""
    with anyio.fail_after(10):
        async with connect(request_timeout=DEADLINE, max_retries=0) as client:
            task_id = (await client.submit("dripping status")).task_id
            sim.inject(Fault.drip(0.05), on="status", times=1)
            started = time.perf_counter()
            with pytest.raises(APITimeoutError):
                await client.status(task_id)
    assert time.perf_counter() - started < DEADLINE + SLACK


async def test_a_dripping_poll_frees_its_worker(connect: Connect, sim: Simulator) -> None:
    """With one poll worker, a dripping poll times out at request_timeout and the task still completes."""
    with anyio.fail_after(10):
        async with connect(request_timeout=DEADLINE, max_concurrent_polls=1) as client:
            sim.inject(Fault.drip(0.05), on="status", times=1)
            started = time.perf_counter()
            result = await _finished(client, "dripping poll")
    assert result.images
    assert time.perf_counter() - started < DEADLINE + 2 * SLACK


async def test_a_dripping_submit_is_uncertain_at_its_deadline(connect: Connect, sim: Simulator) -> None:
    """A sent submit whose answer drips ends in SubmissionUncertainError carrying the request, after request_timeout."""
    with anyio.fail_after(10):
        async with connect(request_timeout=DEADLINE) as client:
            sim.inject(Fault.drip(0.05), on="generate", times=1)
            started = time.perf_counter()
            with pytest.raises(SubmissionUncertainError) as caught:
                await client.submit("dripping submit")
    assert time.perf_counter() - started < DEADLINE + SLACK
    assert caught.value.request.prompt == "dripping submit"


async def test_cancelling_a_dripping_submit_returns_within_its_deadline(inprocess: Connect, sim: Simulator) -> None:
    """Cancelling the task group around a dripping submit returns within request_timeout, not when the drip ends."""
    with anyio.fail_after(10):
        async with inprocess(request_timeout=DEADLINE) as client:
            sim.inject(Fault.drip(0.05), on="generate", times=1)
            started = time.perf_counter()
            async with anyio.create_task_group() as group:
                group.start_soon(_outcome, lambda: client.submit("cancelled while dripping"))
                await anyio.sleep(0.05)
                group.cancel_scope.cancel()
    assert time.perf_counter() - started < DEADLINE + SLACK


async def test_a_dripping_download_is_a_download_error_at_its_deadline(
    connect: Connect, sim: Simulator, tmp_path: Path
) -> None:
    """An image dripping a byte every 50 ms ends in DownloadError soon after download(timeout=), with no file left."""
    with anyio.fail_after(10):
        async with connect() as client:
            result = await _finished(client, "dripping image")
            sim.inject(Fault.drip(0.05), on="result")
            started = time.perf_counter()
            with pytest.raises(DownloadError):
                await client.download(result, tmp_path / "out", max_retries=0, **DOWNLOAD_DEADLINE)
    assert time.perf_counter() - started < DEADLINE + SLACK
    assert _left_in(tmp_path / "out") == []


async def test_submit_as_a_whole_has_a_deadline(inprocess: Connect, sim: Simulator) -> None:
    """A submit answered 429 again and again gives up at submit_timeout with a typed error, having paid nothing."""
    spent = sim.stats.credits_spent
    with anyio.fail_after(10):
        async with inprocess(submit_timeout=0.5, max_retries=100) as client:
            sim.inject(Fault.rate_limit(0.1), on="generate")
            started = time.perf_counter()
            with pytest.raises(Banana2Error) as caught:
                await client.submit("never accepted")
    assert time.perf_counter() - started < 0.5 + SLACK
    assert not isinstance(caught.value, SubmissionUncertainError)
    assert sim.stats.credits_spent == spent


# Echoed keys: the key never comes back out


@pytest.mark.parametrize("status", [400, 500])
@pytest.mark.parametrize("form", ECHO_FORMS)
async def test_a_status_error_echoing_the_key_never_shows_it(
    inprocess: Connect, sim: Simulator, sdk_log: pytest.LogCaptureFixture, form: EchoForm, status: int
) -> None:
    """An error answer whose message echoes the key, in any form, raises an APIStatusError that shows it nowhere."""
    async with inprocess(max_retries=0) as client:
        task_id = (await client.submit("echoed in an error")).task_id
        sim.inject(Fault.echo_key(form, status=status), on="status", times=1)
        with pytest.raises(APIStatusError) as caught:
            await client.status(task_id)
    assert caught.value.status_code == status
    _assert_no_key(caught.value, sdk_log)


@pytest.mark.parametrize("status", [400, 500])
@pytest.mark.parametrize("form", ECHO_FORMS)
async def test_a_submit_error_echoing_the_key_never_shows_it(
    inprocess: Connect, sim: Simulator, sdk_log: pytest.LogCaptureFixture, form: EchoForm, status: int
) -> None:
    """A submit refused with the key echoed in the message raises a typed error that shows it nowhere."""
    async with inprocess(max_retries=0) as client:
        sim.inject(Fault.echo_key(form, status=status), on="generate", times=1)
        with pytest.raises(Banana2Error) as caught:
            await client.submit("echoed on submit")
    _assert_no_key(caught.value, sdk_log)


@pytest.mark.parametrize("form", ECHO_FORMS)
async def test_a_request_id_echoing_the_key_never_shows_it(
    connect: Connect, sim: Simulator, sdk_log: pytest.LogCaptureFixture, form: EchoForm
) -> None:
    """An error whose x-request-id echoes the key keeps no copy of it, in request_id or anywhere else."""
    async with connect(max_retries=0) as client:
        task_id = (await client.submit("echoed in a header")).task_id
        sim.inject(Fault.server_error(), on="status", times=1)
        sim.inject(Fault.echo_key(form, where="header"), on="status", times=1)
        with pytest.raises(APIStatusError) as caught:
            await client.status(task_id)
    _assert_no_key(caught.value, sdk_log)


@pytest.mark.parametrize("form", ECHO_FORMS)
async def test_an_envelope_field_echoing_the_key_never_shows_it(
    inprocess: Connect, sim: Simulator, sdk_log: pytest.LogCaptureFixture, form: EchoForm
) -> None:
    """An error inside an HTTP 200 whose envelope carries the key in a field keeps no copy of it in .body."""
    async with inprocess(max_retries=0) as client:
        task_id = (await client.submit("echoed in a field")).task_id
        sim.inject(Fault.envelope_error(500, "internal error"), on="status", times=1)
        sim.inject(Fault.echo_key(form, where="field"), on="status", times=1)
        with pytest.raises(APIStatusError) as caught:
            await client.status(task_id)
    _assert_no_key(caught.value, sdk_log)


@pytest.mark.parametrize("form", ECHO_FORMS)
async def test_a_garbled_answer_echoing_the_key_never_shows_it(
    inprocess: Connect, sim: Simulator, sdk_log: pytest.LogCaptureFixture, form: EchoForm
) -> None:
    """A 200 answer that is no envelope and echoes the key raises an APIResponseError whose excerpt hides it."""
    async with inprocess(max_retries=0) as client:
        task_id = (await client.submit("echoed in a garbled answer")).task_id
        # HTTP 200, code 200, and data null: not the envelope of a task.
        sim.inject(Fault.envelope_error(200, "no data"), on="status", times=1)
        sim.inject(Fault.echo_key(form, where="field"), on="status", times=1)
        with pytest.raises(APIResponseError) as caught:
            await client.status(task_id)
    _assert_no_key(caught.value, sdk_log)


@pytest.mark.parametrize("form", ECHO_FORMS)
async def test_a_failed_task_echoing_the_key_never_shows_it(
    inprocess: Connect, sim: Simulator, sdk_log: pytest.LogCaptureFixture, form: EchoForm
) -> None:
    """A task that fails with the key in its error message raises a TaskFailedError that shows it nowhere."""
    async with inprocess() as client:
        sim.inject(Fault.echo_key(form, where="failed_task"), times=1)
        with anyio.fail_after(10), pytest.raises(TaskFailedError) as caught:
            await _finished(client, "echoed by a failed task")
    _assert_no_key(caught.value, sdk_log)


# Poisoned values: every server-chosen value becomes a typed error


@pytest.mark.parametrize("code", POISONED_CODES, ids=_short)
async def test_a_poisoned_code_on_status_is_typed(inprocess: Connect, sim: Simulator, code: Any) -> None:
    """A status answer with a poisoned envelope code is read or refused with a typed error, never a bare one."""
    async with inprocess(max_retries=0) as client:
        task_id = (await client.submit("poisoned code")).task_id
        sim.inject(Fault.poisoned_code(code), on="status", times=1)
        outcome = await _outcome(lambda: client.status(task_id))
    if isinstance(outcome, BaseException):
        _assert_typed(outcome)


@pytest.mark.parametrize("code", POISONED_CODES, ids=_short)
async def test_a_poisoned_code_on_submit_is_accepted_or_uncertain(
    inprocess: Connect, sim: Simulator, code: Any
) -> None:
    """A submit answer with a poisoned code, after the task was paid for, is accepted or SubmissionUncertainError."""
    async with inprocess() as client:
        sim.inject(Fault.poisoned_code(code), on="generate", times=1)
        outcome = await _outcome(lambda: client.submit("poisoned submit code"))
    if isinstance(outcome, BaseException):
        assert isinstance(outcome, SubmissionUncertainError), repr(outcome)


@pytest.mark.parametrize("value", POISONED_RETRY_AFTERS, ids=_short)
async def test_a_poisoned_retry_after_is_typed(inprocess: Connect, sim: Simulator, value: str) -> None:
    """A 429 whose Retry-After no clock can read raises RateLimitError with no hint or a sane one."""
    async with inprocess(max_retries=0) as client:
        task_id = (await client.submit("poisoned retry-after")).task_id
        sim.inject(Fault.poisoned_retry_after(value), on="status", times=1)
        with pytest.raises(RateLimitError) as caught:
            await client.status(task_id)
    hint = caught.value.retry_after
    assert hint is None or (math.isfinite(hint) and 0 <= hint <= 3600)


@pytest.mark.parametrize("value", POISONED_RETRY_AFTERS, ids=_short)
async def test_a_poisoned_retry_after_never_outlasts_the_submit_deadline(
    inprocess: Connect, sim: Simulator, value: str
) -> None:
    """Submits answered 429 with a poisoned Retry-After end in a typed error by submit_timeout, never waiting longer."""
    with anyio.fail_after(10):
        async with inprocess(submit_timeout=0.5, max_retries=3) as client:
            sim.inject(Fault.poisoned_retry_after(value), on="generate")
            started = time.perf_counter()
            outcome = await _outcome(lambda: client.submit("poisoned wait"))
    assert time.perf_counter() - started < 0.5 + SLACK
    assert isinstance(outcome, BaseException)
    _assert_typed(outcome)


@pytest.mark.parametrize("url", POISONED_RESULT_URLS, ids=_short)
async def test_a_poisoned_result_url_is_typed(inprocess: Connect, sim: Simulator, url: str, tmp_path: Path) -> None:
    """A success whose URL holds a lone surrogate or control characters fails typed: on the wait, or on download."""
    with anyio.fail_after(10):
        async with inprocess() as client:
            sim.inject(Fault.poisoned_result_url(url), times=1)
            outcome = await _outcome(lambda: _finished(client, "poisoned url"))
            if isinstance(outcome, GenerationResult):
                outcome = await _outcome(lambda: client.download(outcome, tmp_path / "out", max_retries=0))
                assert isinstance(outcome, DownloadError), repr(outcome)
    assert isinstance(outcome, BaseException)
    _assert_typed(outcome)
    assert _left_in(tmp_path / "out") == []


@pytest.mark.parametrize("task_id", POISONED_TASK_IDS, ids=_short)
async def test_a_poisoned_task_id_fails_that_task_only(inprocess: Connect, sim: Simulator, task_id: str) -> None:
    """A submit answered with a task id no URL can hold fails typed, and the client's other tasks complete."""
    with anyio.fail_after(10):
        async with inprocess(not_found_grace=0.2) as client:
            other = await client.submit("an ordinary task", wait_timeout=WAIT)
            sim.inject(Fault.poisoned_task_id(task_id), times=1)
            outcome = await _outcome(lambda: _finished(client, "poisoned task id"))
            assert (await other).images
            assert (await _finished(client, "after the poison")).images
    assert isinstance(outcome, BaseException)
    _assert_typed(outcome)


# Empty successes: a success without images is not a success


@pytest.mark.parametrize("response", EMPTY_RESPONSES, ids=_short)
async def test_an_empty_success_is_an_empty_result_error(inprocess: Connect, sim: Simulator, response: Any) -> None:
    """SUCCESS with no http(s) URL in response raises EmptyResultError with the task id and the credits consumed."""
    with anyio.fail_after(10):
        async with inprocess() as client:
            sim.inject(Fault.empty_success(response), times=1)
            handle = await client.submit("an empty success", wait_timeout=WAIT)
            with pytest.raises(EmptyResultError) as caught:
                await handle
    assert caught.value.task_id == handle.task_id
    assert caught.value.consumed_credits == 20


# Bulk runs: one poisoned row fails one row


@pytest.mark.parametrize(
    "fault",
    [Fault.poisoned_task_id("t" * 70_000), Fault.poisoned_task_id("task\ud800id"), Fault.empty_success(None)],
    ids=["long-id", "surrogate-id", "empty-success"],
)
async def test_one_poisoned_row_fails_one_row(inprocess: Connect, sim: Simulator, fault: Fault) -> None:
    """In a bulk run the row meeting a poisoned answer fails (or is uncertain) with a typed reason; the rest succeed."""
    with anyio.fail_after(15):
        async with inprocess(not_found_grace=0.2) as client:
            sim.inject(fault, times=1)
            outcomes = [outcome async for outcome in client.batch(["one", "two", "three"], wait_timeout=WAIT)]
    statuses = sorted(outcome.status for outcome in outcomes)
    assert statuses in (["failed", "succeeded", "succeeded"], ["succeeded", "succeeded", "uncertain"])
    (poisoned,) = [outcome for outcome in outcomes if not outcome.ok]
    assert poisoned.error is not None
    _assert_typed(poisoned.error)


async def test_48_bombed_polls_at_once_stay_in_bounded_memory_and_keep_deadlines() -> None:
    """48 polls answered by 1 GiB gzip bombs at once: under 256 MiB of memory, another task's deadline on time."""
    slow = Simulator(api_key=KEY, speed=0.5, seed=3)
    with anyio.fail_after(30):
        options: dict[str, Any] = {"max_concurrent_polls": 48, "poll_interval": 0.05, "max_retries": 0}
        async with slow.client(wait_timeout=None, **options) as client:
            handles = [await client.submit(f"bombed {n}") for n in range(48)]
            # The simulator compresses a bomb once and keeps it: that cost is its own, not the client's.
            slow.inject(Fault.compression_bomb(1 << 30), on="status", times=1)
            with pytest.raises(APIResponseError):
                await client.status(handles[0].task_id)
            slow.inject(Fault.compression_bomb(1 << 30), on="status", times=48)
            started = anyio.current_time()
            timely = await client.submit("a deadline to keep", wait_timeout=0.5)
            with _peak_memory() as peak:
                with pytest.raises(TaskTimeoutError):
                    await timely
                late = anyio.current_time() - started - 0.5
                while slow.stats.count("status") < 49:  # noqa: ASYNC110 - counters of another thread's server
                    await anyio.sleep(0.01)
            assert not any(handle.done() for handle in handles)
    assert peak[0] < 256 * MiB
    assert late < 0.5
