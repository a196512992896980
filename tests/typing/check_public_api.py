"""Type-checked, never run: the public API as users write it, with the types they should see.

mypy --strict and pyright check this file (nox -s typecheck, nox -s verifytypes);
a wrong annotation in the package shows up here as a type error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import httpx
from typing_extensions import assert_type

import banana2_async
from banana2_async import (
    NOT_GIVEN,
    APIStatusError,
    AsyncBanana2,
    Banana2,
    Banana2Error,
    Batch,
    BatchEvent,
    BatchOutcome,
    BatchPlan,
    GenerationRequest,
    GenerationResult,
    InvalidRequestError,
    NotGiven,
    RateLimitError,
    SubmissionUncertainError,
    SyncBatch,
    SyncTaskHandle,
    TaskFailedError,
    TaskHandle,
    TaskInfo,
    TaskTimeoutError,
)
from banana2_async.testing import Fault, ManualClock, Simulator, SimulatorStats


async def async_client() -> None:
    async with AsyncBanana2(poll_interval=(2.0, 3.0), wait_timeout=None, rate_limit=5.0) as client:
        assert_type(client, AsyncBanana2)
        assert_type(client.base_url, httpx.URL)
        handle = await client.submit("a prompt", aspect_ratio="16:9", resolution="2k", output_format="jpeg")
        assert_type(handle, TaskHandle)
        assert_type(handle.task_id, str)
        assert_type(handle.request, GenerationRequest | None)
        assert_type(handle.done(), bool)
        assert_type(handle.exception(), BaseException | None)
        result = await handle
        assert_type(result, GenerationResult)
        assert_type(result.images, list[str])
        assert_type(result.consumed_credits, int | None)
        assert_type(await handle.result(), GenerationResult)
        assert_type(handle.result_nowait(), GenerationResult)

        edited = await client.edit("make it night", images=["https://example.com/a.png"])
        assert_type(edited, GenerationResult)
        generated = await client.generate("a prompt", wait_timeout=NOT_GIVEN)
        assert_type(generated, GenerationResult)
        request = GenerationRequest(prompt="a prompt", images=("https://example.com/a.png",))
        assert_type(request.task_type, Literal["text-to-image", "edit"])
        assert_type(request.credits, int)
        assert_type(await client.submit_request(request), TaskHandle)

        info = await client.status(handle.task_id)
        assert_type(info, TaskInfo)
        assert_type(info.status, str | None)
        assert_type(info.images, list[str])
        tracked = client.track(handle.task_id, wait_timeout=30.0)
        async for done in client.as_completed([handle, tracked]):
            assert_type(done, TaskHandle)

        paths = await client.download(result, "images")
        assert_type(paths, list[Path])
        run = client.batch(["a prompt", request], concurrency=4, journal="run.db", max_credits=100)
        assert_type(run, Batch)
        assert_type(await run.dry_run(), BatchPlan)
        async for outcome in run:
            assert_type(outcome, BatchOutcome)
            assert_type(outcome.ok, bool)
            assert_type(outcome.files, tuple[Path, ...])
        async for event in client.batch(["a prompt"]).events():
            assert_type(event, BatchEvent)


def blocking_client() -> None:
    with Banana2(api_key="sk-...", backend="trio") as client:
        assert_type(client, Banana2)
        handle = client.submit("a prompt", resolution="4k")
        assert_type(handle, SyncTaskHandle)
        assert_type(handle.result(timeout=10.0), GenerationResult)
        assert_type(handle.async_handle, TaskHandle)
        assert_type(client.generate("a prompt"), GenerationResult)
        assert_type(client.edit("a prompt", images=["https://example.com/a.png"]), GenerationResult)
        assert_type(client.status("task"), TaskInfo)
        assert_type(client.track("task"), SyncTaskHandle)
        for done in client.as_completed([handle]):
            assert_type(done, SyncTaskHandle)
        assert_type(client.async_client, AsyncBanana2)
        assert_type(client.download(handle.result(), "images"), list[Path])
        with client.batch(["a prompt"], dest_dir="images") as run:
            assert_type(run, SyncBatch)
            assert_type(run.dry_run(), BatchPlan)
            assert_type(run.plan, BatchPlan | None)
            for outcome in run:
                assert_type(outcome, BatchOutcome)
        for event in client.batch(["a prompt"]).events():
            assert_type(event, BatchEvent)
    client.close()


def errors(exc: Banana2Error) -> None:
    if isinstance(exc, APIStatusError):
        assert_type(exc.status_code, int)
        assert_type(exc.request_id, str | None)
    if isinstance(exc, RateLimitError):
        assert_type(exc.retry_after, float | None)
    if isinstance(exc, (TaskFailedError, TaskTimeoutError)):
        assert_type(exc.task_id, str)
    if isinstance(exc, SubmissionUncertainError):
        assert_type(exc.request, GenerationRequest)
    if isinstance(exc, InvalidRequestError):
        assert_type(exc.field, str | None)
        value_error: ValueError = exc
        del value_error


def sentinel(value: float | NotGiven | None) -> None:
    if isinstance(value, NotGiven):
        assert_type(value, NotGiven)
    assert_type(banana2_async.__version__, str)


def simulator() -> None:
    clock = ManualClock()
    sim = Simulator(speed=1000, seed=0, clock=clock)
    sim.inject(Fault.rate_limit(2.0), on="status", times=1)
    assert_type(sim.stats, SimulatorStats)
    assert_type(sim.stats.count("status"), int)
    assert_type(sim.stats.polls("task"), tuple[float, ...])
    clock.advance(1.0)
