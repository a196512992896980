"""The FastAPI example backend (examples/fastapi_app), through httpx's ASGI transport, against the simulator."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import httpx
import pytest

from banana2_async import AsyncBanana2
from banana2_async.testing import Fault, ManualClock, Simulator

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["asyncio"])]

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "fastapi_app" / "app.py"


def _load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("banana2_fastapi_example", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


example = _load_example()


@asynccontextmanager
async def serve(simulator: Simulator, **options: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The example app, lifespan running, with its client wired to ``simulator``; an httpx client to call it."""
    options.setdefault("not_found_grace", 0)
    app = example.create_app(lambda: simulator.client(**options))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://example") as http,
    ):
        http.app = app  # type: ignore[attr-defined]
        yield http


def _client_of(http: httpx.AsyncClient) -> AsyncBanana2:
    client: AsyncBanana2 = http.app.state.tasks.client  # type: ignore[attr-defined]
    return client


def _events(body: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in body.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((fields["event"], json.loads(fields["data"])))
    return events


async def _submit(http: httpx.AsyncClient, prompt: str, **fields: Any) -> str:
    response = await http.post("/images", json={"prompt": prompt, **fields})
    assert response.status_code == 202, response.text
    task_id: str = response.json()["task_id"]
    return task_id


async def test_post_answers_202_with_the_task_id(banana2_simulator: Simulator) -> None:
    """POST /images submits one task and answers 202 with its id, pending state and a Location header."""
    async with serve(banana2_simulator) as http:
        response = await http.post("/images", json={"prompt": "a red fox", "aspect_ratio": "16:9"})
    assert response.status_code == 202
    body = response.json()
    assert body["state"] == "pending"
    assert response.headers["location"] == f"/images/{body['task_id']}"
    assert [task.task_id for task in banana2_simulator.tasks()] == [body["task_id"]]
    assert banana2_simulator.tasks()[0].request["aspect_ratio"] == "16:9"


async def test_invalid_input_is_422_and_sends_nothing(banana2_simulator: Simulator) -> None:
    """A blank prompt or an unknown aspect ratio answers 422, and no request reaches the API."""
    async with serve(banana2_simulator) as http:
        blank = await http.post("/images", json={"prompt": "  "})
        ratio = await http.post("/images", json={"prompt": "fine", "aspect_ratio": "7:1"})
    assert blank.status_code == 422
    assert blank.json()["detail"]["error"] == "InvalidRequestError"
    assert ratio.status_code == 422
    assert banana2_simulator.stats.count("generate") == 0


@pytest.mark.banana2_simulator(credits=10)
async def test_out_of_credits_is_503(banana2_simulator: Simulator) -> None:
    """The API's 402 is this backend's 503: the account, not the caller, is the problem."""
    async with serve(banana2_simulator) as http:
        response = await http.post("/images", json={"prompt": "too expensive"})
    assert response.status_code == 503
    assert response.json()["detail"]["error"] == "InsufficientCreditsError"


async def test_result_waits_for_the_images(banana2_simulator: Simulator) -> None:
    """GET /result waits for the task and answers its images; GET /images/{id} then reads succeeded."""
    async with serve(banana2_simulator) as http:
        task_id = await _submit(http, "a lighthouse")
        result = await http.get(f"/images/{task_id}/result", params={"timeout": 30})
        state = await http.get(f"/images/{task_id}")
    assert result.status_code == 200
    assert result.json() == {
        "task_id": task_id,
        "state": "succeeded",
        "images": [f"{banana2_simulator.base_url}/results/{task_id}/0.png"],
        "error": None,
    }
    assert state.json()["state"] == "succeeded"


async def test_result_timeout_is_504_and_the_task_stays_watched() -> None:
    """GET /result answers 504 when its timeout passes; the poller keeps the task, and a later wait gets it."""
    clock = ManualClock()
    simulator = Simulator(clock=clock, seed=1)
    async with serve(simulator, poll_interval=0.01) as http:
        task_id = await _submit(http, "slow")
        timed_out = await http.get(f"/images/{task_id}/result", params={"timeout": 0.05})
        assert (await http.get(f"/images/{task_id}")).json()["state"] == "pending"
        clock.advance(60)
        result = await http.get(f"/images/{task_id}/result", params={"timeout": 30})
    assert timed_out.status_code == 504
    assert timed_out.json()["detail"]["task_id"] == task_id
    assert result.status_code == 200
    assert result.json()["state"] == "succeeded"


async def test_a_failed_task_is_502_and_reads_failed(banana2_simulator: Simulator) -> None:
    """A task the API fails answers 502 from /result with the server's message, and reads failed."""
    banana2_simulator.inject(Fault.fail_task(message="content policy"), times=1)
    async with serve(banana2_simulator) as http:
        task_id = await _submit(http, "refused")
        result = await http.get(f"/images/{task_id}/result")
        state = await http.get(f"/images/{task_id}")
    assert result.status_code == 502
    assert result.json()["detail"]["error"] == "TaskFailedError"
    assert "content policy" in result.json()["detail"]["message"]
    assert state.status_code == 200
    assert state.json()["state"] == "failed"


async def test_an_unknown_task_is_404(banana2_simulator: Simulator) -> None:
    """A task id the API does not know answers 404, from /result and from the state read after it."""
    async with serve(banana2_simulator) as http:
        result = await http.get("/images/n0000000000000nb2/result", params={"timeout": 30})
        state = await http.get("/images/n0000000000000nb2")
    assert result.status_code == 404
    assert result.json()["detail"]["error"] == "NotFoundError"
    assert state.status_code == 404


async def test_a_task_submitted_elsewhere_is_picked_up(banana2_simulator: Simulator) -> None:
    """A task id this backend never submitted is tracked on first request and answered."""
    async with banana2_simulator.client() as other:
        task_id = (await other.submit("made elsewhere")).task_id
    async with serve(banana2_simulator) as http:
        result = await http.get(f"/images/{task_id}/result", params={"timeout": 30})
    assert result.json()["state"] == "succeeded"


async def test_events_stream_progress_until_the_task_settles() -> None:
    """The SSE endpoint sends pending events while the task runs, then one succeeded event with the images."""
    clock = ManualClock()
    simulator = Simulator(clock=clock, seed=2)
    async with serve(simulator, poll_interval=0.01) as http:
        task_id = await _submit(http, "streamed")
        responses: list[httpx.Response] = []

        async def listen() -> None:
            responses.append(await http.get(f"/images/{task_id}/events", params={"heartbeat": 0.01}))

        async with anyio.create_task_group() as group:
            group.start_soon(listen)
            for _ in range(1000):  # bounded: a broken poller fails the test instead of hanging it
                if len(simulator.stats.polls(task_id)) >= 3:
                    break
                await anyio.sleep(0.01)
            clock.advance(60)
    response = responses[0]
    assert response.headers["content-type"].startswith("text/event-stream")
    events = _events(response.text)
    assert events[0][0] == "pending"
    assert {name for name, _ in events[:-1]} == {"pending"}
    assert all(data["waited"] >= 0 for _, data in events[:-1])
    assert events[-1] == (
        "succeeded",
        {
            "task_id": task_id,
            "state": "succeeded",
            "images": [f"{simulator.base_url}/results/{task_id}/0.png"],
            "error": None,
        },
    )


async def test_100_requests_for_20_tasks_cost_the_polls_of_20_tasks() -> None:
    """100 concurrent requests (waits, streams, reads) for 20 tasks poll each task no more than one waiter would."""
    latency = (0.3, 0.3)
    simulator = Simulator(speed=1, latency={"1k": latency, "2k": latency, "4k": latency}, seed=7)
    interval = 0.1
    async with serve(simulator, poll_interval=interval) as http:
        task_ids = [await _submit(http, f"task {index}") for index in range(20)]
        answers: list[httpx.Response] = []

        async def ask(index: int) -> None:
            task_id = task_ids[index % 20]
            kind = index // 20
            if kind < 3:
                path, params = f"/images/{task_id}/result", {"timeout": 30.0}
            elif kind == 3:
                path, params = f"/images/{task_id}/events", {"heartbeat": 0.05}
            else:
                path, params = f"/images/{task_id}", {}
            answers.append(await http.get(path, params=params))

        async with anyio.create_task_group() as group:
            for index in range(100):
                group.start_soon(ask, index)
        polls_sent = _client_of(http).statistics().polls_sent

    assert len(answers) == 100
    assert all(answer.status_code == 200 for answer in answers)
    waits = [answer.json() for answer in answers if answer.request.url.path.endswith("/result")]
    assert len(waits) == 60
    assert all(body["state"] == "succeeded" for body in waits)
    streams = [_events(answer.text) for answer in answers if answer.request.url.path.endswith("/events")]
    assert all(events[-1][0] == "succeeded" for events in streams)

    stats = simulator.stats
    # One waiter on a 0.3 s task polled every 0.1 s needs at most 4 polls (0.1, 0.2, 0.3, 0.4): 5 askers, same 4.
    most = math.ceil(latency[1] / interval) + 1
    assert all(len(stats.polls(task_id)) <= most for task_id in task_ids)
    assert stats.count("status") <= 20 * most
    assert stats.count("status") == polls_sent
    for task in simulator.tasks():
        assert sum(1 for when in task.poll_times if when >= task.finishes) == 1, task
