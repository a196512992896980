"""`BatchClient`, all a bulk run uses of its client: a run works against any object that offers it."""

from __future__ import annotations

import os
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from anyio.abc import TaskGroup

from banana2_async import AsyncBanana2, Batch, BatchEvent, GenerationRequest, GenerationResult, TaskHandle
from banana2_async._types import NotGiven
from banana2_async.testing import ManualClock, Simulator

pytestmark = pytest.mark.anyio


@pytest.fixture
def sim() -> Simulator:
    """A fast, seeded simulator."""
    return Simulator(speed=1000, seed=8)


class RecordingClient:
    """A `BatchClient` over the public API of a client, in a task group of its own, recording every call.

    Polls reach the run's listeners only when the test calls `answer_poll`.
    """

    def __init__(self, client: AsyncBanana2, task_group: TaskGroup) -> None:
        self.calls: list[str] = []
        self.listeners: list[Callable[[str], object]] = []
        self.closed = False
        self.retries_uncertain_submits = False
        self._client = client
        self._task_group = task_group

    @property
    def base_url(self) -> httpx.URL:
        """The client's address."""
        return self._client.base_url

    def require_open(self) -> None:
        """Refuse a run once this double is closed."""
        self.calls.append("require_open")
        if self.closed:
            raise RuntimeError("closed")

    def start_soon(self, function: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        """Run ``function`` in this double's task group."""
        self.calls.append("start_soon")
        self._task_group.start_soon(function, *args)

    def on_poll(self, listener: Callable[[str], object]) -> Callable[[], None]:
        """Keep ``listener`` until the run lets it go."""
        self.calls.append("on_poll")
        self.listeners.append(listener)

        def stop() -> None:
            self.calls.append("stop listening")
            self.listeners.remove(listener)

        return stop

    async def submit_request(self, request: GenerationRequest, *, wait_timeout: float | NotGiven | None) -> TaskHandle:
        """Submit through the client's public API."""
        self.calls.append(f"submit {request.prompt}")
        return await self._client.submit_request(request, wait_timeout=wait_timeout)

    def track(self, task_id: str, *, wait_timeout: float | NotGiven | None) -> TaskHandle:
        """Track through the client's public API."""
        self.calls.append("track")
        return self._client.track(task_id, wait_timeout=wait_timeout)

    async def download(self, result: GenerationResult, dest_dir: str | os.PathLike[str]) -> list[Path]:
        """Download through the client's public API."""
        self.calls.append("download")
        return await self._client.download(result, dest_dir)

    def answer_poll(self, task_id: str) -> None:
        """Tell the run's listeners that a poll of ``task_id`` was answered."""
        for listener in list(self.listeners):
            listener(task_id)


def _calls(double: RecordingClient) -> list[str]:
    # How often a run starts work in the client's task group is its own business; that it does is not.
    assert "start_soon" in double.calls
    return [call for call in double.calls if call not in ("start_soon", "require_open")]


async def test_a_run_uses_only_its_batch_client(tmp_path: Path) -> None:
    """A run starts in the client's task group, listens to polls while it runs, submits and downloads through it."""
    clock = ManualClock()
    sim = Simulator(speed=1000, seed=5, clock=clock)
    events: list[BatchEvent] = []
    async with sim.client() as client, anyio.create_task_group() as task_group:
        double = RecordingClient(client, task_group)
        async for event in Batch(double, ["a cat", "a dog"], concurrency=1, dest_dir=tmp_path).events():
            events.append(event)
            if event.kind == "submitted":
                assert event.task_id is not None
                double.answer_poll("a task of another run")
                double.answer_poll(event.task_id)
            elif event.kind == "polled":
                # The task can finish only now: the poll above is reported while it is in flight.
                clock.advance(1.0)
    assert [event.kind for event in events] == ["submitted", "polled", "succeeded"] * 2
    assert all(event.outcome.files for event in events if event.outcome is not None)
    assert _calls(double) == ["on_poll", "submit a cat", "download", "submit a dog", "download", "stop listening"]
    assert double.listeners == []


async def test_a_closed_batch_client_stops_new_submits() -> None:
    """Once its client says it is closed, a run sends nothing more: rows not sent end unsubmitted."""
    clock = ManualClock()
    sim = Simulator(speed=1000, seed=7, clock=clock)
    events: list[BatchEvent] = []
    async with sim.client() as client, anyio.create_task_group() as task_group:
        double = RecordingClient(client, task_group)
        async for event in Batch(double, ["a", "b", "c"], concurrency=1).events():
            events.append(event)
            if event.kind == "submitted":
                double.closed = True
                clock.advance(1.0)
    outcomes = [event.outcome for event in events if event.outcome is not None]
    assert [(outcome.index, outcome.status) for outcome in outcomes] == [
        (0, "succeeded"),
        (1, "unsubmitted"),
        (2, "unsubmitted"),
    ]
    assert isinstance(outcomes[1].error, RuntimeError)
    assert _calls(double) == ["on_poll", "submit a", "stop listening"]


async def test_a_rerun_tracks_its_tasks_through_the_batch_client(tmp_path: Path) -> None:
    """A task a stopped run left in its journal is tracked again through the client the next run is given."""
    clock = ManualClock()
    sim = Simulator(speed=1000, seed=6, clock=clock)
    journal = tmp_path / "run.db"
    async with sim.client() as client, anyio.create_task_group() as task_group:
        double = RecordingClient(client, task_group)
        async with Batch(double, ["a fox"], journal=journal) as first:
            async for event in first.events():
                if event.kind == "submitted":
                    break
        again = RecordingClient(client, task_group)
        async for event in Batch(again, ["a fox"], journal=journal).events():
            if event.kind == "tracked":
                clock.advance(1.0)
            assert event.outcome is None or event.outcome.ok
    assert _calls(again) == ["on_poll", "track", "stop listening"]
    assert sim.stats.tasks_created == 1


async def test_an_async_banana2_given_to_batch_is_refused(sim: Simulator) -> None:
    """``Batch(client, ...)`` with the client itself is refused, pointing at ``client.batch(...)``, the way."""
    async with sim.client() as client:
        with pytest.raises(TypeError, match=r"client\.batch"):
            Batch(client, ["a"], keys=["one"])  # type: ignore[arg-type]
