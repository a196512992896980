"""A small scripted fake of the API behind `httpx.MockTransport`, for the work and client layer tests.

Each task id has a script: the answers to its successive polls, the last one repeating. An
answer is a status string (``"SUCCESS"`` comes with image URLs), a dict of ``data`` fields,
an `httpx.Response`, an exception to raise, or an async callable of the request. The fake
counts every request, remembers when it came (on anyio's clock) and how many were in flight.
"""

from __future__ import annotations

import itertools
import json
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import trio.lowlevel
import trio.testing

from banana2_async import AsyncBanana2

BASE_URL = "https://banana2.test"
API_KEY = "sk-fake-0123456789"

Reply = str | dict[str, Any] | httpx.Response | BaseException | Callable[[httpx.Request], Awaitable[httpx.Response]]


def envelope(data: Any, *, code: int = 200, message: str = "success", **extra: Any) -> dict[str, Any]:
    """The API's answer envelope."""
    return {"code": code, "message": message, "data": data, **extra}


def task_data(task_id: str, status: str | None, **fields: Any) -> dict[str, Any]:
    """The ``data`` of a status answer; a SUCCESS carries one image URL and its credits."""
    data: dict[str, Any] = {"task_id": task_id, "status": status, "type": "text-to-image"}
    if isinstance(status, str) and status.upper() == "SUCCESS":
        data.update(response=[image_url(task_id)], consumed_credits=20, model="nano-banana-2")
    data.update(fields)
    return data


def image_url(task_id: str) -> str:
    """The result image URL the fake gives a task."""
    return f"https://img.banana2.test/{task_id}.png"


def error(status_code: int, message: str = "error", **headers: str) -> httpx.Response:
    """An error answer with the envelope the API uses."""
    return httpx.Response(status_code, json={"code": status_code, "message": message, "data": None}, headers=headers)


class FakeAPI:
    """The fake server: scripted tasks, counters, in-flight tracking.

    ``script(task_id)`` gives the answers of a task nobody scripted explicitly.
    ``hold`` is how many scheduler checkpoints each request stays in flight, so
    concurrency builds up; ``submit_latency`` is how long (on anyio's clock)
    each submit then takes. ``gate`` (``submit_gate``), while set to an unset
    event, holds every status request (submit) until the event is set.
    """

    def __init__(
        self,
        script: Callable[[str], Sequence[Reply]] = lambda _: ("SUCCESS",),
        *,
        hold: int = 0,
        submit_latency: float = 0.0,
    ) -> None:
        self.default_script = script
        self.hold = hold
        self.submit_latency = submit_latency
        self.gate: anyio.Event | None = None
        self.submit_gate: anyio.Event | None = None
        self.scripts: dict[str, list[Reply]] = {}
        self.submit_replies: list[Reply] = []
        self.submitted: list[str] = []
        self.submit_bodies: list[dict[str, Any]] = []
        self.polls: Counter[str] = Counter()
        self.poll_times: defaultdict[str, list[float]] = defaultdict(list)
        self.log: list[tuple[float, str, str]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.in_flight_by_kind: Counter[str] = Counter()
        self.max_in_flight_by_kind: Counter[str] = Counter()
        self._ids = itertools.count(1)

    def script(self, task_id: str, *replies: Reply) -> None:
        """Set the answers to the next polls of ``task_id``; the last one repeats."""
        self.scripts[task_id] = list(replies)

    @property
    def status_requests(self) -> int:
        """How many status requests came in."""
        return sum(self.polls.values())

    def requests_after(self, when: float) -> list[tuple[float, str, str]]:
        """The requests that came in after ``when``."""
        return [entry for entry in self.log if entry[0] > when]

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        kind = "submit" if request.method == "POST" else "status"
        self.in_flight += 1
        self.in_flight_by_kind[kind] += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.max_in_flight_by_kind[kind] = max(self.max_in_flight_by_kind[kind], self.in_flight_by_kind[kind])
        try:
            for _ in range(self.hold):
                await anyio.lowlevel.checkpoint()
            if kind == "submit":
                if self.submit_latency:
                    await anyio.sleep(self.submit_latency)
                if self.submit_gate is not None:
                    await self.submit_gate.wait()
                return await self._submit(request)
            if self.gate is not None:
                await self.gate.wait()
            return await self._status(request)
        finally:
            self.in_flight -= 1
            self.in_flight_by_kind[kind] -= 1

    async def _submit(self, request: httpx.Request) -> httpx.Response:
        now = anyio.current_time()
        body = json.loads(request.content)
        if self.submit_replies:
            reply = self.submit_replies.pop(0)
            if not isinstance(reply, str):
                self.log.append((now, "submit", ""))
                return await self._render(request, reply, "")
        task_id = f"task-{next(self._ids):05d}"
        self.submitted.append(task_id)
        self.submit_bodies.append(body)
        self.log.append((now, "submit", task_id))
        return httpx.Response(
            200, json=envelope({"task_id": task_id, "type": "text-to-image", "status": "IN_PROGRESS"})
        )

    async def _status(self, request: httpx.Request) -> httpx.Response:
        now = anyio.current_time()
        task_id = request.url.params.get("task_id", "")
        self.polls[task_id] += 1
        self.poll_times[task_id].append(now)
        self.log.append((now, "status", task_id))
        replies = self.scripts.get(task_id)
        if replies is None:
            replies = self.scripts[task_id] = list(self.default_script(task_id))
        reply = replies.pop(0) if len(replies) > 1 else replies[0]
        return await self._render(request, reply, task_id)

    @staticmethod
    async def _render(request: httpx.Request, reply: Reply, task_id: str) -> httpx.Response:
        if isinstance(reply, BaseException):
            raise reply
        if isinstance(reply, httpx.Response):
            return httpx.Response(reply.status_code, headers=reply.headers, content=reply.content)
        if isinstance(reply, str):
            return httpx.Response(200, json=envelope(task_data(task_id, reply)))
        if isinstance(reply, dict):
            return httpx.Response(200, json=envelope(reply))
        return await reply(request)

    def transport(self) -> httpx.MockTransport:
        """An httpx transport answering from this fake."""
        return httpx.MockTransport(self)


@asynccontextmanager
async def open_client(fake: FakeAPI, *, callers_client: bool = False, **options: Any) -> AsyncIterator[AsyncBanana2]:
    """An open client talking to ``fake``, polling every millisecond unless told otherwise.

    By default the client makes its own httpx client over ``fake``'s transport (``transport=``),
    the path users get: its polls go straight to the transport. With ``callers_client`` it is
    given an httpx client of the caller's (``http_client=``) and every request goes through
    ``client.send``.
    """
    settings: dict[str, Any] = {"poll_interval": 0.001, "seed": 1234, **options}
    if not callers_client:
        async with AsyncBanana2(API_KEY, base_url=BASE_URL, transport=fake.transport(), **settings) as client:
            yield client
        return
    async with (
        httpx.AsyncClient(transport=fake.transport()) as http,
        AsyncBanana2(API_KEY, base_url=BASE_URL, http_client=http, **settings) as client,
    ):
        yield client


async def wait_until(predicate: Callable[[], bool], *, limit: float = 20.0) -> None:
    """Wait until ``predicate()`` holds, checking every millisecond; fail loudly if it never does."""
    with anyio.fail_after(limit):
        while not predicate():  # noqa: ASYNC110 - the predicate reads counters, there is no event to wait on
            await anyio.sleep(0.001)


def stall(seconds: float) -> None:
    """Block the event loop for ``seconds``, as a long synchronous call does: no task runs meanwhile.

    On trio's `MockClock` (a ``virtual_clock`` test) the clock jumps ``seconds`` ahead instead.
    """
    try:
        clock = trio.lowlevel.current_clock()
    except RuntimeError:  # not in trio
        clock = None
    if isinstance(clock, trio.testing.MockClock):
        clock.jump(seconds)
    else:
        time.sleep(seconds)
