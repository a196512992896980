"""Every injectable fault of the simulator, scripted and by probability, over the in-process transport."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from banana2_async.testing import DROPPED, Fault, ManualClock, Simulator

pytestmark = pytest.mark.anyio

AUTH = {"Authorization": "Bearer sk-sim-test"}


@pytest.fixture
def clock() -> ManualClock:
    """A clock the test moves by hand."""
    return ManualClock()


@pytest.fixture
def sim(clock: ManualClock) -> Simulator:
    """A seeded simulator on the manual clock."""
    return Simulator(seed=5, clock=clock)


@pytest.fixture
async def http(sim: Simulator) -> AsyncIterator[httpx.AsyncClient]:
    """Raw httpx wired to the simulator in-process, authenticated."""
    async with httpx.AsyncClient(transport=sim.transport(), base_url=sim.base_url, headers=AUTH) as client:
        yield client


async def _generate(http: httpx.AsyncClient, prompt: str = "a lighthouse") -> httpx.Response:
    return await http.post("/api/generate", json={"prompt": prompt})


async def _task(http: httpx.AsyncClient) -> str:
    response = await _generate(http)
    assert response.status_code == 200
    return str(response.json()["data"]["task_id"])


async def _poll(http: httpx.AsyncClient, task_id: str) -> httpx.Response:
    return await http.get("/api/status", params={"task_id": task_id})


async def test_server_error_on_status_for_the_next_n_polls(http: httpx.AsyncClient, sim: Simulator) -> None:
    """Fault.server_error on status answers 500 in the envelope for the next N polls, then normally."""
    task_id = await _task(http)
    rule = sim.inject(Fault.server_error(), on="status", times=2)
    answers = [await _poll(http, task_id) for _ in range(3)]
    assert [a.status_code for a in answers] == [500, 500, 200]
    assert answers[0].json() == {"code": 500, "message": "internal server error", "data": None}
    assert (rule.fired, rule.remaining, rule.active) == (2, 0, False)


async def test_server_error_before_create_charges_nothing(http: httpx.AsyncClient, sim: Simulator) -> None:
    """A plain server error on generate answers 502 (as asked) without creating or charging a task."""
    sim.inject(Fault.server_error(502), on="generate", times=1)
    assert (await _generate(http)).status_code == 502
    assert (sim.stats.tasks_created, sim.stats.credits_spent) == (0, 0)


async def test_server_error_after_create_is_paid_but_unanswered(http: httpx.AsyncClient, sim: Simulator) -> None:
    """server_error(after_create=True) creates and charges the task, then answers 500: the ambiguous case."""
    sim.inject(Fault.server_error(after_create=True), times=1)
    response = await _generate(http, "paid for")
    assert response.status_code == 500
    assert "task_id" not in response.text
    assert sim.stats.tasks_per_prompt == {"paid for": 1}
    assert sim.stats.credits_spent == 20
    assert sim.tasks()[0].status == "IN_PROGRESS"


@pytest.mark.parametrize(("retry_after", "header"), [(2.0, "2"), (0.05, "0.05"), (None, None)])
async def test_rate_limit_answers_429_with_or_without_retry_after(
    http: httpx.AsyncClient, sim: Simulator, retry_after: float | None, header: str | None
) -> None:
    """Fault.rate_limit answers 429 in the envelope, with Retry-After only when given, and creates nothing."""
    sim.inject(Fault.rate_limit(retry_after), on="generate", times=1)
    response = await _generate(http)
    assert response.status_code == 429
    assert response.json()["code"] == 429
    assert response.headers.get("retry-after") == header
    assert sim.stats.tasks_created == 0


async def test_a_dropped_connection_raises_what_a_real_drop_raises(http: httpx.AsyncClient, sim: Simulator) -> None:
    """Fault.drop makes the transport raise httpx.RemoteProtocolError, counted under DROPPED."""
    task_id = await _task(http)
    sim.inject(Fault.drop(), on="status", times=1)
    with pytest.raises(httpx.RemoteProtocolError):
        await _poll(http, task_id)
    assert (await _poll(http, task_id)).status_code == 200
    assert sim.stats.requests[("status", DROPPED)] == 1


@pytest.mark.parametrize(("after_create", "created"), [(False, 0), (True, 1)])
async def test_a_dropped_generate_creates_the_task_only_after_create(
    http: httpx.AsyncClient, sim: Simulator, after_create: bool, created: int
) -> None:
    """drop() on generate loses the request; drop(after_create=True) loses only the answer of a paid task."""
    sim.inject(Fault.drop(after_create=after_create), on="generate", times=1)
    with pytest.raises(httpx.RemoteProtocolError):
        await _generate(http)
    assert sim.stats.tasks_created == created
    assert sim.stats.credits_spent == 20 * created


async def test_a_slow_answer_arrives_late(http: httpx.AsyncClient, sim: Simulator) -> None:
    """Fault.slow holds the answer back but still delivers it."""
    sim.inject(Fault.slow(0.01), on="generate", times=1)
    assert (await _generate(http)).status_code == 200


async def test_a_slow_answer_past_the_read_timeout_times_out_after_the_task_was_created(
    http: httpx.AsyncClient, sim: Simulator
) -> None:
    """A slow answer that outlasts the request's read timeout raises httpx.ReadTimeout; the task exists and is paid."""
    sim.inject(Fault.slow(30), on="generate", times=1)
    with pytest.raises(httpx.ReadTimeout):
        await http.post("/api/generate", json={"prompt": "late"}, timeout=httpx.Timeout(5.0, read=0.01))
    assert sim.stats.tasks_per_prompt == {"late": 1}


@pytest.mark.parametrize("status", ["FAILED", "error", "CANCELLED"])
async def test_fail_task_ends_the_task_failed_with_its_message(
    http: httpx.AsyncClient, sim: Simulator, clock: ManualClock, status: str
) -> None:
    """Fault.fail_task makes the next task run, then end with the given status and message in data.error."""
    sim.inject(Fault.fail_task("nsfw content detected", status=status), times=1)
    failing, fine = await _task(http), await _task(http)
    assert (await _poll(http, failing)).json()["data"]["status"] == "IN_PROGRESS"
    clock.advance(60)
    data = (await _poll(http, failing)).json()["data"]
    assert data["status"] == status
    assert data["error"] == "nsfw content detected"
    assert data["response"] is None
    assert (await _poll(http, fine)).json()["data"]["status"] == "SUCCESS"
    assert (await http.get(f"/results/{failing}/0.png")).status_code == 404


async def test_an_error_inside_an_http_200_envelope(http: httpx.AsyncClient, sim: Simulator) -> None:
    """Fault.envelope_error answers HTTP 200 whose envelope carries the error code and message."""
    task_id = await _task(http)
    sim.inject(Fault.envelope_error(402, "insufficient credits"), on="status", times=1)
    response = await _poll(http, task_id)
    assert response.status_code == 200
    assert response.json() == {"code": 402, "message": "insufficient credits", "data": None}


async def test_in_flight_statuses_come_before_in_progress(
    http: httpx.AsyncClient, sim: Simulator, clock: ManualClock
) -> None:
    """Fault.in_flight_statuses makes a task report each given status in turn, then IN_PROGRESS, then SUCCESS."""
    sim.inject(Fault.in_flight_statuses(["QUEUED", "PROCESSING"]), times=1)
    task_id = await _task(http)
    task = sim.task(task_id)
    step = (task.finishes - task.created) / 3
    seen = []
    for _ in range(4):
        seen.append((await _poll(http, task_id)).json()["data"]["status"])
        clock.advance(step)
    assert seen == ["QUEUED", "PROCESSING", "IN_PROGRESS", "SUCCESS"]


async def test_extra_fields_are_added_to_the_envelope_and_data(http: httpx.AsyncClient, sim: Simulator) -> None:
    """Fault.extra_fields adds undocumented keys to the envelope and to data, keeping the documented ones."""
    sim.inject(Fault.extra_fields(envelope={"trace_id": "t-1"}, data={"eta_seconds": 3}), on="status")
    task_id = await _task(http)
    body = (await _poll(http, task_id)).json()
    assert body["trace_id"] == "t-1"
    assert body["data"]["eta_seconds"] == 3
    assert body["data"]["status"] == "IN_PROGRESS"
    assert body["code"] == 200


async def test_extra_fields_default_to_plausible_keys(http: httpx.AsyncClient, sim: Simulator) -> None:
    """Fault.extra_fields() without arguments adds some undocumented keys to both levels."""
    sim.inject(Fault.extra_fields(), on="generate", times=1)
    body = (await _generate(http)).json()
    assert set(body) > {"code", "message", "data"}
    assert set(body["data"]) > {"task_id", "type", "status"}


async def test_a_rule_without_limits_fires_until_cancelled(http: httpx.AsyncClient, sim: Simulator) -> None:
    """A rule with neither times nor probability fires on every matching request until cancel()."""
    rule = sim.inject(Fault.rate_limit(None), on="status")
    task_id = await _task(http)
    assert [(await _poll(http, task_id)).status_code for _ in range(3)] == [429, 429, 429]
    rule.cancel()
    assert (await _poll(http, task_id)).status_code == 200
    assert rule.fired == 3


async def test_clear_faults_removes_every_rule(http: httpx.AsyncClient, sim: Simulator) -> None:
    """clear_faults stops all injected faults."""
    rules = [sim.inject(Fault.server_error()), sim.inject(Fault.drop())]
    sim.clear_faults()
    assert (await _generate(http)).status_code == 200
    assert not any(rule.active for rule in rules)


@pytest.mark.parametrize(("probability", "expect"), [(0.0, "none"), (1.0, "all"), (0.3, "some")])
async def test_faults_by_probability(http: httpx.AsyncClient, sim: Simulator, probability: float, expect: str) -> None:
    """A rule with a probability fires on that share of requests: never at 0, always at 1, some of them between."""
    task_id = await _task(http)
    rule = sim.inject(Fault.server_error(), on="status", probability=probability)
    codes = [(await _poll(http, task_id)).status_code for _ in range(100)]
    errors = codes.count(500)
    assert errors == rule.fired
    assert {"none": errors == 0, "all": errors == 100, "some": 10 < errors < 60}[expect]


async def test_probability_draws_are_seeded(clock: ManualClock) -> None:
    """Two simulators with the same seed fail the same requests."""
    runs = []
    for _ in range(2):
        sim = Simulator(seed=99, clock=clock)
        sim.inject(Fault.drop(), on="generate", probability=0.5)
        runs.append([sim.handle("POST", "/api/generate", headers=AUTH, body=b'{"prompt":"p"}').drop for _ in range(30)])
    assert runs[0] == runs[1]
    assert any(runs[0])
    assert not all(runs[0])


async def test_a_limited_probabilistic_rule_stops_after_times(http: httpx.AsyncClient, sim: Simulator) -> None:
    """times and probability together: fires with that probability, at most times times."""
    rule = sim.inject(Fault.rate_limit(), on="generate", times=2, probability=1.0)
    codes = [(await _generate(http)).status_code for _ in range(4)]
    assert codes == [429, 429, 200, 200]
    assert rule.fired == 2


async def test_one_fault_per_moment_in_injection_order(http: httpx.AsyncClient, sim: Simulator) -> None:
    """An arrival fault and a create fault both apply in turn: the first request meets 429, the next a paid 500."""
    sim.inject(Fault.server_error(after_create=True), times=1)
    sim.inject(Fault.rate_limit(0), on="generate", times=1)
    sim.inject(Fault.server_error(503), on="generate", times=1)
    codes = [(await _generate(http)).status_code for _ in range(3)]
    assert codes == [429, 503, 500]
    assert sim.stats.tasks_created == 1


async def test_a_slow_fault_and_an_answer_fault_combine(http: httpx.AsyncClient, sim: Simulator) -> None:
    """A slow answer can carry any answer, e.g. the 500 of a paid task."""
    sim.inject(Fault.server_error(after_create=True), times=1)
    sim.inject(Fault.slow(0.001), on="generate", times=1)
    assert (await _generate(http)).status_code == 500
    assert sim.stats.tasks_created == 1


@pytest.mark.parametrize(
    ("fault", "endpoints"),
    [
        (Fault.server_error(), {"generate", "status", "result"}),
        (Fault.server_error(after_create=True), {"generate"}),
        (Fault.rate_limit(), {"generate", "status", "result"}),
        (Fault.drop(), {"generate", "status", "result"}),
        (Fault.envelope_error(), {"generate", "status"}),
        (Fault.slow(1), {"generate", "status", "result"}),
        (Fault.extra_fields(), {"generate", "status"}),
        (Fault.fail_task(), {"generate"}),
        (Fault.in_flight_statuses(), {"generate"}),
    ],
)
def test_each_fault_acts_on_its_endpoints(fault: Fault, endpoints: set[str]) -> None:
    """Each fault names the endpoints it can act on; inject without 'on' covers exactly those."""
    assert fault.endpoints == endpoints
    assert Simulator().inject(fault).endpoints == endpoints


async def test_result_downloads_can_fail_too(http: httpx.AsyncClient, sim: Simulator, clock: ManualClock) -> None:
    """Faults on the result endpoint hit image downloads: a 500, then the image."""
    task_id = await _task(http)
    clock.advance(60)
    url = (await _poll(http, task_id)).json()["data"]["response"][0]
    sim.inject(Fault.server_error(), on="result", times=1)
    assert (await http.get(url)).status_code == 500
    assert (await http.get(url)).status_code == 200


def test_negative_durations_are_refused() -> None:
    """Fault.slow and Fault.rate_limit refuse negative seconds."""
    with pytest.raises(ValueError, match="negative"):
        Fault.slow(-1)
    with pytest.raises(ValueError, match="negative"):
        Fault.rate_limit(-1)
