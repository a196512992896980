"""Banana2, the blocking client: each call without await, on a background event loop, from any thread."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import banana2_async
from banana2_async import (
    Banana2,
    ClientClosedError,
    ConfigurationError,
    GenerationResult,
    InvalidRequestError,
    SyncTaskHandle,
    TaskFailedError,
    TaskTimeoutError,
)
from banana2_async.testing import Fault, ManualClock, Simulator, SimulatorServer

FAST_POLLS = (0.002, 0.003)
UNCLOSED = r"unclosed <Banana2 base_url='https://simulator\.banana2\.invalid' open>"


@pytest.fixture(params=["asyncio", "trio"])
def backend(request: pytest.FixtureRequest) -> str:
    """Run each test with the background loop on asyncio and on trio."""
    return str(request.param)


def connect(simulator: Simulator, backend: str = "asyncio", **options: object) -> Banana2:
    """A Banana2 wired in-process to ``simulator``, polling every few milliseconds."""
    options.setdefault("poll_interval", FAST_POLLS)
    return Banana2(
        api_key=simulator.api_key,
        base_url=simulator.base_url,
        http_client=httpx.AsyncClient(transport=simulator.transport()),
        backend=backend,  # type: ignore[arg-type]
        **options,  # type: ignore[arg-type]
    )


@pytest.fixture
def client(banana2_simulator: Simulator, backend: str) -> Iterator[Banana2]:
    """An open Banana2 on the test's simulator."""
    with connect(banana2_simulator, backend) as sync_client:
        yield sync_client


def test_generate_blocks_until_the_result(client: Banana2, banana2_simulator: Simulator) -> None:
    """generate submits one task and returns its result, without await."""
    result = client.generate("a lighthouse", aspect_ratio="16:9", resolution="2k")
    assert isinstance(result, GenerationResult)
    assert result.images == [f"{banana2_simulator.base_url}/results/{result.task_id}/0.png"]
    assert banana2_simulator.stats.count("generate") == 1


def test_edit_sends_an_edit_task(client: Banana2) -> None:
    """edit sends an edit task, charged 24 credits."""
    result = client.edit("make it night", images=["https://example.com/day.png"])
    assert result.type == "edit"
    assert result.consumed_credits == 24


def test_submit_returns_a_handle_whose_result_blocks(client: Banana2) -> None:
    """submit answers with a pending handle at once; handle.result() waits and returns the result."""
    handle = client.submit("a harbour at dawn")
    assert isinstance(handle, SyncTaskHandle)
    assert handle.request is not None
    assert handle.request.prompt == "a harbour at dawn"
    result = handle.result(timeout=30)
    assert result.task_id == handle.task_id
    assert handle.done()
    assert handle.exception() is None
    assert handle.result() is result


def test_result_timeout_leaves_the_handle_pending(backend: str) -> None:
    """result(timeout=) raises TaskTimeoutError when time runs out; the handle stays pending and can be waited on."""
    clock = ManualClock()
    simulator = Simulator(clock=clock, seed=3)
    with connect(simulator, backend) as client:
        handle = client.submit("a slow one")
        with pytest.raises(TaskTimeoutError) as caught:
            handle.result(timeout=0.05)
        assert caught.value.task_id == handle.task_id
        assert not handle.done()
        clock.advance(60)
        assert handle.result(timeout=30).task_id == handle.task_id


def test_a_failed_task_raises_task_failed_error(client: Banana2, banana2_simulator: Simulator) -> None:
    """A task the server fails raises TaskFailedError from result() and from generate."""
    banana2_simulator.inject(Fault.fail_task(message="the model refused"), times=2)
    handle = client.submit("refused")
    with pytest.raises(TaskFailedError, match="the model refused"):
        handle.result()
    assert isinstance(handle.exception(), TaskFailedError)
    with pytest.raises(TaskFailedError):
        client.generate("refused again")


def test_status_is_one_request_without_polling(client: Banana2, banana2_simulator: Simulator) -> None:
    """status answers the task as the server sees it, with one GET and no polling."""
    handle = client.submit("a field")
    handle.result()
    banana2_simulator.reset_stats()
    info = client.status(handle.task_id)
    assert info.state == "success"
    assert banana2_simulator.stats.count("status") == 1


def test_a_transport_carries_the_clients_own_requests(banana2_simulator: Simulator, backend: str) -> None:
    """``transport=`` is what the client's own httpx client sends through, on the background loop."""
    with Banana2(
        api_key=banana2_simulator.api_key,
        base_url=banana2_simulator.base_url,
        transport=banana2_simulator.transport(),
        poll_interval=FAST_POLLS,
        backend=backend,  # type: ignore[arg-type]
    ) as client:
        assert client.generate("a fox over a transport").images
    assert banana2_simulator.stats.count("generate") == 1
    assert banana2_simulator.stats.count("status") >= 1


def test_track_follows_an_existing_task(client: Banana2, banana2_simulator: Simulator) -> None:
    """track attaches the shared poller to a task id submitted elsewhere."""
    with connect(banana2_simulator) as other:
        task_id = other.submit("made elsewhere").task_id
    handle = client.track(task_id)
    assert handle.request is None
    assert handle.result().task_id == task_id


def test_as_completed_yields_every_handle_once(client: Banana2, banana2_simulator: Simulator) -> None:
    """as_completed yields each handle as it settles, failures included, each exactly once."""
    banana2_simulator.inject(Fault.fail_task(), times=1)
    handles = [client.submit(f"prompt {index}") for index in range(6)]
    seen = list(client.as_completed([*handles, handles[0]]))
    assert sorted(seen, key=id) == sorted(handles, key=id)
    assert sum(isinstance(handle.exception(), TaskFailedError) for handle in seen) == 1
    assert all(handle.done() for handle in seen)


def test_leaving_as_completed_early_is_clean(client: Banana2) -> None:
    """Breaking out of as_completed stops the wait on the others; the client keeps working."""
    handles = [client.submit(f"prompt {index}") for index in range(4)]
    for first in client.as_completed(handles):
        assert first.done()
        break
    assert client.generate("after the loop").images
    assert list(client.as_completed([])) == []


def test_invalid_arguments_raise_before_any_request(client: Banana2, banana2_simulator: Simulator) -> None:
    """Invalid arguments raise InvalidRequestError (a ValueError) and send nothing."""
    with pytest.raises(InvalidRequestError):
        client.submit("", aspect_ratio="16:9")
    with pytest.raises(ValueError, match="images"):
        client.edit("no images", images=[])
    handle = client.submit("fine")
    with pytest.raises(InvalidRequestError):
        handle.result(timeout=-1)
    assert banana2_simulator.stats.count("generate") == 1


def test_no_api_key_raises_and_leaves_no_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an API key the constructor raises ConfigurationError and stops its event loop thread."""
    monkeypatch.delenv("BANANA2_API_KEY", raising=False)
    before = set(threading.enumerate())
    with pytest.raises(ConfigurationError):
        Banana2()
    assert set(threading.enumerate()) <= before


def test_close_fails_pending_handles_and_ends_the_thread(backend: str) -> None:
    """close settles pending handles with ClientClosedError, stops the thread, and later calls raise."""
    simulator = Simulator(clock=ManualClock(), seed=4)
    before = set(threading.enumerate())
    client = connect(simulator, backend)
    handle = client.submit("never finishes")
    client.close()
    client.close()
    assert set(threading.enumerate()) <= before
    with pytest.raises(ClientClosedError):
        handle.result()
    with pytest.raises(RuntimeError, match="closed"):
        client.submit("too late")
    with pytest.raises(RuntimeError, match="closed"):
        list(client.as_completed([handle]))
    assert "closed" in repr(client)


def wait_for_threads(allowed: set[threading.Thread]) -> None:
    """Wait (5 s at most) until no thread but ``allowed`` runs."""
    deadline = time.monotonic() + 5
    while set(threading.enumerate()) - allowed and time.monotonic() < deadline:
        time.sleep(0.005)
    assert set(threading.enumerate()) <= allowed


def test_a_dropped_client_is_closed_with_a_resource_warning(backend: str) -> None:
    """A Banana2 garbage-collected unclosed warns, fails its pending handles with ClientClosedError, ends its thread."""
    simulator = Simulator(clock=ManualClock(), seed=6)
    before = set(threading.enumerate())
    client = connect(simulator, backend)
    pending = client.submit("never finishes").async_handle
    with pytest.warns(ResourceWarning, match=UNCLOSED):
        del client
    assert set(threading.enumerate()) <= before
    assert isinstance(pending.exception(), ClientClosedError)


def test_a_client_dropped_on_its_own_thread_closes_there(backend: str) -> None:
    """A Banana2 whose last reference goes on its own loop thread is closed from there, with the warning."""
    clock = ManualClock()
    simulator = Simulator(clock=clock, seed=7)
    before = set(threading.enumerate())
    client = connect(simulator, backend)
    holder = [client]
    # Added from this thread: the task cannot settle, and so call it, before the clock moves.
    client.submit("one task").async_handle.add_done_callback(lambda _: holder.clear())
    del client

    def settle() -> None:
        clock.advance(60)
        wait_for_threads(before)

    with pytest.warns(ResourceWarning, match=UNCLOSED):
        settle()


def test_close_from_the_clients_own_thread_does_not_wait(backend: str) -> None:
    """close() called on the client's loop thread (a callback) asks for the close; the client then closes."""
    clock = ManualClock()
    simulator = Simulator(clock=clock, seed=8)
    before = set(threading.enumerate())
    client = connect(simulator, backend)
    done = client.submit("one task")
    pending = client.submit("a slow one", resolution="4k")
    done.async_handle.add_done_callback(lambda _: client.close())
    clock.advance(16)  # past this seed's 1k task (9.4 s), short of its 4k one (44 s)
    assert done.result(timeout=30).task_id == done.task_id
    wait_for_threads(before)
    with pytest.raises(ClientClosedError):
        pending.result()
    assert "closed" in repr(client)


FORGOTTEN = """
import sys, threading, weakref
from banana2_async import Banana2, ClientClosedError
from banana2_async.testing import ManualClock, Simulator

class Anchor:
    pass

anchor, waiters, outcomes = Anchor(), [], []

def report():
    for waiter in waiters:
        waiter.join(5)
    print(*outcomes, flush=True)

# Finalizers left at exit run newest first: this one, made before the client's, reports once it is closed.
weakref.finalize(anchor, report)
simulator = Simulator(clock=ManualClock())
client = Banana2(
    api_key=simulator.api_key,
    base_url=simulator.base_url,
    transport=simulator.transport(),
    backend=sys.argv[1],
)
handle = client.submit("never finishes")

def wait():
    try:
        handle.result()
    except ClientClosedError as exc:
        outcomes.append(type(exc).__name__)

waiters.append(threading.Thread(target=wait, daemon=True))
waiters[0].start()
print("leaving", flush=True)
"""


def run_python(code: str, *args: str) -> subprocess.Popen[str]:
    """``python -c code args`` with this checkout's package first on the path, ResourceWarnings shown."""
    here = Path(banana2_async.__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(here), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-W", "always::ResourceWarning", "-c", code, *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def finish(process: subprocess.Popen[str], timeout: float) -> tuple[str, str]:
    """The process's output once it has ended; killed if it runs past ``timeout`` seconds."""
    try:
        return process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise


def test_a_forgotten_client_lets_the_interpreter_exit(backend: str) -> None:
    """A program ending with a Banana2 open exits 0 at once; the client warns and its waiter gets ClientClosedError."""
    with run_python(FORGOTTEN, backend) as process:
        assert process.stdout is not None
        assert process.stdout.readline() == "leaving\n"
        leaving = time.monotonic()
        stdout, stderr = finish(process, timeout=10)
        took = time.monotonic() - leaving
    assert process.returncode == 0, stderr
    assert took < 2, f"exit took {took:.2f} s"
    assert stdout == "ClientClosedError\n"
    assert re.search("ResourceWarning: " + UNCLOSED, stderr), stderr


def test_importing_banana2_defers_the_models_and_bulk_runs() -> None:
    """``from banana2_async import Banana2`` loads no pydantic model, sqlite3 or bulk run module yet."""
    probe = "import json, sys; from banana2_async import Banana2; print(json.dumps(sorted(sys.modules)))"
    with run_python(probe) as process:
        stdout, stderr = finish(process, timeout=30)
    assert process.returncode == 0, stderr
    loaded = set(json.loads(stdout))
    assert {"banana2_async._sync", "banana2_async._sync_loop", "banana2_async._sync_handles"} <= loaded
    assert not loaded & {"banana2_async._models", "pydantic.main", "sqlite3", "banana2_async._batch"}


def test_many_threads_share_one_client(client: Banana2, banana2_simulator: Simulator) -> None:
    """Eight threads generating through one client each get their own task's result."""
    results: dict[int, GenerationResult] = {}
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            results[index] = client.generate(f"thread {index}")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len({result.task_id for result in results.values()}) == 8
    assert banana2_simulator.stats.tasks_per_prompt == {f"thread {index}": 1 for index in range(8)}


def test_threads_waiting_on_one_task_share_its_polls(backend: str) -> None:
    """Six threads tracking one task cost the polls of one: the shared poller dedupes the task id."""
    clock = ManualClock()
    simulator = Simulator(clock=clock, seed=5)
    with connect(simulator, backend, poll_interval=0.02) as client:
        task_id = client.submit("one task").task_id
        handles = [client.track(task_id) for _ in range(6)]
        clock.advance(60)
        outcomes: list[str] = []

        def wait(handle: SyncTaskHandle) -> None:
            outcomes.append(handle.result(timeout=30).task_id)

        threads = [threading.Thread(target=wait, args=(handle,)) for handle in handles]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert outcomes == [task_id] * 6
    # Once the task is done (clock at 60), one poll sees it: seven handles, one poll.
    assert [when for when in simulator.stats.polls(task_id) if when >= 60] == [60]


def test_over_loopback_from_the_environment(
    banana2_server: SimulatorServer, monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    """Banana2() reads BANANA2_API_KEY and BANANA2_BASE_URL and works over real sockets."""
    monkeypatch.setenv("BANANA2_API_KEY", banana2_server.simulator.api_key)
    monkeypatch.setenv("BANANA2_BASE_URL", banana2_server.base_url)
    with Banana2(poll_interval=FAST_POLLS, backend=backend) as client:  # type: ignore[arg-type]
        assert str(client.base_url) == banana2_server.base_url
        result = client.generate("over the wire")
    assert result.images[0].startswith(f"{banana2_server.base_url}/results/")


def test_batch_yields_one_outcome_per_request(client: Banana2, banana2_simulator: Simulator) -> None:
    """A bulk run yields a succeeded outcome per prompt, each submitted once."""
    prompts = [f"bulk {index}" for index in range(6)]
    outcomes = list(client.batch(prompts, concurrency=3))
    assert sorted(outcome.index for outcome in outcomes) == list(range(6))
    assert all(outcome.ok and outcome.result is not None for outcome in outcomes)
    assert banana2_simulator.stats.tasks_per_prompt == dict.fromkeys(prompts, 1)


def test_batch_events_report_progress(client: Banana2) -> None:
    """events() yields each request's submitted event before its succeeded one."""
    kinds: dict[int, list[str]] = {}
    for event in client.batch(["one", "two"]).events():
        kinds.setdefault(event.index, []).append(event.kind)
    assert set(kinds) == {0, 1}
    for seen in kinds.values():
        assert seen[0] == "submitted"
        assert seen[-1] == "succeeded"


def test_batch_with_a_journal_resumes_without_paying_twice(
    client: Banana2, banana2_simulator: Simulator, tmp_path: Path
) -> None:
    """Running the same job with its journal again submits nothing: every row is done."""
    prompts = ["a fox", "a hen", "a cat"]
    journal = tmp_path / "run.db"
    assert all(outcome.ok for outcome in client.batch(prompts, journal=journal, dest_dir=tmp_path / "images"))
    spent = banana2_simulator.stats.credits_spent
    with client.batch(prompts, journal=journal) as again:
        list(again)
        assert again.plan is not None
        assert again.plan.submit == 0
        assert again.plan.succeeded == 3
    assert banana2_simulator.stats.credits_spent == spent == 60
    assert len(list((tmp_path / "images").iterdir())) == 3


def test_leaving_a_batch_early_stops_it(client: Banana2, banana2_simulator: Simulator) -> None:
    """Breaking out of a bulk run stops it: the rest of the job is never sent."""
    for outcome in client.batch([f"stop {index}" for index in range(20)], concurrency=1):
        assert outcome.ok
        break
    assert banana2_simulator.stats.count("generate") < 20
    assert client.generate("the client still works").images


def test_download_writes_each_image(client: Banana2, tmp_path: Path) -> None:
    """download saves the result's images under the task id and returns their paths."""
    result = client.generate("a lighthouse", output_format="jpeg")
    paths = client.download(result, tmp_path)
    assert [path.name for path in paths] == [f"{result.task_id}-0.jpg"]
    assert paths[0].read_bytes().startswith(b"\xff\xd8")
