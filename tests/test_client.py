"""AsyncBanana2: options checked before any I/O, the calls users make, the lifecycle, as_completed."""

from __future__ import annotations

import contextlib
import gc
import math
from collections.abc import Iterator
from typing import Any, cast

import anyio
import httpx
import pytest
import respx
from _fake_api import API_KEY, BASE_URL, FakeAPI, envelope, error, image_url, open_client, task_data, wait_until

from banana2_async import (
    AsyncBanana2,
    ClientClosedError,
    ClientStatistics,
    ConfigurationError,
    GenerationRequest,
    GenerationResult,
    InvalidRequestError,
    TaskFailedError,
    TaskHandle,
    TaskInfo,
)

# On trio, the async tests run on a virtual clock.
pytestmark = pytest.mark.virtual_clock

STATUS_URL = f"{BASE_URL}/api/status"
GENERATE_URL = f"{BASE_URL}/api/generate"


def accepted(task_id: str) -> httpx.Response:
    """The answer to a submit."""
    return httpx.Response(200, json=envelope({"task_id": task_id, "status": "IN_PROGRESS"}))


def status(task_id: str, state: str, **fields: Any) -> httpx.Response:
    """The answer to a status poll."""
    return httpx.Response(200, json=envelope(task_data(task_id, state, **fields)))


@pytest.fixture
def api() -> Iterator[respx.MockRouter]:
    """respx standing in for the API at BASE_URL; every request must match a route."""
    with respx.mock(base_url=BASE_URL, assert_all_called=False) as router:
        yield router


def make_client(**options: Any) -> AsyncBanana2:
    """A client of the fake API, with millisecond polls unless told otherwise."""
    return AsyncBanana2(API_KEY, base_url=BASE_URL, **{"poll_interval": 0.001, "seed": 7, **options})


def task_count() -> int:
    """How many tasks the event loop runs now, on either backend."""
    return len(anyio.get_running_tasks())


# -- options, checked before any I/O (plain sync tests: no event loop needed to build a client) --------


def test_a_client_can_be_built_outside_an_event_loop() -> None:
    """Constructing a client needs no running event loop (module-level clients, app factories)."""
    client = make_client()
    assert repr(client) == f"<AsyncBanana2 base_url='{BASE_URL}' not started>"
    assert API_KEY not in repr(client)


BAD_OPTIONS: list[tuple[str, Any]] = [
    ("poll_interval", 0),
    ("poll_interval", -1.0),
    ("poll_interval", (3.0, 2.0)),
    ("poll_interval", (0.0, 1.0)),
    ("poll_interval", (1.0, math.inf)),
    ("poll_interval", math.nan),
    ("poll_interval", "2"),
    ("poll_interval", True),
    ("poll_interval", (1, 2, 3)),
    ("poll_interval", None),
    ("wait_timeout", 0),
    ("wait_timeout", -5.0),
    ("wait_timeout", math.inf),
    ("wait_timeout", math.nan),
    ("wait_timeout", True),
    ("wait_timeout", "600"),
    ("max_concurrent_polls", 0),
    ("max_concurrent_polls", -1),
    ("max_concurrent_polls", 2.5),
    ("max_concurrent_polls", True),
    ("max_concurrent_polls", "8"),
    ("max_concurrent_submits", 0),
    ("max_concurrent_submits", 1.0),
    ("max_concurrent_submits", None),
    ("rate_limit", 0),
    ("rate_limit", -1.0),
    ("rate_limit", math.nan),
    ("rate_limit", "5"),
    ("rate_limit", True),
    ("max_retries", -1),
    ("max_retries", 1.5),
    ("max_retries", False),
    ("not_found_grace", -1.0),
    ("not_found_grace", "10"),
    ("not_found_grace", math.nan),
]


@pytest.mark.parametrize(("option", "value"), BAD_OPTIONS, ids=[f"{name}={value!r}" for name, value in BAD_OPTIONS])
def test_bad_options_raise_invalid_request_error_naming_the_option(option: str, value: Any) -> None:
    """An out-of-range option raises InvalidRequestError (a ValueError) naming it, and sends nothing."""
    sent: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(500)

    http = httpx.AsyncClient(transport=httpx.MockTransport(record))
    with pytest.raises(InvalidRequestError) as caught:
        make_client(http_client=http, **{option: value})
    assert isinstance(caught.value, ValueError)
    assert caught.value.field == option
    assert sent == []


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("poll_interval", 2),
        ("poll_interval", (2, 3)),
        ("poll_interval", [0.5, 0.5]),
        ("wait_timeout", None),
        ("wait_timeout", 1),
        ("max_concurrent_polls", 1),
        ("max_concurrent_submits", 1_000),
        ("rate_limit", None),
        ("rate_limit", 0.5),
        ("rate_limit", 100),
        ("max_retries", 0),
        ("not_found_grace", 0),
    ],
)
def test_good_options_are_accepted(option: str, value: Any) -> None:
    """Values at the edges of each option's range are fine."""
    make_client(**{option: value})


def test_no_api_key_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an argument or BANANA2_API_KEY the client refuses to start."""
    monkeypatch.delenv("BANANA2_API_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="BANANA2_API_KEY"):
        AsyncBanana2(base_url=BASE_URL)


@pytest.mark.parametrize("key", ["   ", "sk-two words", "sk-tab\there", "sk-bell\a"])
def test_a_blank_or_garbled_api_key_is_a_configuration_error(key: str) -> None:
    """A key that is blank or holds whitespace or control characters is refused, without echoing it."""
    with pytest.raises(ConfigurationError) as caught:
        AsyncBanana2(key, base_url=BASE_URL)
    assert "sk-" not in str(caught.value)


def test_the_key_and_address_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """BANANA2_API_KEY and BANANA2_BASE_URL are used when no argument is given."""
    monkeypatch.setenv("BANANA2_API_KEY", "sk-from-env")
    monkeypatch.setenv("BANANA2_BASE_URL", "https://env.banana2.test")
    client = AsyncBanana2()
    assert str(client.base_url) == "https://env.banana2.test"


def test_the_default_address_is_the_providers() -> None:
    """Without a base URL anywhere, the client talks to https://banana2api.com."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("BANANA2_BASE_URL", raising=False)
        assert AsyncBanana2(API_KEY).base_url.host == "banana2api.com"


# -- calls checked before any I/O -------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    "arguments",
    [
        {"prompt": ""},
        {"prompt": "x" * 5_001},
        {"prompt": "a fox", "aspect_ratio": "7:5"},
        {"prompt": "a fox", "resolution": "8k"},
        {"prompt": "a fox", "output_format": "gif"},
        {"prompt": "a fox", "type": "edit"},
        {"prompt": "a fox", "images": ["ftp://x/y.png"]},
        {"prompt": "a fox", "wait_timeout": 0},
        {"prompt": "a fox", "wait_timeout": -1},
        {"prompt": "a fox", "wait_timeout": math.inf},
        {"prompt": "a fox", "wait_timeout": "soon"},
    ],
)
async def test_bad_submit_arguments_send_nothing(arguments: dict[str, Any]) -> None:
    """An invalid submit raises InvalidRequestError before any request is sent."""
    fake = FakeAPI()
    async with open_client(fake) as client:
        with pytest.raises(InvalidRequestError):
            await client.submit(**arguments)
    assert fake.log == []


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("task_id", "options"), [("", {}), ("  ", {}), (42, {}), ("t-\ud800", {}), ("t", {"wait_timeout": 0})]
)
async def test_bad_track_arguments_raise(task_id: Any, options: dict[str, Any]) -> None:
    """``track`` checks the task id and its deadline, and polls nothing when they are wrong."""
    fake = FakeAPI()
    async with open_client(fake) as client:
        with pytest.raises(InvalidRequestError):
            client.track(task_id, **options)
        assert client.statistics().tasks_watched == 0
    assert fake.log == []


@pytest.mark.anyio
@pytest.mark.parametrize("task_id", ["", "   ", None, "t-\ud800"])
async def test_bad_status_arguments_raise(task_id: Any) -> None:
    """``status`` checks the task id before asking."""
    async with make_client() as client:
        with pytest.raises(InvalidRequestError):
            await client.status(task_id)


# -- the calls --------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_generate_submits_and_waits_for_the_result(api: respx.MockRouter) -> None:
    """``generate`` sends the options that were set, polls IN_PROGRESS -> SUCCESS, returns the result."""
    submit = api.post("/api/generate").mock(return_value=accepted("g-1"))
    poll = api.get("/api/status", params={"task_id": "g-1"}).mock(
        side_effect=[status("g-1", "IN_PROGRESS"), status("g-1", "IN_PROGRESS"), status("g-1", "SUCCESS")]
    )
    async with make_client() as client:
        result = await client.generate("a fox", aspect_ratio="16:9", resolution=cast(Any, "2K"))
    assert isinstance(result, GenerationResult)
    assert result.task_id == "g-1"
    assert result.images == [image_url("g-1")]
    assert submit.call_count == 1
    assert poll.call_count == 3
    body = submit.calls.last.request.content
    assert httpx.Response(200, content=body).json() == {"prompt": "a fox", "aspect_ratio": "16:9", "resolution": "2k"}
    assert submit.calls.last.request.headers["Authorization"] == f"Bearer {API_KEY}"


@pytest.mark.anyio
async def test_generate_raises_the_tasks_failure(api: respx.MockRouter) -> None:
    """``generate`` raises TaskFailedError when the task fails."""
    api.post("/api/generate").mock(return_value=accepted("g-1"))
    api.get("/api/status").mock(side_effect=[status("g-1", "IN_PROGRESS"), status("g-1", "FAILED", error="nope")])
    async with make_client() as client:
        with pytest.raises(TaskFailedError, match="nope"):
            await client.generate("a fox")


@pytest.mark.anyio
async def test_edit_sends_an_edit_with_its_images(api: respx.MockRouter) -> None:
    """``edit`` sends ``type: edit`` with the reference images and waits for the result."""
    submit = api.post("/api/generate").mock(return_value=accepted("e-1"))
    api.get("/api/status").mock(side_effect=[status("e-1", "IN_PROGRESS"), status("e-1", "SUCCESS")])
    images = ["https://example.com/cat.jpg", "https://example.com/dog.jpg"]
    async with make_client() as client:
        result = await client.edit("make them tigers", images=images, output_format="jpeg")
    assert result.task_id == "e-1"
    sent = httpx.Response(200, content=submit.calls.last.request.content).json()
    assert sent == {"type": "edit", "prompt": "make them tigers", "images": images, "output_format": "jpeg"}


@pytest.mark.anyio
async def test_submit_detects_an_edit_from_its_images(api: respx.MockRouter) -> None:
    """Images without a type make an edit, and the handle remembers its request."""
    api.post("/api/generate").mock(return_value=accepted("e-2"))
    api.get("/api/status").mock(return_value=status("e-2", "SUCCESS"))
    async with make_client() as client:
        handle = await client.submit("night", images=["https://example.com/a.png"])
        await handle
    assert handle.request is not None
    assert handle.request.task_type == "edit"


@pytest.mark.anyio
async def test_submit_request_takes_a_prepared_request(api: respx.MockRouter) -> None:
    """``submit_request`` sends a prepared GenerationRequest; anything else is an InvalidRequestError."""
    submit = api.post("/api/generate").mock(return_value=accepted("r-1"))
    api.get("/api/status").mock(return_value=status("r-1", "SUCCESS"))
    request = GenerationRequest(prompt="a fox", output_format="png")
    async with make_client() as client:
        with pytest.raises(InvalidRequestError):
            await client.submit_request(cast(Any, {"prompt": "a fox"}))
        assert submit.call_count == 0
        handle = await client.submit_request(request, wait_timeout=None)
        assert handle.request is request
        assert handle.deadline is None
        await handle
    assert submit.call_count == 1


@pytest.mark.anyio
async def test_status_asks_once_without_entering_the_client(api: respx.MockRouter) -> None:
    """``status`` sends one GET and returns the task as the server sees it; no context needed."""
    route = api.get("/api/status", params={"task_id": "s-1"}).mock(return_value=status("s-1", "IN_PROGRESS"))
    client = make_client()
    try:
        info = await client.status("s-1")
    finally:
        await client.aclose()
    assert isinstance(info, TaskInfo)
    assert info.task_id == "s-1"
    assert info.status == "IN_PROGRESS"
    assert info.state == "running"
    assert route.call_count == 1
    assert client.http_client.is_closed


@pytest.mark.anyio
async def test_status_inside_the_client_does_not_register_a_poll(api: respx.MockRouter) -> None:
    """``status`` is a one-off question: the poller does not start watching the task."""
    route = api.get("/api/status").mock(return_value=status("s-1", "SUCCESS"))
    async with make_client() as client:
        info = await client.status("s-1")
        assert info.images == [image_url("s-1")]
        assert client.statistics().tasks_watched == 0
    assert route.call_count == 1


@pytest.mark.anyio
async def test_track_watches_an_existing_task(api: respx.MockRouter) -> None:
    """``track`` hands back a handle at once, without sending anything until the poller polls."""
    route = api.get("/api/status").mock(side_effect=[status("k-1", "PENDING"), status("k-1", "SUCCESS")])
    async with make_client() as client:
        handle = client.track("k-1")
        assert isinstance(handle, TaskHandle)
        assert client.statistics().tasks_watched == 1
        assert (await handle).images == [image_url("k-1")]
    assert route.call_count == 2


@pytest.mark.anyio
async def test_wait_timeout_none_means_no_deadline() -> None:
    """``submit(wait_timeout=None)`` outlives the client's default deadline and gets the result."""
    fake = FakeAPI(lambda _: ("IN_PROGRESS",) * 5 + ("SUCCESS",))
    async with open_client(fake, poll_interval=0.01, wait_timeout=0.001) as client:
        patient = await client.submit("a fox", wait_timeout=None)
        hasty = await client.submit("a fox")
        assert patient.deadline is None
        result = await patient
        assert hasty.done()
    # Six polls at least 10 ms apart: far past the default deadline of 1 ms.
    assert result.task_id == patient.task_id
    assert fake.polls[patient.task_id] == 6


@pytest.mark.anyio
async def test_a_client_wide_no_deadline() -> None:
    """``AsyncBanana2(wait_timeout=None)`` gives every handle no deadline unless the call sets one."""
    fake = FakeAPI(lambda _: ("IN_PROGRESS",))
    async with open_client(fake, wait_timeout=None) as client:
        assert (await client.submit("a fox")).deadline is None
        assert client.track("t").deadline is None
        assert client.track("u", wait_timeout=9.0).deadline is not None


# -- statistics -------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_statistics_follow_what_the_client_does() -> None:
    """Each figure of ``statistics()`` moves with what it counts; a snapshot never changes afterwards."""
    fake = FakeAPI(lambda _: ("IN_PROGRESS",))
    fake.submit_replies = [error(503, "busy", **{"Retry-After": "0"})]
    async with open_client(fake, poll_interval=0.01, max_concurrent_polls=2, wait_timeout=None) as client:
        idle = client.statistics()
        assert isinstance(idle, ClientStatistics)
        assert idle == client.statistics()
        assert (idle.tasks_watched, idle.handles_pending, idle.polls_sent, idle.poll_workers) == (0, 0, 0, 0)
        assert (idle.submits_sent, idle.retries, idle.rate_limit_pauses, idle.pause_remaining) == (0, 0, 0, 0.0)

        # A submit refused with a 503 and sent again; a second handle on its task.
        handle = await client.submit("a fox")
        fake.script(handle.task_id, "IN_PROGRESS", error(429, "slow down", **{"Retry-After": "0.2"}), "SUCCESS")
        client.track(handle.task_id)
        submitted = client.statistics()
        assert (submitted.submits_sent, submitted.retries) == (2, 1)
        assert (submitted.tasks_watched, submitted.handles_pending, submitted.polls_sent) == (1, 2, 0)

        # Its second poll gets a 429: every request pauses.
        await wait_until(lambda: client.statistics().rate_limit_pauses == 1)
        paused = client.statistics()
        assert paused.polls_sent == fake.status_requests == 2
        assert 0 < paused.pause_remaining <= 0.2
        assert paused.poll_workers == 1
        await handle
        settled = client.statistics()
        assert (settled.tasks_watched, settled.handles_pending, settled.pause_remaining) == (0, 0, 0.0)
        assert settled.polls_sent == fake.status_requests == 3

        # Three polls due at once with one idle worker start one more, up to max_concurrent_polls.
        await anyio.wait_all_tasks_blocked()
        fake.script("a", "SUCCESS")
        fake.script("b", "SUCCESS")
        fake.script("c", "SUCCESS")
        for done in [client.track(task_id) for task_id in "abc"]:
            await done
        final = client.statistics()
        assert (final.poll_workers, final.polls_sent, final.submits_sent, final.retries) == (2, 6, 2, 1)
        assert final.rate_limit_pauses == 1

    # A snapshot is a frozen value: what it said then, whatever the client did since.
    assert (paused.polls_sent, paused.rate_limit_pauses, idle.submits_sent) == (2, 1, 0)
    with pytest.raises(AttributeError):
        cast(Any, paused).polls_sent = 0
    assert client.statistics() == final


# -- lifecycle --------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_calls_that_need_the_poller_refuse_before_the_client_is_entered() -> None:
    """``submit`` and ``track`` outside ``async with`` raise RuntimeError saying how to use the client."""
    client = make_client()
    with pytest.raises(RuntimeError, match="async with"):
        await client.submit("a fox")
    with pytest.raises(RuntimeError, match="async with"):
        client.track("t")
    await client.aclose()


@pytest.mark.anyio
async def test_leaving_fails_pending_handles_and_leaves_no_task_or_socket() -> None:
    """Leaving ``async with``: pending handles raise ClientClosedError, waiters too; no task, no open client."""
    fake = FakeAPI(lambda _: ("IN_PROGRESS",))
    errors: list[ClientClosedError] = []
    before = task_count()
    with respx.mock(base_url=BASE_URL) as api:
        api.route().mock(side_effect=fake)
        async with anyio.create_task_group() as group, make_client() as client:
            handles = [await client.submit(f"fox {n}") for n in range(3)] + [client.track("t")]

            async def wait(handle: TaskHandle) -> None:
                try:
                    await handle
                except ClientClosedError as exc:
                    errors.append(exc)

            for handle in handles:
                group.start_soon(wait, handle)
            await wait_until(lambda: all(handle.waiting for handle in handles))
            assert task_count() > before
    assert len(errors) == 4
    assert {exc.task_id for exc in errors} == {handle.task_id for handle in handles}
    assert all(isinstance(handle.exception(), ClientClosedError) for handle in handles)
    assert client.statistics().tasks_watched == 0
    assert task_count() == before
    assert client.http_client.is_closed
    assert repr(client).endswith("closed>")


@pytest.mark.anyio
async def test_aclose_inside_the_block_is_idempotent() -> None:
    """``aclose()`` may be called inside the block and again by leaving it."""
    fake = FakeAPI(lambda _: ("IN_PROGRESS",))
    async with open_client(fake) as client:
        handle = client.track("t")
        await client.aclose()
        assert isinstance(handle.exception(), ClientClosedError)
        await client.aclose()
        with pytest.raises(ClientClosedError):
            await handle


@pytest.mark.anyio
async def test_a_callers_http_client_is_left_open() -> None:
    """The client closes an httpx client it made, never one it was given."""
    fake = FakeAPI()
    async with httpx.AsyncClient(transport=fake.transport()) as http:
        async with AsyncBanana2(API_KEY, base_url=BASE_URL, http_client=http) as client:
            assert client.http_client is http
        assert not http.is_closed


@pytest.mark.anyio
async def test_a_callers_http_client_sees_every_request() -> None:
    """Each submit and poll goes through a caller's httpx client: its event hooks hear every one."""
    fake = FakeAPI(lambda _: ("IN_PROGRESS", "SUCCESS"))
    heard: list[str] = []

    async def hook(request: httpx.Request) -> None:
        heard.append(request.method)

    async with open_client(fake, callers_client=True) as client:
        client.http_client.event_hooks["request"].append(hook)
        await client.generate("a fox")
        await client.track("t")
    assert heard == ["POST", "GET", "GET", "GET", "GET"]
    assert fake.status_requests == 4


@pytest.mark.anyio
async def test_event_hooks_given_to_the_clients_own_http_client_hear_every_request() -> None:
    """Hooks added later to the SDK's own httpx client (``client.http_client``) hear its polls too."""
    fake = FakeAPI(lambda _: ("IN_PROGRESS", "SUCCESS"))
    heard: list[str] = []

    async def hook(request: httpx.Request) -> None:
        heard.append(request.method)

    async with open_client(fake) as client:
        client.http_client.event_hooks["request"].append(hook)
        await client.generate("a fox")
    assert heard == ["POST", "GET", "GET"]


@pytest.mark.anyio
async def test_an_error_in_the_block_propagates_unwrapped() -> None:
    """An exception raised in the body comes out as itself, not inside an ExceptionGroup."""
    fake = FakeAPI(lambda _: ("IN_PROGRESS",))
    before = task_count()
    clients: list[AsyncBanana2] = []

    async def fail_inside() -> None:
        async with open_client(fake) as client:
            clients.append(client)
            client.track("t")
            await wait_until(lambda: fake.polls["t"] >= 1)
            raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        await fail_inside()
    assert task_count() == before
    assert clients[0].statistics().tasks_watched == 0


@pytest.mark.anyio
async def test_cancelling_the_block_stops_the_client() -> None:
    """Cancelling the code inside ``async with`` from outside still closes the client cleanly."""
    fake = FakeAPI(lambda _: ("IN_PROGRESS",))
    before = task_count()
    with anyio.CancelScope() as outer:
        async with open_client(fake) as client:
            handle = client.track("t")
            await wait_until(lambda: fake.polls["t"] >= 2)
            outer.cancel()
            await anyio.sleep(10)
    assert outer.cancelled_caught
    assert isinstance(handle.exception(), ClientClosedError)
    assert task_count() == before


@pytest.mark.anyio
async def test_after_close_calls_raise_and_handles_fail() -> None:
    """After close: submit, track and status raise RuntimeError; a released handle awaited fails at once."""
    fake = FakeAPI(lambda _: ("IN_PROGRESS",))
    async with open_client(fake) as client:
        released = client.track("t")
        with anyio.move_on_after(0.005):
            await released
        assert client.statistics().tasks_watched == 0
    sent = len(fake.log)
    with pytest.raises(RuntimeError, match="closed"):
        await client.submit("a fox")
    with pytest.raises(RuntimeError, match="closed"):
        client.track("t")
    with pytest.raises(RuntimeError, match="closed"):
        await client.status("t")
    with pytest.raises(ClientClosedError):
        await released
    assert len(fake.log) == sent


@pytest.mark.anyio
async def test_a_client_is_entered_once() -> None:
    """Entering an open client again, or a closed one, raises RuntimeError."""
    client = make_client()
    async with client:
        assert repr(client).endswith("open>")
        with pytest.raises(RuntimeError, match="is open"):
            await client.__aenter__()
    with pytest.raises(RuntimeError, match="is closed"):
        await client.__aenter__()


# -- as_completed -----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_as_completed_yields_in_completion_order_including_failures() -> None:
    """Handles come out in the order their tasks finish, failures included, each once."""
    fake = FakeAPI(lambda _: ("IN_PROGRESS",))
    order = ["c", "a", "d", "b"]
    outcome = {"a": "SUCCESS", "b": "SUCCESS", "c": "FAILED", "d": "SUCCESS"}
    async with open_client(fake) as client:
        handles = [client.track(task_id) for task_id in "abcd"]
        fake.script(order[0], outcome[order[0]])
        seen: list[str] = []
        async for done in client.as_completed(handles):
            seen.append(done.task_id)
            assert done.done()
            if len(seen) < len(order):
                fake.script(order[len(seen)], outcome[order[len(seen)]])
    assert seen == order
    failed = handles[2]
    assert isinstance(failed.exception(), TaskFailedError)
    assert all(handle.exception() is None for handle in handles if handle is not failed)


@pytest.mark.anyio
async def test_as_completed_yields_settled_handles_and_skips_duplicates() -> None:
    """Already settled handles come out at once; a handle passed twice comes out once; none is fine."""
    fake = FakeAPI(lambda _: ("IN_PROGRESS", "SUCCESS"))
    async with open_client(fake) as client:
        first = client.track("a")
        await first
        second = client.track("b")
        seen = [done async for done in client.as_completed([first, second, first])]
        assert seen == [first, second]
        assert [done async for done in client.as_completed([])] == []


@pytest.mark.anyio
async def test_leaving_as_completed_early_releases_the_handles() -> None:
    """Breaking out of ``as_completed`` used as a context manager stops polling the handles nobody awaits."""
    fake = FakeAPI(lambda _: ("IN_PROGRESS",))
    fake.script("a", "SUCCESS")
    async with open_client(fake) as client:
        handles = [client.track(task_id) for task_id in "abc"]
        async with client.as_completed(handles) as results:
            async for done in results:
                assert done.task_id == "a"
                break
        assert client.statistics().tasks_watched == 0
        assert not any(handle.waiting for handle in handles)
        polled = dict(fake.polls)
        clock = client.track("clock")
        await wait_until(lambda: fake.polls["clock"] >= 10)
        assert fake.polls["b"] <= polled["b"] + 1
        assert fake.polls["c"] <= polled["c"] + 1
        assert not clock.done()
        # Awaiting a released handle picks it up again.
        fake.script("b", "SUCCESS")
        assert (await handles[1]).task_id == "b"


@pytest.mark.anyio
async def test_breaking_out_of_an_unclosed_as_completed_warns_about_nothing() -> None:
    """A bare ``break`` leaves nothing to finalise (no ResourceWarning); its handles stay polled till they settle."""
    fake = FakeAPI(lambda _: ("IN_PROGRESS",))
    fake.script("a", "SUCCESS")
    async with open_client(fake) as client:
        handles = [client.track(task_id) for task_id in "ab"]
        async for done in client.as_completed(handles):
            assert done.task_id == "a"
            break
        gc.collect()
        assert client.statistics().tasks_watched == 1
        fake.script("b", "SUCCESS")
        assert (await handles[1]).task_id == "b"


@pytest.mark.anyio
async def test_as_completed_with_aclosing_lets_go_too() -> None:
    """``contextlib.aclosing`` closes an ``as_completed`` loop like its own context manager does."""
    fake = FakeAPI(lambda _: ("IN_PROGRESS",))
    async with open_client(fake) as client:
        handles = [client.track(task_id) for task_id in "ab"]
        async with contextlib.aclosing(client.as_completed(handles)) as results:
            with anyio.move_on_after(0.01):
                async for _ in results:
                    pass
        assert client.statistics().tasks_watched == 0
        assert [done async for done in results] == []


@pytest.mark.anyio
async def test_leaving_as_completed_early_keeps_handles_others_await() -> None:
    """A handle someone else awaits stays polled when an ``as_completed`` loop over it ends early."""
    fake = FakeAPI(lambda _: ("IN_PROGRESS",))
    fake.script("a", "SUCCESS")
    async with open_client(fake) as client:
        handles = [client.track(task_id) for task_id in "ab"]
        async with anyio.create_task_group() as group:
            group.start_soon(handles[1].result)
            await wait_until(lambda: handles[1].waiting)
            async with client.as_completed(handles) as results:
                async for _ in results:
                    break
            assert client.statistics().tasks_watched == 1
            fake.script("b", "SUCCESS")
        assert handles[1].result_nowait().task_id == "b"


@pytest.mark.anyio
async def test_as_completed_with_a_submit_that_errors(api: respx.MockRouter) -> None:
    """A poll error (a 404 after the grace) comes out of ``as_completed`` like any other outcome."""
    api.post("/api/generate").mock(side_effect=[accepted("x-1"), accepted("x-2")])
    api.get("/api/status", params={"task_id": "x-1"}).mock(return_value=error(404, "gone"))
    api.get("/api/status", params={"task_id": "x-2"}).mock(return_value=status("x-2", "SUCCESS"))
    async with make_client(not_found_grace=0) as client:
        handles = [await client.submit("one"), await client.submit("two")]
        outcomes = {done.task_id: done.exception() async for done in client.as_completed(handles)}
    assert outcomes["x-2"] is None
    assert outcomes["x-1"] is not None
    assert "gone" in str(outcomes["x-1"])
