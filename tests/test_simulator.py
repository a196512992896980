"""The simulator follows the API's documentation: envelope, auth, validation, credits, tasks, counters."""

from __future__ import annotations

import math
import re
import struct
from collections.abc import AsyncIterator
from typing import Any, cast

import httpx
import pytest

import banana2_async.testing as testing
from banana2_async.testing import (
    DEFAULT_LATENCY,
    IN_PROCESS_BASE_URL,
    MODEL,
    Fault,
    ManualClock,
    Simulator,
)

pytestmark = pytest.mark.anyio

KEY = "sk-sim-test"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def clock() -> ManualClock:
    """A clock the test moves by hand."""
    return ManualClock()


@pytest.fixture
def sim(clock: ManualClock) -> Simulator:
    """A seeded simulator on the manual clock, tasks taking 6-135 simulated seconds."""
    return Simulator(seed=7, clock=clock)


@pytest.fixture
async def http(sim: Simulator) -> AsyncIterator[httpx.AsyncClient]:
    """Raw httpx wired to the simulator in-process, authenticated."""
    async with httpx.AsyncClient(transport=sim.transport(), base_url=sim.base_url, headers=AUTH) as client:
        yield client


async def _submit(http: httpx.AsyncClient, **body: Any) -> str:
    response = await http.post("/api/generate", json={"prompt": "a red fox", **body})
    assert response.status_code == 200, response.text
    task_id = response.json()["data"]["task_id"]
    assert isinstance(task_id, str)
    return task_id


async def _status(http: httpx.AsyncClient, task_id: str) -> dict[str, Any]:
    response = await http.get("/api/status", params={"task_id": task_id})
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert isinstance(data, dict)
    return data


def test_public_names_are_pinned() -> None:
    """banana2_async.testing exports exactly these names, sorted, and each one resolves."""
    expected = [
        "BOMB_ENCODINGS",
        "DEFAULT_API_KEY",
        "DEFAULT_CREDITS",
        "DEFAULT_LATENCY",
        "DROPPED",
        "ECHO_FORMS",
        "ECHO_PLACES",
        "EMPTY_RESPONSES",
        "IN_PROCESS_BASE_URL",
        "MISSING",
        "MODEL",
        "POISONED_CODES",
        "POISONED_RESULT_URLS",
        "POISONED_RETRY_AFTERS",
        "POISONED_TASK_IDS",
        "BombEncoding",
        "EchoForm",
        "EchoPlace",
        "Endpoint",
        "Fault",
        "FaultRule",
        "ManualClock",
        "Reply",
        "ShiftedLogNormal",
        "SimulatedTask",
        "Simulator",
        "SimulatorApp",
        "SimulatorServer",
        "SimulatorStats",
        "SimulatorTransport",
        "image_size",
        "render_image",
    ]
    assert testing.__all__ == expected
    assert sorted(testing.__all__, key=lambda name: (not name.isupper(), name)) == expected
    for name in expected:
        assert getattr(testing, name) is not None
    with pytest.raises(AttributeError):
        _ = testing.NoSuchName


async def test_generate_answers_the_documented_envelope(http: httpx.AsyncClient) -> None:
    """POST /api/generate answers code 200, message success, and data with task_id, type and IN_PROGRESS."""
    response = await http.post("/api/generate", json={"prompt": "a city", "aspect_ratio": "16:9", "resolution": "2k"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["code"] == 200
    assert body["message"] == "success"
    assert body["data"]["type"] == "text-to-image"
    assert body["data"]["status"] == "IN_PROGRESS"
    assert re.fullmatch(r"n[0-9a-f]{14}nb2", body["data"]["task_id"])


async def test_task_runs_in_progress_then_succeeds_with_every_documented_field(
    http: httpx.AsyncClient, sim: Simulator, clock: ManualClock
) -> None:
    """A task reports IN_PROGRESS until its latency passed, then SUCCESS with response, credits, model, request."""
    task_id = await _submit(http, aspect_ratio="4:3", resolution="1k")
    running = await _status(http, task_id)
    assert running["status"] == "IN_PROGRESS"
    assert running["response"] is None
    assert running["consumed_credits"] is None

    clock.advance(sim.task(task_id).finishes - clock())
    done = await _status(http, task_id)
    assert done["status"] == "SUCCESS"
    assert done["task_id"] == task_id
    assert done["type"] == "text-to-image"
    assert done["model"] == MODEL == "nano-banana-2"
    assert done["consumed_credits"] == 20
    assert done["response"] == [f"{IN_PROCESS_BASE_URL}/results/{task_id}/0.png"]
    assert done["request"] == {"prompt": "a red fox", "aspect_ratio": "4:3", "resolution": "1k"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", done["created_at"])


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": f"Basic {KEY}"}, {"Authorization": "Bearer"}],
    ids=["missing", "unknown-key", "not-bearer", "empty"],
)
async def test_requests_without_a_valid_bearer_key_get_401(sim: Simulator, headers: dict[str, str]) -> None:
    """Both endpoints answer 401 in the envelope unless the request carries 'Bearer <known key>'."""
    async with httpx.AsyncClient(transport=sim.transport(), base_url=sim.base_url, headers=headers) as http:
        generate = await http.post("/api/generate", json={"prompt": "x"})
        status = await http.get("/api/status", params={"task_id": "n00000000000000nb2"})
    for response in (generate, status):
        assert response.status_code == 401
        assert response.json()["code"] == 401
        assert response.json()["data"] is None
        assert KEY not in response.text
    assert sim.stats.tasks_created == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"aspect_ratio": "1:1"}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": 42}, "prompt"),
        ({"prompt": "x" * 5001}, "prompt"),
        ({"prompt": "x", "type": "upscale"}, "type"),
        ({"prompt": "x", "type": "edit"}, "images"),
        ({"prompt": "x", "type": "text-to-image", "images": ["https://example.com/a.png"]}, "images"),
        ({"prompt": "x", "images": [f"https://example.com/{i}.png" for i in range(15)]}, "images"),
        ({"prompt": "x", "images": "https://example.com/a.png"}, "images"),
        ({"prompt": "x", "images": ["not a url"]}, "images"),
        ({"prompt": "x", "aspect_ratio": "7:3"}, "aspect_ratio"),
        ({"prompt": "x", "resolution": "8k"}, "resolution"),
        ({"prompt": "x", "output_format": "webp"}, "output_format"),
        ({"prompt": "x", "n": 2}, "n"),
    ],
)
async def test_invalid_bodies_get_400_naming_the_field(
    http: httpx.AsyncClient, sim: Simulator, body: dict[str, Any], field: str
) -> None:
    """Each documented rule broken answers 400 whose message names the field; nothing is created or charged."""
    response = await http.post("/api/generate", json=body)
    assert response.status_code == 400
    envelope = response.json()
    assert envelope["code"] == 400
    assert field in envelope["message"]
    assert sim.stats.tasks_created == 0
    assert sim.credits() == testing.DEFAULT_CREDITS


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b""])
async def test_a_body_that_is_not_a_json_object_gets_400(http: httpx.AsyncClient, content: bytes) -> None:
    """A body that is not a JSON object answers 400 naming the body."""
    response = await http.post("/api/generate", content=content, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert "body" in response.json()["message"]


DOCUMENTED_VALUES = [
    *(("aspect_ratio", ratio) for ratio in ("1:1", "3:2", "2:3", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9")),
    *(("resolution", resolution) for resolution in ("1k", "2k", "4k")),
    *(("output_format", output_format) for output_format in ("png", "jpeg")),
    ("type", "text-to-image"),
]

UNDOCUMENTED_SPELLINGS = [
    ("resolution", "2K"),
    ("resolution", " 1k"),
    ("output_format", "jpg"),
    ("output_format", "JPG"),
    ("output_format", "PNG"),
    ("aspect_ratio", " 16:9 "),
    ("aspect_ratio", "16/9"),
    ("type", "Text-To-Image"),
    ("type", "EDIT"),
]


async def test_every_documented_value_is_accepted_as_sent(http: httpx.AsyncClient, sim: Simulator) -> None:
    """Each documented value of type, aspect_ratio, resolution and output_format answers 200 and is kept as sent."""
    for field, value in DOCUMENTED_VALUES:
        task_id = await _submit(http, **{field: value})
        assert sim.task(task_id).request == {"prompt": "a red fox", field: value}
    edit = await _submit(http, type="edit", images=["https://example.com/cat.jpg"])
    assert sim.task(edit).type == "edit"


@pytest.mark.parametrize(("field", "value"), UNDOCUMENTED_SPELLINGS)
async def test_undocumented_spellings_get_400_naming_the_field(
    http: httpx.AsyncClient, sim: Simulator, field: str, value: str
) -> None:
    """A spelling the SDK would normalise ('2K', 'jpg', ' 16:9 ', 'EDIT') answers 400 naming the field; no charge."""
    body: dict[str, Any] = {"prompt": "a red fox", field: value}
    if value.lower() == "edit":
        body["images"] = ["https://example.com/cat.jpg"]
    response = await http.post("/api/generate", json=body)
    assert response.status_code == 400
    assert response.json()["code"] == 400
    assert response.json()["message"].startswith(f"{field}: ")
    assert sim.stats.tasks_created == 0
    assert sim.credits() == testing.DEFAULT_CREDITS


async def test_the_sdks_normalised_requests_are_accepted() -> None:
    """The SDK sends '2K', 'jpg', ' 16:9 ' and 'EDIT' as documented values, which the simulator accepts."""
    sim = Simulator(speed=math.inf)
    async with sim.client() as client:
        image = await client.generate(
            "a red fox",
            aspect_ratio=cast(Any, " 16:9 "),
            resolution=cast(Any, "2K"),
            output_format=cast(Any, "jpg"),
        )
        edit = await client.generate("a tiger", type=cast(Any, "EDIT"), images=["https://example.com/cat.jpg"])
    assert sim.task(image.task_id).request == {
        "prompt": "a red fox",
        "aspect_ratio": "16:9",
        "resolution": "2k",
        "output_format": "jpeg",
    }
    assert sim.task(edit.task_id).request == {
        "prompt": "a tiger",
        "type": "edit",
        "images": ["https://example.com/cat.jpg"],
    }
    assert sim.stats.count("generate") == sim.stats.count("generate", 200) == 2


async def test_text_to_image_costs_20_and_an_edit_24(http: httpx.AsyncClient, sim: Simulator) -> None:
    """Credits are charged on submit: 20 per text-to-image, 24 per edit (detected from images)."""
    await _submit(http)
    response = await http.post("/api/generate", json={"prompt": "edit it", "images": ["https://example.com/a.png"]})
    assert response.json()["data"]["type"] == "edit"
    assert sim.credits() == testing.DEFAULT_CREDITS - 44
    assert sim.stats.credits_spent == 44


async def test_too_few_credits_gets_402_and_creates_nothing(sim: Simulator) -> None:
    """With fewer credits than the task costs, generate answers 402; the balance and tasks stay as they were."""
    sim.set_credits(39)
    async with httpx.AsyncClient(transport=sim.transport(), base_url=sim.base_url, headers=AUTH) as http:
        await _submit(http)
        refused = await http.post("/api/generate", json={"prompt": "one more"})
    assert refused.status_code == 402
    assert refused.json()["code"] == 402
    assert "credits" in refused.json()["message"]
    assert sim.credits() == 19
    assert sim.stats.tasks_created == 1


async def test_unknown_task_ids_get_404(http: httpx.AsyncClient) -> None:
    """GET /api/status of a task id the server never issued answers 404 in the envelope."""
    response = await http.get("/api/status", params={"task_id": "n0123456789abcdnb2"})
    assert response.status_code == 404
    assert response.json()["code"] == 404


async def test_another_accounts_task_is_not_found(http: httpx.AsyncClient, sim: Simulator) -> None:
    """A task is visible only to the key that created it: another key gets 404."""
    task_id = await _submit(http)
    sim.add_account("sk-other", credits=100)
    response = await http.get("/api/status", params={"task_id": task_id}, headers={"Authorization": "Bearer sk-other"})
    assert response.status_code == 404


async def test_status_without_task_id_gets_400_naming_it(http: httpx.AsyncClient) -> None:
    """GET /api/status without task_id answers 400 whose message names task_id."""
    response = await http.get("/api/status")
    assert response.status_code == 400
    assert "task_id" in response.json()["message"]


async def test_unknown_paths_and_methods_answer_in_the_envelope(http: httpx.AsyncClient) -> None:
    """An unknown path answers 404 and a wrong method 405, both in the envelope."""
    missing = await http.get("/api/tasks")
    wrong_method = await http.get("/api/generate")
    assert (missing.status_code, missing.json()["code"]) == (404, 404)
    assert (wrong_method.status_code, wrong_method.json()["code"]) == (405, 405)


async def test_every_answer_carries_a_request_id(http: httpx.AsyncClient) -> None:
    """Each answer has a distinct x-request-id header."""
    first = await http.get("/api/status")
    second = await http.get("/api/status")
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


async def test_result_urls_serve_the_image_in_the_requested_format_and_shape(
    http: httpx.AsyncClient, sim: Simulator, clock: ManualClock
) -> None:
    """A result URL serves real image bytes in the requested format, aspect ratio and resolution tier."""
    png_id = await _submit(http, aspect_ratio="16:9", resolution="2k")
    jpeg_id = await _submit(http, aspect_ratio="9:16", output_format="jpeg")
    clock.advance(60)
    png = await http.get((await _status(http, png_id))["response"][0])
    jpeg_url = (await _status(http, jpeg_id))["response"][0]
    assert jpeg_url.endswith(".jpeg")
    jpeg = await http.get(jpeg_url)

    assert png.headers["content-type"] == "image/png"
    assert png.content.startswith(b"\x89PNG\r\n\x1a\n")
    assert struct.unpack(">II", png.content[16:24]) == (2048, 1152)
    assert jpeg.headers["content-type"] == "image/jpeg"
    assert jpeg.content.startswith(b"\xff\xd8")
    assert jpeg.content.endswith(b"\xff\xd9")
    start_of_frame = jpeg.content.index(b"\xff\xc0")
    assert struct.unpack(">HH", jpeg.content[start_of_frame + 5 : start_of_frame + 9]) == (1024, 576)


async def test_result_urls_need_no_key_and_are_deterministic_per_prompt(
    http: httpx.AsyncClient, sim: Simulator, clock: ManualClock
) -> None:
    """Result URLs are fetched without credentials; the same prompt gives the same bytes, another prompt others."""
    first, second = await _submit(http), await _submit(http)
    other = await _submit(http, prompt="a blue whale")
    clock.advance(60)
    async with httpx.AsyncClient(transport=sim.transport()) as anonymous:
        urls = [(await _status(http, task_id))["response"][0] for task_id in (first, second, other)]
        images = [(await anonymous.get(url)).content for url in urls]
    assert images[0] == images[1]
    assert images[0] != images[2]


async def test_results_are_not_served_before_the_task_finishes(http: httpx.AsyncClient) -> None:
    """A result URL of a running task, or with the wrong extension, answers 404."""
    task_id = await _submit(http)
    assert (await http.get(f"/results/{task_id}/0.png")).status_code == 404
    assert (await http.get("/results/nope/0.png")).status_code == 404


async def test_result_urls_expire_after_result_ttl(clock: ManualClock) -> None:
    """With result_ttl set, a result URL answers 403 once that long has passed since the task finished."""
    sim = Simulator(clock=clock, speed=math.inf, result_ttl=300)
    async with httpx.AsyncClient(transport=sim.transport(), base_url=sim.base_url, headers=AUTH) as http:
        url = (await _status(http, await _submit(http)))["response"][0]
        clock.advance(299)
        assert (await http.get(url)).status_code == 200
        clock.advance(2)
        assert (await http.get(url)).status_code == 403


def test_latency_is_drawn_per_resolution_and_divided_by_speed(clock: ManualClock) -> None:
    """A task's duration lies between its resolution's floor and cap, divided by speed."""
    sim = Simulator(clock=clock, speed=100, seed=3, api_key=KEY)
    for resolution in DEFAULT_LATENCY:
        for _ in range(20):
            reply = sim.handle(
                "POST", "/api/generate", headers=AUTH, body=b'{"prompt": "p", "resolution": "%s"}' % resolution.encode()
            )
            assert reply.status == 200
    for task in sim.tasks():
        model = DEFAULT_LATENCY[str(task.request.get("resolution"))]
        assert model.quantile(0) / 100 <= task.finishes - task.created <= model.quantile(1) / 100


def test_the_same_seed_gives_the_same_run() -> None:
    """Two simulators with the same seed issue the same task ids and durations."""
    runs = []
    for _ in range(2):
        sim = Simulator(seed=11, clock=ManualClock())
        for _ in range(5):
            sim.handle("POST", "/api/generate", headers=AUTH, body=b'{"prompt": "p"}')
        runs.append([(task.task_id, task.finishes) for task in sim.tasks()])
    assert runs[0] == runs[1]


async def test_infinite_speed_finishes_tasks_at_once() -> None:
    """With speed=inf the first poll already reports SUCCESS."""
    fast = Simulator(speed=math.inf)
    async with httpx.AsyncClient(transport=fast.transport(), base_url=fast.base_url, headers=AUTH) as http:
        assert (await _status(http, await _submit(http)))["status"] == "SUCCESS"


async def test_counters_record_requests_polls_prompts_and_credits(
    http: httpx.AsyncClient, sim: Simulator, clock: ManualClock
) -> None:
    """Counters hold requests per endpoint and status, each task's poll times, tasks per prompt and credits spent."""
    fox = await _submit(http)
    await _submit(http)
    await _submit(http, prompt="an owl")
    for _ in range(3):
        clock.advance(1.5)
        await _status(http, fox)
    await http.get("/api/status", params={"task_id": "unknown"})
    await http.post("/api/generate", json={})

    stats = sim.stats
    assert stats.requests == {("generate", 200): 3, ("generate", 400): 1, ("status", 200): 3, ("status", 404): 1}
    assert stats.count("generate") == 4
    assert stats.count(status=200) == 6
    assert stats.count("status", 404) == 1
    assert stats.polls(fox) == (1.5, 3.0, 4.5)
    assert stats.polls("unknown") == (3 * 1.5,)
    assert sim.task(fox).poll_times == (1.5, 3.0, 4.5)
    assert stats.tasks_per_prompt == {"a red fox": 2, "an owl": 1}
    assert stats.credits_spent == 60
    assert stats.tasks_created == 3

    sim.reset_stats()
    assert sim.stats == testing.SimulatorStats(
        requests={}, poll_times={}, tasks_per_prompt={}, credits_spent=0, tasks_created=0
    )
    assert len(sim.tasks()) == 3


async def test_a_removed_key_is_refused(http: httpx.AsyncClient, sim: Simulator) -> None:
    """After remove_account the key gets 401, also when polling its own tasks."""
    task_id = await _submit(http)
    sim.remove_account(KEY)
    response = await http.get("/api/status", params={"task_id": task_id})
    assert response.status_code == 401


def test_accounts_are_managed_by_key() -> None:
    """add_account, credits and set_credits work per key; unknown keys raise KeyError."""
    sim = Simulator(credits=5)
    sim.add_account("sk-two", credits=70)
    sim.set_credits(30, api_key="sk-two")
    assert (sim.credits(), sim.credits("sk-two")) == (5, 30)
    with pytest.raises(KeyError):
        sim.credits("sk-nobody")
    with pytest.raises(KeyError):
        sim.set_credits(1, api_key="sk-nobody")


@pytest.mark.parametrize(
    "options",
    [{"speed": 0}, {"speed": -1}, {"latency": {"1k": (2, 1), "2k": (1, 2), "4k": (1, 2)}}, {"latency": {"1k": (1, 2)}}],
)
def test_invalid_options_are_refused(options: dict[str, Any]) -> None:
    """A non-positive speed or an inconsistent latency table raises ValueError."""
    with pytest.raises(ValueError, match=r"speed|latency"):
        Simulator(**options)


def test_manual_clock_moves_only_forward() -> None:
    """ManualClock starts where told, advances by the given seconds, and refuses to go back."""
    clock = ManualClock(10.0)
    clock.advance(2.5)
    assert clock() == 12.5
    with pytest.raises(ValueError, match="back"):
        clock.advance(-1)


def test_faults_are_checked_against_their_endpoints() -> None:
    """inject refuses a fault on an endpoint it cannot act on, and bad counts or probabilities."""
    sim = Simulator()
    with pytest.raises(ValueError, match="cannot act"):
        sim.inject(Fault.fail_task(), on="status")
    with pytest.raises(ValueError, match="cannot act"):
        sim.inject(Fault.server_error(after_create=True), on="status")
    with pytest.raises(ValueError, match="times"):
        sim.inject(Fault.drop(), times=-1)
    with pytest.raises(ValueError, match="probability"):
        sim.inject(Fault.drop(), probability=1.5)
    with pytest.raises(ValueError, match="5xx"):
        Fault.server_error(404)
    with pytest.raises(ValueError, match="status"):
        Fault.in_flight_statuses(())
    assert repr(sim.inject(Fault.drop(), on="status", times=2)).startswith("FaultRule('drop'")
