"""TaskHandle: awaitable, set once, shared by many waiters, with callbacks and a plain-spoken repr."""

from __future__ import annotations

import logging

import anyio
import pytest
from _fake_api import FakeAPI, image_url, open_client, task_data, wait_until

from banana2_async import GenerationRequest, GenerationResult, TaskFailedError, TaskHandle

pytestmark = [pytest.mark.anyio, pytest.mark.virtual_clock]


async def test_a_pending_handle() -> None:
    """While pending: not done, no exception, ``result_nowait`` raises RuntimeError, the repr says so."""
    fake = FakeAPI(lambda _: ("IN_PROGRESS",))
    async with open_client(fake) as client:
        handle = client.track("t-1")
        assert handle.task_id == "t-1"
        assert not handle.done()
        assert handle.exception() is None
        assert not handle.waiting
        with pytest.raises(RuntimeError, match="t-1 is still pending"):
            handle.result_nowait()
        assert repr(handle) == "<TaskHandle 't-1' pending>"


async def test_a_succeeded_handle() -> None:
    """Once it succeeded: done, no exception, the same result from await, ``result()`` and ``result_nowait``."""
    fake = FakeAPI(lambda _: ("IN_PROGRESS", "SUCCESS"))
    async with open_client(fake) as client:
        handle = client.track("t-1")
        result = await handle
    assert isinstance(result, GenerationResult)
    assert result.task_id == "t-1"
    assert result.images == [image_url("t-1")]
    assert result.consumed_credits == 20
    assert result.info.status == "SUCCESS"
    assert handle.done()
    assert handle.exception() is None
    assert handle.result_nowait() is result
    assert await handle is result
    assert await handle.result() is result
    assert repr(handle) == "<TaskHandle 't-1' succeeded>"


async def test_a_failed_handle() -> None:
    """Once it failed: done, its exception, raised again by every await and by ``result_nowait``."""
    fake = FakeAPI()
    fake.script("t-1", task_data("t-1", "FAILED", error="nsfw"))
    async with open_client(fake) as client:
        handle = client.track("t-1")
        with pytest.raises(TaskFailedError) as first:
            await handle
    assert handle.done()
    assert handle.exception() is first.value
    with pytest.raises(TaskFailedError) as again:
        await handle
    assert again.value is first.value
    with pytest.raises(TaskFailedError):
        handle.result_nowait()
    assert repr(handle) == "<TaskHandle 't-1' failed: TaskFailedError>"


async def test_many_waiters_get_the_same_result() -> None:
    """A hundred coroutines awaiting one handle all get the one result; the task is polled as for one."""
    fake = FakeAPI(lambda _: ("IN_PROGRESS", "IN_PROGRESS", "SUCCESS"))
    results: list[GenerationResult] = []
    async with open_client(fake) as client:
        handle = client.track("t")

        async def wait() -> None:
            results.append(await handle)

        async with anyio.create_task_group() as group:
            for _ in range(100):
                group.start_soon(wait)
            await wait_until(lambda: handle.waiting or handle.done())
    assert len(results) == 100
    assert all(result is results[0] for result in results)
    assert fake.polls["t"] == 3


async def test_a_handle_settles_without_anyone_awaiting_it() -> None:
    """A submitted handle is polled to the end even if nobody awaits it; callbacks see it settle."""
    fake = FakeAPI(lambda _: ("IN_PROGRESS", "SUCCESS"))
    seen: list[TaskHandle] = []
    async with open_client(fake) as client:
        handle = await client.submit("a fox")
        handle.add_done_callback(seen.append)
        await wait_until(handle.done)
    assert seen == [handle]
    assert handle.result_nowait().task_id == handle.task_id


async def test_done_callbacks_run_once_in_order_and_at_once_when_already_done() -> None:
    """Callbacks run once when the handle settles, in the order added; added after, they run at once."""
    fake = FakeAPI(lambda _: ("IN_PROGRESS", "SUCCESS"))
    calls: list[str] = []
    async with open_client(fake) as client:
        handle = client.track("t")
        handle.add_done_callback(lambda _: calls.append("first"))
        handle.add_done_callback(lambda _: calls.append("second"))
        await handle
        assert calls == ["first", "second"]
        handle.add_done_callback(lambda done: calls.append(f"late {done.task_id}"))
        assert calls == ["first", "second", "late t"]
        await handle
    assert calls == ["first", "second", "late t"]


async def test_a_removed_callback_is_not_called() -> None:
    """``remove_done_callback`` forgets a callback; removing an unknown one is harmless."""
    fake = FakeAPI(lambda _: ("IN_PROGRESS", "SUCCESS"))
    calls: list[TaskHandle] = []
    async with open_client(fake) as client:
        handle = client.track("t")
        handle.remove_done_callback(calls.append)
        handle.add_done_callback(calls.append)
        handle.remove_done_callback(calls.append)
        handle.remove_done_callback(print)
        await handle
    assert calls == []


async def test_a_raising_callback_is_logged_and_harms_nothing(caplog: pytest.LogCaptureFixture) -> None:
    """A callback that raises is logged; the other callbacks, the waiters and the poller carry on."""
    caplog.set_level(logging.ERROR, logger="banana2_async")
    fake = FakeAPI(lambda _: ("IN_PROGRESS", "SUCCESS"))
    calls: list[TaskHandle] = []

    def broken(_: TaskHandle) -> None:
        raise ValueError("a broken callback")

    async with open_client(fake) as client:
        handle = client.track("t")
        handle.add_done_callback(broken)
        handle.add_done_callback(calls.append)
        result = await handle
        assert (await client.track("u")).task_id == "u"
    assert result.task_id == "t"
    assert calls == [handle]
    (record,) = caplog.records
    assert "t" in record.getMessage()
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], ValueError)


async def test_waiting_counts_the_coroutines_awaiting_the_handle() -> None:
    """``waiting`` is true exactly while some coroutine awaits the handle."""
    fake = FakeAPI(lambda _: ("IN_PROGRESS",))
    async with open_client(fake) as client:
        handle = client.track("t")
        assert not handle.waiting
        async with anyio.create_task_group() as group:
            group.start_soon(handle.result)
            group.start_soon(handle.result)
            await wait_until(lambda: handle.waiting)
            group.cancel_scope.cancel()
        assert not handle.waiting
        assert not handle.done()


async def test_a_submitted_handle_carries_its_request_and_deadline() -> None:
    """``request`` is what was submitted; ``deadline`` follows wait_timeout, ``None`` for no deadline."""
    fake = FakeAPI(lambda _: ("IN_PROGRESS",))
    async with open_client(fake, wait_timeout=100.0) as client:
        now = anyio.current_time()
        handle = await client.submit("a fox", aspect_ratio="16:9")
        forever = await client.submit("a fox", wait_timeout=None)
        tracked = client.track("t", wait_timeout=5.0)
    assert handle.request == GenerationRequest(prompt="a fox", aspect_ratio="16:9")
    assert handle.deadline is not None
    assert now + 100.0 <= handle.deadline <= anyio.current_time() + 100.0
    assert forever.deadline is None
    assert tracked.request is None
    assert tracked.deadline is not None
    assert tracked.deadline <= anyio.current_time() + 5.0
