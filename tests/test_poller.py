"""The shared poller: one coroutine, one poll per task id, its timing, its outcomes, and what never kills it."""

from __future__ import annotations

import gc
import logging
import math
import traceback
import tracemalloc
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest
from _fake_api import FakeAPI, error, open_client, stall, task_data, wait_until

from banana2_async import (
    APIResponseError,
    AuthenticationError,
    BatchEvent,
    EmptyResultError,
    InternalServerError,
    NotFoundError,
    TaskFailedError,
    TaskTimeoutError,
)

pytestmark = [pytest.mark.anyio, pytest.mark.virtual_clock]

FOREVER = ("IN_PROGRESS",)

# The two ways a request reaches the fake: the SDK's own httpx client (its polls go straight to the
# transport), and a caller's ``http_client`` (every request through ``client.send``).
SENDING_PATHS = pytest.mark.parametrize("callers_client", [False, True], ids=["own-client", "callers-client"])


def running_forever(_: str) -> tuple[str, ...]:
    """The script of a task that never finishes."""
    return FOREVER


def task_count() -> int:
    """How many tasks the event loop runs now, on either backend."""
    return len(anyio.get_running_tasks())


def spans(times: list[float]) -> list[float]:
    """The time from each poll of a task to the one after next.

    The fake sees a poll a moment after the SDK sent it, so one poll to the next can look a
    little shorter than the wait. Poll k+1 is sent only after poll k-1 was answered, though,
    so ``times[k + 1] - times[k - 1]`` is never shorter than the wait before poll k+1.
    """
    return [later - earlier for earlier, later in zip(times, times[2:], strict=False)]


# -- one coroutine --------------------------------------------------------------------------------


async def test_the_number_of_tasks_does_not_grow_with_the_number_of_handles() -> None:
    """With 1,000 pending handles polled over and over, the running tasks stay at most the pool's size."""
    fake = FakeAPI(running_forever)
    before_client = task_count()
    async with open_client(fake, max_concurrent_polls=4, wait_timeout=None) as client:
        idle = task_count()
        assert idle - before_client <= 2  # the poller's dispatcher and the client's task group; no worker yet
        handles = [client.track(f"t{index}") for index in range(1_000)]
        assert client.statistics().tasks_watched == 1_000
        counts = set()
        for rounds in (1, 2, 3):
            await wait_until(lambda: fake.status_requests >= rounds * 1_000)  # noqa: B023 - awaited at once
            counts.add(task_count())
        assert counts == {idle + 4}
        assert all(not handle.done() for handle in handles)
    assert task_count() == before_client


async def test_an_idle_poller_sets_no_timer(anyio_backend_name: str) -> None:
    """With nothing registered the poller sleeps without a deadline; with tasks done it goes back to that."""
    if anyio_backend_name != "trio":
        pytest.skip("only trio shows its pending deadlines through a public API")
    import trio

    def next_deadline() -> float:
        return trio.lowlevel.current_statistics().seconds_to_next_deadline

    fake = FakeAPI(lambda _: ("IN_PROGRESS", "SUCCESS"))
    async with open_client(fake, wait_timeout=None) as client:
        await anyio.lowlevel.checkpoint()
        assert next_deadline() == math.inf
        await client.track("a")
        await wait_until(lambda: client.statistics().tasks_watched == 0)
        await anyio.lowlevel.checkpoint()
        assert next_deadline() == math.inf


@SENDING_PATHS
async def test_the_same_task_is_polled_once_for_many_handles(callers_client: bool) -> None:
    """Fifty handles on one task id cost one poll per round, and all get the same result."""
    fake = FakeAPI()
    fake.script("same", "IN_PROGRESS", "IN_PROGRESS", "IN_PROGRESS", "SUCCESS")
    async with open_client(fake, callers_client=callers_client) as client:
        handles = [client.track("same") for _ in range(50)]
        assert client.statistics().tasks_watched == 1
        results = [await handle for handle in handles]
    assert fake.polls["same"] == 4
    assert client.statistics().polls_sent == 4
    assert {result.task_id for result in results} == {"same"}
    assert all(result.images == results[0].images for result in results)


async def test_tracking_a_watched_task_adds_no_poll() -> None:
    """Tracking a submitted task again joins its schedule: no extra, immediate poll."""
    fake = FakeAPI(lambda _: ("IN_PROGRESS", "IN_PROGRESS", "SUCCESS"))
    async with open_client(fake) as client:
        submitted = await client.submit("a fox")
        tracked = client.track(submitted.task_id)
        assert (await tracked).task_id == (await submitted).task_id
    assert fake.polls[submitted.task_id] == 3


# -- timing ---------------------------------------------------------------------------------------


async def test_the_first_poll_comes_one_interval_after_submit() -> None:
    """No status request comes sooner than one interval after the task was accepted."""
    fake = FakeAPI(lambda _: ("IN_PROGRESS", "SUCCESS"))
    async with open_client(fake, poll_interval=0.05) as client:
        handle = await client.submit("a fox")
        await handle
    (submitted_at, _, _) = fake.log[0]
    assert fake.poll_times[handle.task_id][0] - submitted_at >= 0.05


async def test_track_polls_at_once() -> None:
    """``track`` polls a task it does not watch yet at once, not an interval later."""
    fake = FakeAPI()
    async with open_client(fake, poll_interval=1_000.0) as client:
        with anyio.fail_after(30):  # an interval later would be 1,000 s
            result = await client.track("known")
    assert result.task_id == "known"
    assert fake.polls["known"] == 1


async def test_polls_of_a_task_are_at_least_one_interval_apart() -> None:
    """Successive polls of a task are never closer than the low end of ``poll_interval``."""
    fake = FakeAPI(lambda _: ("IN_PROGRESS",) * 6 + ("SUCCESS",))
    async with open_client(fake, poll_interval=(0.01, 0.02)) as client:
        handles = [await client.submit(f"fox {n}") for n in range(3)]
        for handle in handles:
            await handle
    for handle in handles:
        assert fake.polls[handle.task_id] == 7
        assert min(spans(fake.poll_times[handle.task_id])) >= 0.01


async def test_a_stalled_poller_does_not_catch_up() -> None:
    """After the event loop is blocked for many intervals, each task is polled once, not once per missed interval."""
    fake = FakeAPI(running_forever)
    async with open_client(fake, poll_interval=0.01, wait_timeout=None) as client:
        handles = [client.track(f"t{n}") for n in range(5)]
        await wait_until(lambda: all(fake.polls[f"t{n}"] >= 2 for n in range(5)))
        before = dict(fake.polls)
        stalled_at = anyio.current_time()
        # Block the whole event loop for 30 intervals: no checkpoint, no poll.
        stall(0.3)
        await wait_until(lambda: all(fake.polls[f"t{n}"] >= before[f"t{n}"] + 3 for n in range(5)))
        for handle in handles:
            times = [when for when in fake.poll_times[handle.task_id] if when > stalled_at]
            assert min(spans(times)) >= 0.01
        assert not any(handle.done() for handle in handles)


# -- concurrency ----------------------------------------------------------------------------------


async def test_due_polls_run_concurrently_up_to_max_concurrent_polls() -> None:
    """Fifty due polls go out five at a time, through a pool of five workers: no task per pending poll."""
    fake = FakeAPI()
    fake.gate = anyio.Event()
    async with open_client(fake, max_concurrent_polls=5) as client:
        idle = task_count()
        handles = [client.track(f"t{n}") for n in range(50)]
        await anyio.wait_all_tasks_blocked()
        assert fake.in_flight_by_kind["status"] == 5
        assert task_count() == idle + 5
        fake.gate.set()
        for handle in handles:
            await handle
    assert fake.max_in_flight_by_kind["status"] == 5
    assert fake.status_requests == 50


async def test_a_rate_limit_counts_each_poll_once() -> None:
    """With ``rate_limit=10`` (a burst of ten) ten polls go out at once: a poll takes one share, not two."""
    fake = FakeAPI()
    fake.gate = anyio.Event()
    async with open_client(fake, rate_limit=10.0, max_concurrent_polls=20) as client:
        handles = [client.track(f"t{n}") for n in range(10)]
        await anyio.wait_all_tasks_blocked()
        assert fake.in_flight_by_kind["status"] == 10
        fake.gate.set()
        for handle in handles:
            await handle


# -- 429 ------------------------------------------------------------------------------------------


@SENDING_PATHS
async def test_a_429_pauses_every_poll_for_retry_after(callers_client: bool, caplog: pytest.LogCaptureFixture) -> None:
    """A 429 on one task's poll holds every task's polls until Retry-After has passed."""
    caplog.set_level(logging.WARNING, logger="banana2_async")
    fake = FakeAPI(lambda _: ("IN_PROGRESS", "SUCCESS"))
    fake.script("a", error(429, "slow down", **{"Retry-After": "0.2"}), "SUCCESS")
    async with open_client(fake, callers_client=callers_client) as client:
        first = client.track("a")
        await wait_until(lambda: any("rate limited" in record.message for record in caplog.records))
        (limited_at,) = fake.poll_times["a"]
        others = [client.track("b"), client.track("c"), await client.submit("d")]
        await first
        for handle in others:
            await handle
    later = [entry for entry in fake.log if entry[0] > limited_at and entry[1] == "status"]
    assert len(later) == 1 + 2 + 2 + 2
    assert all(when >= limited_at + 0.2 for when, _, _ in later)


@pytest.mark.slow_in_real_time
async def test_a_429_without_retry_after_pauses_for_a_backoff() -> None:
    """A bare 429 still pauses polling, for a backoff of at least half a second."""
    fake = FakeAPI()
    fake.script("a", error(429), "SUCCESS")
    async with open_client(fake) as client:
        result = await client.track("a")
    assert result.task_id == "a"
    first, second = fake.poll_times["a"]
    assert second - first >= 0.5


# -- transient failures ---------------------------------------------------------------------------

TRANSIENT: dict[str, Any] = {
    "connect error": httpx.ConnectError("refused"),
    "read timeout": httpx.ReadTimeout("slow"),
    "dropped connection": httpx.RemoteProtocolError("peer closed connection"),
    "500": error(500),
    "502": error(502),
    "503": error(503),
    "504": error(504),
    "408": error(408),
    "garbage body": httpx.Response(200, content=b"<html>bad gateway</html>"),
    "not an envelope": httpx.Response(200, json=[1, 2, 3]),
    "envelope without data": httpx.Response(200, json={"code": 200, "message": "success"}),
    "500 inside a 200": httpx.Response(200, json={"code": 500, "message": "oops", "data": None}),
}


@SENDING_PATHS
@pytest.mark.parametrize("failure", list(TRANSIENT), ids=list(TRANSIENT))
async def test_transient_failures_back_off_and_the_task_still_resolves(failure: str, callers_client: bool) -> None:
    """Three failed polls in a row back off (1x, 2x, 4x the interval); the fourth answer resolves the task."""
    fake = FakeAPI(lambda _: ("IN_PROGRESS", "SUCCESS"))
    reply = TRANSIENT[failure]
    fake.script("flaky", reply, reply, reply, "SUCCESS")
    async with open_client(fake, poll_interval=0.01, callers_client=callers_client) as client:
        flaky = client.track("flaky")
        steady = client.track("steady")
        result = await flaky
        await steady
    assert result.images
    assert fake.polls["flaky"] == 4
    assert fake.polls["steady"] == 2
    # The waits before polls 3 and 4 are 2x and 4x the interval (without backoff, both would be 1x).
    assert [span >= floor for span, floor in zip(spans(fake.poll_times["flaky"]), (0.02, 0.04), strict=True)] == [
        True,
        True,
    ]


async def test_a_polls_retry_after_is_honoured() -> None:
    """A 503 with Retry-After on a poll holds that task's next poll back at least that long."""
    fake = FakeAPI()
    fake.script("t", "IN_PROGRESS", error(503, "busy", **{"Retry-After": "0.2"}), "SUCCESS")
    async with open_client(fake) as client:
        await client.track("t")
    assert fake.polls["t"] == 3
    assert spans(fake.poll_times["t"])[0] >= 0.2


async def test_backoff_is_per_task() -> None:
    """One task failing over and over does not slow another task's polls."""
    fake = FakeAPI(running_forever)
    fake.script("sick", error(500))
    fake.script("well", *(["IN_PROGRESS"] * 20), "SUCCESS")
    async with open_client(fake, poll_interval=0.005, wait_timeout=None) as client:
        sick = client.track("sick")
        await client.track("well")
        assert not sick.done()
    # The sick task, backing off 5, 10, 20, 40 ms..., cannot have had as many polls as the well one.
    assert fake.polls["well"] == 21
    assert fake.polls["sick"] < 21


# -- outcomes -------------------------------------------------------------------------------------

FAILURE_STATUSES = ["FAILED", "failed", "FAILURE", "failure", "ERROR", "Error", "CANCELLED", "cancelled", "canceled"]


@pytest.mark.parametrize("status", FAILURE_STATUSES)
async def test_failure_statuses_raise_task_failed_error(status: str) -> None:
    """A failure status in any case settles the handle with TaskFailedError carrying the status."""
    fake = FakeAPI()
    fake.script("doomed", "IN_PROGRESS", task_data("doomed", status, error="content policy"))
    async with open_client(fake) as client:
        handle = client.track("doomed")
        with pytest.raises(TaskFailedError) as caught:
            await handle
    assert caught.value.task_id == "doomed"
    assert caught.value.status == status
    assert "content policy" in str(caught.value)
    assert fake.polls["doomed"] == 2
    assert isinstance(handle.exception(), TaskFailedError)


MESSAGE_PLACES: dict[str, dict[str, Any]] = {
    "message": {"code": 200, "message": "the GPU caught fire"},
    "error": {"code": 200, "message": "success", "error": "the GPU caught fire"},
    "error_message": {"code": 200, "message": "success", "error_message": "the GPU caught fire"},
    "data.error": {"code": 200, "message": "success", "data_fields": {"error": "the GPU caught fire"}},
    "data.error_message": {"code": 200, "message": "success", "data_fields": {"error_message": "the GPU caught fire"}},
    "data.error object": {
        "code": 200,
        "message": "success",
        "data_fields": {"error": {"message": "the GPU caught fire"}},
    },
}


@pytest.mark.parametrize("place", list(MESSAGE_PLACES), ids=list(MESSAGE_PLACES))
async def test_the_servers_failure_message_is_found_wherever_it_is(place: str) -> None:
    """The message comes from ``message``, ``error``, ``error_message`` or ``data.error``."""
    body = dict(MESSAGE_PLACES[place])
    data_fields = body.pop("data_fields", {})
    body["data"] = task_data("doomed", "FAILED", **data_fields)
    fake = FakeAPI()
    fake.script("doomed", httpx.Response(200, json=body))
    async with open_client(fake) as client:
        with pytest.raises(TaskFailedError, match="the GPU caught fire"):
            await client.track("doomed")


async def test_a_failure_without_a_message_names_its_status() -> None:
    """A failure status with no message at all still says what the server reported."""
    fake = FakeAPI()
    fake.script("doomed", "Canceled")
    async with open_client(fake) as client:
        with pytest.raises(TaskFailedError, match="Canceled"):
            await client.track("doomed")


@pytest.mark.parametrize("status", ["PENDING", "QUEUED", "PROCESSING", "IN_QUEUE", "in_progress", "Running"])
async def test_in_flight_statuses_keep_polling_quietly(status: str, caplog: pytest.LogCaptureFixture) -> None:
    """Documented and common in-flight statuses keep the task polled, without a warning."""
    caplog.set_level(logging.WARNING, logger="banana2_async")
    fake = FakeAPI()
    fake.script("t", status, status, "SUCCESS")
    async with open_client(fake) as client:
        await client.track("t")
    assert fake.polls["t"] == 3
    assert not caplog.records


async def test_unknown_statuses_keep_polling_and_are_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    """An unknown status keeps the task polled; each unknown status is logged once per client."""
    caplog.set_level(logging.WARNING, logger="banana2_async")
    fake = FakeAPI()
    fake.script("a", "WARMING_UP", "WARMING_UP", "WARMING_UP", "SUCCESS")
    fake.script("b", "WARMING_UP", "DREAMING", "DREAMING", "SUCCESS")
    async with open_client(fake) as client:
        results = [await client.track("a"), await client.track("b")]
    assert [result.task_id for result in results] == ["a", "b"]
    assert fake.polls["a"] == 4
    assert fake.polls["b"] == 4
    logged = [record for record in caplog.records if record.name == "banana2_async"]
    assert len(logged) == 2
    assert "WARMING_UP" in logged[0].getMessage()
    assert "DREAMING" in logged[1].getMessage()
    assert all(record.levelno == logging.WARNING for record in logged)


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"response": None},
        {"response": []},
        {"response": ""},
        {"response": ["ftp://x.example/1.png", "", 123, None, "https://x .example/1.png", "http://x:99999/"]},
        {"response": ["https://x.example/\u0007.png", "https://x.example/\u2028.png"]},
        {"response": {"url": "https://x.example/1.png"}},
    ],
)
async def test_a_success_without_usable_images_is_an_empty_result_error(extra: dict[str, Any]) -> None:
    """A SUCCESS whose ``response`` is missing, null, empty or holds no usable http(s) URL fails the task."""
    fake = FakeAPI()
    fake.script("bare", {"task_id": "bare", "status": "SUCCESS", "consumed_credits": 20, **extra})
    async with open_client(fake) as client:
        with pytest.raises(EmptyResultError) as caught:
            await client.track("bare")
    assert isinstance(caught.value, TaskFailedError)
    assert caught.value.task_id == "bare"
    assert caught.value.consumed_credits == 20


async def test_result_urls_with_lone_surrogates_are_left_out() -> None:
    """A result URL holding a lone surrogate (JSON ``\\ud800``) is no usable URL: the success has no image."""
    fake = FakeAPI()
    body = b'{"code":200,"data":{"task_id":"t","status":"SUCCESS","response":["https://x.example/\\ud800.png"]}}'
    fake.script("t", httpx.Response(200, content=body))
    async with open_client(fake) as client:
        with pytest.raises(EmptyResultError):
            await client.track("t")


async def test_a_success_keeps_its_usable_images_and_leaves_out_the_rest() -> None:
    """Result URLs that are no usable http(s) URL are left out of a success that has usable ones too."""
    fake = FakeAPI()
    fake.script(
        "t", {"task_id": "t", "status": "SUCCESS", "response": ["file:///etc/passwd", "https://x.example/1.png"]}
    )
    async with open_client(fake) as client:
        result = await client.track("t")
    assert result.images == ["https://x.example/1.png"]


# -- deadlines ------------------------------------------------------------------------------------


async def test_the_deadline_raises_task_timeout_and_track_picks_the_task_up_again() -> None:
    """Past its deadline a handle raises TaskTimeoutError(task_id); the task may finish and track() gets it."""
    fake = FakeAPI(running_forever)
    async with open_client(fake) as client:
        submitted_at = anyio.current_time()
        handle = await client.submit("a slow fox", wait_timeout=0.05)
        with pytest.raises(TaskTimeoutError) as caught:
            await handle
        assert anyio.current_time() - submitted_at >= 0.05
        assert caught.value.task_id == handle.task_id
        assert handle.task_id in str(caught.value)
        assert client.statistics().tasks_watched == 0
        polled = fake.polls[handle.task_id]
        # The server finishes the task after all.
        fake.script(handle.task_id, "SUCCESS")
        result = await client.track(handle.task_id)
    assert result.task_id == handle.task_id
    assert fake.polls[handle.task_id] == polled + 1


async def test_a_timeout_after_failed_polls_carries_the_last_failure() -> None:
    """When the polls were failing, the TaskTimeoutError's cause is the last failure."""
    fake = FakeAPI()
    fake.script("sick", error(500, "down"))
    async with open_client(fake) as client:
        client.track("sick", wait_timeout=None)
        await wait_until(lambda: fake.polls["sick"] >= 1)
        with pytest.raises(TaskTimeoutError) as caught:
            await client.track("sick", wait_timeout=0.05)
    assert isinstance(caught.value.__cause__, InternalServerError)


async def test_one_handles_deadline_leaves_the_others_of_the_task_polled() -> None:
    """A short deadline on one handle times out that handle only; the task stays polled for the rest."""
    fake = FakeAPI(running_forever)
    async with open_client(fake) as client:
        patient = client.track("t", wait_timeout=None)
        hasty = client.track("t", wait_timeout=0.03)
        with pytest.raises(TaskTimeoutError):
            await hasty
        assert client.statistics().tasks_watched == 1
        assert not patient.done()
        fake.script("t", "SUCCESS")
        assert (await patient).task_id == "t"


async def test_a_deadline_in_the_past_times_out_when_awaited() -> None:
    """A handle awaited again after its deadline passed, while released, settles with TaskTimeoutError."""
    fake = FakeAPI(running_forever)
    async with open_client(fake) as client:
        handle = client.track("t", wait_timeout=0.05)
        with anyio.move_on_after(0.001):
            await handle
        assert client.statistics().tasks_watched == 0
        await anyio.sleep(0.06)
        with pytest.raises(TaskTimeoutError):
            await handle


# -- 404 and 401 ----------------------------------------------------------------------------------


async def test_a_404_right_after_submit_is_tolerated_within_the_grace() -> None:
    """A task the server does not know yet, right after submit, is polled again until it shows up."""
    fake = FakeAPI(lambda _: (error(404, "no such task"), error(404, "no such task"), "IN_PROGRESS", "SUCCESS"))
    async with open_client(fake, poll_interval=0.005) as client:
        handle = await client.submit("a fox")
        result = await handle
    assert result.task_id == handle.task_id
    assert fake.polls[handle.task_id] == 4


async def test_a_404_after_the_grace_raises_not_found() -> None:
    """A task still unknown once the grace is over settles with NotFoundError."""
    fake = FakeAPI(lambda _: (error(404, "no such task"),))
    async with open_client(fake, poll_interval=0.005, not_found_grace=0.05) as client:
        submitted_at = anyio.current_time()
        handle = await client.submit("a fox")
        with pytest.raises(NotFoundError, match="no such task"):
            await handle
        assert anyio.current_time() - submitted_at >= 0.05
    assert fake.polls[handle.task_id] >= 2


async def test_without_a_grace_a_404_raises_at_once() -> None:
    """With ``not_found_grace=0`` the first 404 settles the handle."""
    fake = FakeAPI(lambda _: (error(404),))
    async with open_client(fake, not_found_grace=0) as client:
        handle = await client.submit("a fox")
        with pytest.raises(NotFoundError):
            await handle
    assert fake.polls[handle.task_id] == 1


async def test_a_tracked_task_gets_no_grace() -> None:
    """``track`` is for tasks the server already has: its 404 settles the handle at the first poll."""
    fake = FakeAPI()
    fake.script("gone", error(404, "no such task"))
    async with open_client(fake) as client:
        with pytest.raises(NotFoundError):
            await client.track("gone")
    assert fake.polls["gone"] == 1


async def test_a_401_on_a_poll_fails_every_pending_handle() -> None:
    """The key refused on one poll fails every pending handle with AuthenticationError and stops polling."""
    fake = FakeAPI(running_forever)
    fake.script("a", "IN_PROGRESS", error(401, "invalid API key"))
    async with open_client(fake, wait_timeout=None) as client:
        handles = [client.track("a"), client.track("b"), client.track("b"), await client.submit("c")]
        for handle in handles:
            with pytest.raises(AuthenticationError):
                await handle
        assert client.statistics().tasks_watched == 0
        polled = fake.status_requests
        await anyio.sleep(0.02)
        assert fake.status_requests == polled


async def test_raising_a_shared_error_again_and_again_does_not_grow_its_traceback() -> None:
    """One 401 settles many handles with one error; each await raises it from where it settled, not deeper."""
    fake = FakeAPI(running_forever)
    fake.script("a", "IN_PROGRESS", error(401, "invalid API key"))
    async with open_client(fake, wait_timeout=None) as client:
        handles = [client.track(f"t{number}") for number in range(50)] + [client.track("a")]
        depths = []
        for handle in handles + handles:
            with pytest.raises(AuthenticationError) as caught:
                await handle
            depths.append(len(traceback.extract_tb(caught.value.__traceback__)))
    assert len({id(handle.exception()) for handle in handles}) == 1
    assert len(set(depths)) == 1


@pytest.mark.parametrize("code", [400, 402, 403, 409, 422])
async def test_a_definite_error_on_a_poll_settles_that_task_only(code: int) -> None:
    """Any other 4xx on a poll ends that task with the matching API error; the others carry on."""
    fake = FakeAPI(lambda _: ("IN_PROGRESS", "SUCCESS"))
    fake.script("bad", error(code, "nope"))
    async with open_client(fake) as client:
        bad, good = client.track("bad"), client.track("good")
        with pytest.raises(Exception, match="nope") as caught:
            await bad
        assert (await good).task_id == "good"
    assert getattr(caught.value, "status_code", None) == code
    assert fake.polls["bad"] == 1


# -- what never kills the poller ------------------------------------------------------------------

GARBAGE: list[Any] = [
    httpx.Response(200, content=b"\xff\xfe not json"),
    httpx.Response(200, content=b"null"),
    httpx.Response(200, json={"code": 200, "data": [1]}),
    httpx.Response(200, json={"code": 200, "data": {"task_id": "bad", "status": "IN_PROGRESS", "response": 5}}),
    httpx.Response(200, json={"code": 200, "data": {"task_id": "bad", "status": ["SUCCESS"]}}),
    httpx.Response(200, json={"code": "two hundred", "data": {"task_id": "bad", "status": 7}}),
    httpx.Response(200, content=b"[" * 100_000 + b"]" * 100_000),
    httpx.Response(200, content=b""),
    httpx.Response(599, content=b"\x00"),
]


@SENDING_PATHS
async def test_bad_answers_never_kill_the_poller(callers_client: bool) -> None:
    """After a stream of garbage answers for one task, every other task still resolves."""
    fake = FakeAPI(lambda _: ("IN_PROGRESS", "SUCCESS"))
    # Each garbage answer follows a good one, so the backoff starts over and the test stays quick.
    fake.script("bad", *(reply for garbage in GARBAGE for reply in ("IN_PROGRESS", garbage)), "IN_PROGRESS")
    async with open_client(fake, callers_client=callers_client) as client:
        bad = client.track("bad", wait_timeout=None)
        await wait_until(lambda: fake.polls["bad"] >= 2 * len(GARBAGE) + 2)
        others = [await client.submit(f"fox {n}") for n in range(5)] + [client.track("tracked")]
        for handle in others:
            await handle
        assert not bad.done()


async def test_garbage_until_the_deadline_times_out_with_the_cause() -> None:
    """A task that only ever gets garbage times out, its cause the last unreadable answer."""
    fake = FakeAPI()
    fake.script("bad", httpx.Response(200, content=b"<html>"))
    async with open_client(fake) as client:
        # Polled once before the handle that times out is made: without a poll there is no cause to give.
        client.track("bad", wait_timeout=None)
        await wait_until(lambda: fake.polls["bad"] >= 1)
        with pytest.raises(TaskTimeoutError) as caught:
            await client.track("bad", wait_timeout=0.05)
    assert isinstance(caught.value.__cause__, APIResponseError)


@SENDING_PATHS
async def test_an_unexpected_error_costs_one_task_not_the_poller(
    callers_client: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug while polling one task settles that task with the error and is logged; others still resolve."""
    caplog.set_level(logging.ERROR, logger="banana2_async")
    fake = FakeAPI(lambda _: ("IN_PROGRESS", "SUCCESS"))
    fake.script("cursed", RuntimeError("a bug in a transport"))
    async with open_client(fake, callers_client=callers_client) as client:
        cursed, fine = client.track("cursed"), client.track("fine")
        with pytest.raises(RuntimeError, match="a bug in a transport"):
            await cursed
        assert (await fine).task_id == "fine"
        assert (await client.track("after")).task_id == "after"
    assert any("cursed" in record.getMessage() for record in caplog.records)


# -- cancelled waiters ----------------------------------------------------------------------------


async def test_a_cancelled_waiter_leaves_the_other_waiters_of_the_handle_unharmed() -> None:
    """Cancelling one of two coroutines awaiting a handle leaves the other to get the result."""
    fake = FakeAPI(running_forever)
    results: list[str] = []
    async with open_client(fake) as client:
        handle = client.track("t")

        async def wait() -> None:
            results.append((await handle).task_id)

        async with anyio.create_task_group() as group:
            with anyio.CancelScope() as doomed:
                group.start_soon(wait)
                async with anyio.create_task_group() as inner:
                    inner.start_soon(wait)
                    await wait_until(lambda: handle.waiting and fake.polls["t"] >= 2)
                    doomed.cancel()
            assert handle.waiting
            assert client.statistics().tasks_watched == 1
            fake.script("t", "SUCCESS")
    assert results == ["t"]


async def test_a_cancelled_waiter_leaves_other_handles_unharmed() -> None:
    """Cancelling the waiter of one handle does not disturb another handle on the same or another task."""
    fake = FakeAPI(running_forever)
    async with open_client(fake) as client:
        doomed, same, other = client.track("t"), client.track("t"), client.track("u")
        with anyio.move_on_after(0.01):
            await doomed
        assert not doomed.done()
        assert client.statistics().tasks_watched == 2
        fake.script("t", "SUCCESS")
        fake.script("u", "SUCCESS")
        assert (await same).task_id == "t"
        assert (await other).task_id == "u"
        assert not doomed.done()


async def test_when_the_last_waiter_leaves_polling_stops_and_awaiting_again_resumes() -> None:
    """The last waiter leaving stops the task's polls; awaiting the handle again starts them again."""
    fake = FakeAPI(running_forever)
    async with open_client(fake, wait_timeout=None) as client:
        handle = client.track("t")
        clock = client.track("clock")
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as group:
                for _ in range(3):
                    group.start_soon(handle.result)
                await wait_until(lambda: fake.polls["t"] >= 3)
                scope.cancel()
        assert not handle.waiting
        assert client.statistics().tasks_watched == 1
        stopped_at = fake.polls["t"]
        # Let the other task be polled twenty more times: "t" gets at most the one poll that was in flight.
        clock_polls = fake.polls["clock"]
        await wait_until(lambda: fake.polls["clock"] >= clock_polls + 20)
        assert fake.polls["t"] <= stopped_at + 1
        assert not handle.done()
        fake.script("t", "IN_PROGRESS", "SUCCESS")
        assert (await handle).task_id == "t"
        assert fake.polls["t"] >= stopped_at + 2
        assert not clock.done()


async def test_a_handle_released_while_its_poll_is_in_flight_resumes_cleanly() -> None:
    """Leaving and coming back while a poll is in flight neither loses the task nor polls it twice at once."""
    fake = FakeAPI(running_forever)
    fake.gate = anyio.Event()
    async with open_client(fake, poll_interval=0.005) as client:
        handle = client.track("t")
        await wait_until(lambda: fake.in_flight_by_kind["status"] == 1)
        with anyio.move_on_after(0.001):
            await handle
        assert client.statistics().tasks_watched == 0
        async with anyio.create_task_group() as group:
            group.start_soon(handle.result)
            await wait_until(lambda: handle.waiting)
            fake.script("t", "IN_PROGRESS", "SUCCESS")
            fake.gate.set()
        assert (await handle).task_id == "t"
    assert fake.max_in_flight_by_kind["status"] == 1


async def test_a_task_released_while_waiting_for_a_worker_is_not_polled_early_when_awaited_again() -> None:
    """A due poll still in line when its last waiter leaves is dropped: awaiting again starts a fresh interval."""
    fake = FakeAPI(running_forever)
    fake.gate = anyio.Event()
    async with open_client(fake, poll_interval=60.0, max_concurrent_polls=1, wait_timeout=None) as client:
        client.track("busy")  # polled at once, and held: the one worker is busy
        await wait_until(lambda: fake.in_flight_by_kind["status"] == 1)
        handle = client.track("t")  # due at once too: in line for the worker
        await anyio.wait_all_tasks_blocked()
        with anyio.move_on_after(0.01):
            await handle
        async with anyio.create_task_group() as group:
            group.start_soon(handle.result)
            await wait_until(lambda: handle.waiting)
            fake.gate.set()
            await wait_until(lambda: fake.in_flight_by_kind["status"] == 0)
            await anyio.wait_all_tasks_blocked()  # the worker is free to take whatever is in line
            assert fake.polls["t"] == 0
            group.cancel_scope.cancel()
        assert client.statistics().tasks_watched == 1  # "busy" only: "t" was released again


async def test_a_released_handle_on_a_shared_task_does_not_stop_it() -> None:
    """A handle whose waiter left stops nothing while another handle of the task is still watched."""
    fake = FakeAPI(running_forever)
    async with open_client(fake) as client:
        left, kept = client.track("t"), client.track("t")
        with anyio.move_on_after(0.005):
            await left
        polled = fake.polls["t"]
        await wait_until(lambda: fake.polls["t"] >= polled + 5)
        fake.script("t", "SUCCESS")
        await kept
        assert not left.done()
        assert client.statistics().tasks_watched == 0


async def test_statistics_count_the_tasks_watched_and_their_pending_handles() -> None:
    """Three handles on two tasks: two tasks watched, three handles pending; a handle let go counts no more."""
    fake = FakeAPI(running_forever)
    async with open_client(fake) as client:
        handles = [client.track("a"), client.track("a"), client.track("b")]
        statistics = client.statistics()
        assert (statistics.tasks_watched, statistics.handles_pending) == (2, 3)
        with anyio.move_on_after(0.001):
            await handles[2]
        statistics = client.statistics()
        assert (statistics.tasks_watched, statistics.handles_pending) == (1, 2)
        fake.script("a", "SUCCESS")
        await handles[0]
        statistics = client.statistics()
        assert (statistics.tasks_watched, statistics.handles_pending) == (0, 0)


@pytest.mark.parametrize(
    "answer",
    ["SUCCESS", "IN_PROGRESS", "FAILED", "WEIRD", error(500)],
    ids=["success", "running", "failed", "unknown", "500"],
)
async def test_an_answer_for_a_task_nobody_waits_for_any_more_is_dropped(answer: Any) -> None:
    """The answer to a poll in flight when the last waiter left settles nothing; awaiting again polls again."""
    fake = FakeAPI(running_forever)
    fake.gate = anyio.Event()
    fake.script("t", answer, "SUCCESS")
    async with open_client(fake) as client:
        handle = client.track("t")
        await wait_until(lambda: fake.in_flight_by_kind["status"] == 1)
        with anyio.move_on_after(0.001):
            await handle
        fake.gate.set()
        await wait_until(lambda: fake.in_flight == 0)
        await anyio.wait_all_tasks_blocked()
        assert not handle.done()
        assert client.statistics().tasks_watched == 0
        assert (await handle).task_id == "t"
    assert fake.polls["t"] == 2


async def test_an_answer_about_another_task_does_not_settle_this_one() -> None:
    """A status answer naming a different task id is not taken for this task's; the task is polled again."""
    fake = FakeAPI()
    fake.script("t", task_data("someone-else", "SUCCESS"), "SUCCESS")
    async with open_client(fake) as client:
        result = await client.track("t")
    assert result.task_id == "t"
    assert fake.polls["t"] == 2


async def test_polls_keep_to_the_rate_limit() -> None:
    """With ``rate_limit=200`` (a burst of 200), the k-th of 260 polls goes out no sooner than (k - 200) / 200 s in."""
    fake = FakeAPI()
    async with open_client(fake, rate_limit=200.0) as client:
        started = anyio.current_time()
        handles = [client.track(f"t{n}") for n in range(260)]
        for handle in handles:
            await handle
    times = sorted(fake.poll_times[f"t{n}"][0] for n in range(260))
    assert all(when >= started + (k - 200) / 200 - 1e-9 for k, when in enumerate(times, start=1))


# -- who hears a poll ----------------------------------------------------------------------------


async def test_a_bulk_run_hears_each_answered_poll_of_its_own_tasks() -> None:
    """A bulk run gets a ``polled`` event per answered poll of its tasks: none for a failed poll or another task."""
    fake = FakeAPI(lambda _: ("IN_PROGRESS", error(503), "IN_PROGRESS", "SUCCESS"))
    heard: list[str] = []

    def hear(event: BatchEvent) -> None:
        if event.kind == "polled":
            heard.append(event.task_id or "")

    async with open_client(fake, poll_interval=0.002) as client:
        outsider = client.track("outsider", wait_timeout=None)
        outcomes = [outcome async for outcome in client.batch(["a fox", "a hen"], on_event=hear)]
        await outsider
    assert all(outcome.ok for outcome in outcomes)
    assert sorted(heard) == sorted(fake.submitted * 3)
    assert all(fake.polls[task_id] == 4 for task_id in fake.submitted)


# -- memory per pending task -----------------------------------------------------------------------

PAGE = b"<html>" + b"x" * (256 * 1024) + b"</html>"


async def _memory_of_pending_tasks(count: int, reply: Any) -> int:
    """Bytes traced while ``count`` tasks are pending, each polled once with ``reply``."""
    fake = FakeAPI(lambda task_id: (reply,))
    gc.collect()
    tracemalloc.start()
    try:
        async with open_client(fake, poll_interval=30.0, wait_timeout=None) as client:
            before, _ = tracemalloc.get_traced_memory()
            handles = [client.track(f"t{n:05d}") for n in range(count)]
            await wait_until(lambda: fake.status_requests >= count)
            await anyio.wait_all_tasks_blocked()
            gc.collect()
            during, _ = tracemalloc.get_traced_memory()
            assert not any(handle.done() for handle in handles)
    finally:
        tracemalloc.stop()
    return during - before


@pytest.mark.slow
async def test_a_pending_task_keeps_no_error_page_alive() -> None:
    """Tasks whose last poll got a 256 KiB 502 page cost under 4 KiB each more than tasks polled without error."""
    count = 400
    page = httpx.Response(502, content=PAGE, headers={"content-type": "text/html"})
    baseline = await _memory_of_pending_tasks(count, "IN_PROGRESS")
    with_errors = await _memory_of_pending_tasks(count, page)
    assert (with_errors - baseline) / count < 4096
