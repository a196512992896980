"""The simulator's state and rules: accounts, credits, tasks, time, faults, counters.

`Simulator.handle` answers one HTTP request as the NanoBanana 2 API would and
returns a `Reply`; the faces (an httpx transport, an ASGI app) only move bytes.
Everything here is synchronous and guarded by one lock, so a server thread and
the test's own thread can share a simulator. The costly part of an answer (an
image to render, a compression bomb to build) is done outside the lock.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qs

from ._faults import MISSING, Endpoint, Fault, FaultRule, pick_fault
from ._hostile import MARKER, echo_text
from ._images import content_type, render_image
from ._latency import LatencyModel, ShiftedLogNormal, latency_model
from ._replies import Reply, answer_fault, compression_bomb, error, fault_reply, ok, route
from ._stats import DROPPED, SimulatedTask, SimulatorStats
from ._tasks import RESULT_URL, Task
from ._validation import BadRequest, read_generate_body

if TYPE_CHECKING:
    from banana2_async._client import AsyncBanana2

    from ._asgi import SimulatorApp
    from ._server import SimulatorServer
    from ._transport import SimulatorTransport

__all__ = [
    "DEFAULT_API_KEY",
    "DEFAULT_CREDITS",
    "DEFAULT_LATENCY",
    "IN_PROCESS_BASE_URL",
    "MODEL",
    "Simulator",
]

IN_PROCESS_BASE_URL: Final = "https://simulator.banana2.invalid"
DEFAULT_API_KEY: Final = "sk-sim-test"
DEFAULT_CREDITS: Final = 1_000_000
MODEL: Final = "nano-banana-2"
DEFAULT_LATENCY: Final[Mapping[str, ShiftedLogNormal]] = {
    "1k": ShiftedLogNormal(floor=6.0, median_extra=5.0, sigma=0.5, cap=56.0),
    "2k": ShiftedLogNormal(floor=9.0, median_extra=7.0, sigma=0.5, cap=79.0),
    "4k": ShiftedLogNormal(floor=15.0, median_extra=12.0, sigma=0.5, cap=135.0),
}
"""Seconds a task takes per resolution: medians of 11, 16 and 27 s, a long right tail, capped at
the floor plus ten times the median extra time."""


_MARKER_BYTES: Final = MARKER.encode()

_Image = tuple[str, str, str, str]


class Simulator:
    """A stateful, offline fake of the NanoBanana 2 API.

    It keeps accounts and their credits, runs tasks on a latency model, injects
    faults and counts what it saw. Serve it in-process with `transport`, or
    over loopback with `serve`.

    Args:
        api_key: the key of the account created with the simulator.
        credits: that account's starting credits.
        speed: divides every latency; ``1000`` turns seconds into milliseconds,
            ``math.inf`` finishes tasks at once.
        latency: for each resolution (``"1k"``, ``"2k"``, ``"4k"``), the seconds a task
            takes: a `ShiftedLogNormal`, or a ``(low, high)`` pair drawn uniformly.
            Default: `DEFAULT_LATENCY`.
        seed: seeds latencies, task ids and fault probabilities.
        clock: the time source in seconds, e.g. a `ManualClock`.
        result_ttl: seconds a result URL stays valid after the task finished (None: forever).
    """

    __slots__ = (
        "_accounts",
        "_api_key",
        "_clock",
        "_created",
        "_credits_spent",
        "_fault_rng",
        "_id_rng",
        "_latency",
        "_latency_rng",
        "_lock",
        "_polls",
        "_prompts",
        "_request_count",
        "_requests",
        "_result_ttl",
        "_rules",
        "_speed",
        "_tasks",
    )

    def __init__(
        self,
        *,
        api_key: str = DEFAULT_API_KEY,
        credits: int = DEFAULT_CREDITS,
        speed: float = 1.0,
        latency: Mapping[str, ShiftedLogNormal | tuple[float, float]] | None = None,
        seed: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        result_ttl: float | None = None,
    ) -> None:
        if not speed > 0:
            raise ValueError("speed must be positive")
        table = DEFAULT_LATENCY if latency is None else latency
        models = {resolution: latency_model(resolution, value) for resolution, value in table.items()}
        missing = set(DEFAULT_LATENCY) - set(models)
        if missing:
            raise ValueError(f"latency has no entry for {', '.join(sorted(missing))}")
        self._api_key = api_key
        self._speed = speed
        self._latency: dict[str, LatencyModel] = models
        self._clock = clock
        self._result_ttl = result_ttl
        self._lock = threading.Lock()
        self._latency_rng = random.Random(seed)
        self._id_rng = random.Random(None if seed is None else seed + 1)
        self._fault_rng = random.Random(None if seed is None else seed + 2)
        self._accounts: dict[str, int] = {api_key: credits}
        self._tasks: dict[str, Task] = {}
        self._rules: list[FaultRule] = []
        self._requests: Counter[tuple[str, int]] = Counter()
        self._polls: dict[str, list[float]] = {}
        self._prompts: Counter[str] = Counter()
        self._credits_spent = 0
        self._created = 0
        self._request_count = 0

    def __repr__(self) -> str:
        return f"Simulator(speed={self._speed}, tasks={len(self._tasks)}, accounts={len(self._accounts)})"

    @property
    def api_key(self) -> str:
        """The key of the account created with the simulator."""
        return self._api_key

    @property
    def speed(self) -> float:
        """The factor every latency is divided by."""
        return self._speed

    @property
    def base_url(self) -> str:
        """The base URL the in-process transport answers for."""
        return IN_PROCESS_BASE_URL

    # Accounts

    def add_account(self, api_key: str, *, credits: int = DEFAULT_CREDITS) -> None:
        """Accept ``api_key`` from now on, with ``credits`` to spend."""
        with self._lock:
            self._accounts[api_key] = credits

    def remove_account(self, api_key: str) -> None:
        """Reject ``api_key`` from now on (401), as if it had been revoked."""
        with self._lock:
            self._accounts.pop(api_key, None)

    def credits(self, api_key: str | None = None) -> int:
        """The credits left on an account (the simulator's own by default). Raises KeyError if unknown."""
        with self._lock:
            return self._accounts[api_key or self.api_key]

    def set_credits(self, credits: int, *, api_key: str | None = None) -> None:
        """Set the credits left on an account (the simulator's own by default)."""
        with self._lock:
            key = api_key or self.api_key
            if key not in self._accounts:
                raise KeyError(key)
            self._accounts[key] = credits

    # Faults

    def inject(
        self,
        fault: Fault,
        *,
        on: Endpoint | None = None,
        times: int | None = None,
        probability: float | None = None,
    ) -> FaultRule:
        """Make ``fault`` happen, and return the rule (``rule.fired``, ``rule.cancel()``).

        Args:
            on: ``"generate"``, ``"status"`` or ``"result"``; by default every
                endpoint the fault can act on.
            times: fire on the next ``times`` matching requests only.
            probability: fire on each matching request with this probability.
                Without ``times`` or ``probability`` the fault hits every matching request.

        Raises:
            ValueError: the fault cannot act on ``on`` (a task fault on ``"status"``, say).
        """
        endpoints = fault.endpoints
        if on is not None:
            if on not in endpoints:
                raise ValueError(f"a {fault.kind} fault cannot act on {on!r}; it acts on {sorted(endpoints)}")
            endpoints = frozenset({on})
        rule = FaultRule(fault, endpoints=endpoints, times=times, probability=probability)
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear_faults(self) -> None:
        """Remove every injected fault."""
        with self._lock:
            for rule in self._rules:
                rule.cancel()
            self._rules.clear()

    # Observation

    @property
    def stats(self) -> SimulatorStats:
        """A snapshot of the counters."""
        with self._lock:
            return SimulatorStats(
                requests=dict(self._requests),
                poll_times={task_id: tuple(times) for task_id, times in self._polls.items()},
                tasks_per_prompt=dict(self._prompts),
                credits_spent=self._credits_spent,
                tasks_created=self._created,
            )

    def reset_stats(self) -> None:
        """Zero every counter; tasks, accounts and faults stay."""
        with self._lock:
            self._requests.clear()
            self._polls.clear()
            self._prompts.clear()
            self._credits_spent = 0
            self._created = 0

    def tasks(self) -> list[SimulatedTask]:
        """Every task created so far, oldest first, as the next poll would see it."""
        with self._lock:
            now = self._clock()
            return [self._snapshot(task, now) for task in self._tasks.values()]

    def task(self, task_id: str) -> SimulatedTask:
        """One task, as the next poll would see it. Raises KeyError if unknown."""
        with self._lock:
            return self._snapshot(self._tasks[task_id], self._clock())

    def _snapshot(self, task: Task, now: float) -> SimulatedTask:
        return SimulatedTask(
            task_id=task.task_id,
            prompt=task.request.prompt,
            type=task.request.type,
            status=task.status(now),
            request=task.request.as_sent(),
            credits=task.request.credits,
            created=task.created,
            finishes=task.finished_at,
            poll_times=tuple(self._polls.get(task.task_id, ())),
        )

    # Faces

    def transport(self) -> SimulatorTransport:
        """An httpx transport that answers from this simulator, in-process, without sockets."""
        from ._transport import SimulatorTransport

        return SimulatorTransport(self)

    def asgi_app(self) -> SimulatorApp:
        """An ASGI application that answers from this simulator."""
        from ._asgi import SimulatorApp

        return SimulatorApp(self)

    def serve(self, *, host: str = "127.0.0.1", port: int = 0) -> SimulatorServer:
        """A loopback HTTP server for this simulator: use it with ``with`` or ``async with``.

        Needs the ``simulator`` extra (uvicorn). ``port=0`` takes a free port.
        """
        from ._server import SimulatorServer

        return SimulatorServer(self, host=host, port=port)

    def client(self, **options: Any) -> AbstractAsyncContextManager[AsyncBanana2]:
        """An `AsyncBanana2` wired to this simulator in-process, for ``async with``.

        ``options`` go to `AsyncBanana2`. By default the key is the
        simulator's, and the poll interval and deadline are the client's
        defaults divided by `speed`. The client and its httpx client are
        closed when the block ends.
        """
        from ._connect import connect

        return connect(self, **options)

    # Requests

    def handle(
        self,
        method: str,
        path: str,
        *,
        query: str = "",
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        base_url: str = IN_PROCESS_BASE_URL,
    ) -> Reply:
        """Answer one HTTP request as the API would, faults included.

        ``base_url`` is where the caller reached the simulator; result URLs
        point there. Header names are matched without regard to case.
        """
        reply, finish = self._respond(method, path, query=query, headers=headers, body=body, base_url=base_url)
        return reply if finish is None else finish()

    def _respond(
        self,
        method: str,
        path: str,
        *,
        query: str = "",
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        base_url: str = IN_PROCESS_BASE_URL,
    ) -> tuple[Reply, Callable[[], Reply] | None]:
        """`handle` in two steps: the answer, and what is left to do to it (``None`` if nothing).

        The second step renders an image or builds a compression bomb: the
        faces run it in a worker thread, off their event loop.
        """
        lowered = {name.lower(): value for name, value in (headers or {}).items()}
        image: _Image | None = None
        bomb: Fault | None = None
        with self._lock:
            self._request_count += 1
            request_id = f"sim-{self._request_count:06d}"
            now = self._clock()
            endpoint, allowed = route(path)
            if endpoint is None:
                reply = error(404, f"no such endpoint: {method} {path}", headers=(("x-request-id", request_id),))
            elif method.upper() not in allowed:
                message = f"{path} takes {' or '.join(allowed)}, not {method}"
                reply = error(405, message, headers=(("x-request-id", request_id),))
            else:
                reply, image, bomb = self._dispatch(endpoint, path, query, lowered, body, base_url, now, request_id)
            self._requests[(endpoint or "other", DROPPED if reply.drop else reply.status)] += 1
        if image is None and bomb is None:
            return reply, None
        return reply, partial(_finish, reply, image, bomb)

    def _dispatch(
        self,
        endpoint: Endpoint,
        path: str,
        query: str,
        headers: Mapping[str, str],
        body: bytes,
        base_url: str,
        now: float,
        request_id: str,
    ) -> tuple[Reply, _Image | None, Fault | None]:
        task_id = ""
        if endpoint == "status":
            task_id = parse_qs(query, keep_blank_values=True).get("task_id", [""])[0]
            if task_id:
                self._polls.setdefault(task_id, []).append(now)

        fault = pick_fault(self._rules, endpoint, "arrival", self._fault_rng)
        key = _bearer(headers)
        account = key if key in self._accounts else None
        image = None
        if fault is not None:
            reply = fault_reply(fault, key)
        elif endpoint == "result":
            reply, image = self._result(path, now)
        elif account is None:
            reply = error(401, "unauthorized: API key missing or invalid")
        elif endpoint == "generate":
            reply = self._generate(account, body, now)
        else:
            reply = self._status(account, task_id, base_url, now)
        reply = replace(reply, headers=(*reply.headers, ("x-request-id", request_id)))

        fault = pick_fault(self._rules, endpoint, "answer", self._fault_rng)
        bomb = None
        if fault is not None and fault.kind == "compression_bomb":
            bomb = fault
        elif fault is not None:
            reply = answer_fault(reply, fault, key)
        self._rules = [rule for rule in self._rules if rule.active]
        return reply, image, bomb

    def _generate(self, api_key: str, body: bytes, now: float) -> Reply:
        try:
            request = read_generate_body(body)
        except BadRequest as exc:
            return error(400, str(exc))
        cost = request.credits
        balance = self._accounts[api_key]
        if balance < cost:
            return error(402, f"insufficient credits: a {request.type} task costs {cost}, the account has {balance}")

        self._accounts[api_key] = balance - cost
        self._credits_spent += cost
        self._created += 1
        self._prompts[request.prompt] += 1
        task_id = self._new_task_id()
        model = self._latency[request.resolution]
        seconds = 0.0 if math.isinf(self._speed) else model.sample(self._latency_rng) / self._speed
        task = Task(task_id, api_key, request, now, now + seconds)
        self._tasks[task_id] = task

        fault = pick_fault(self._rules, "generate", "create", self._fault_rng)
        if fault is not None and fault.kind == "fail_task":
            task.failure = (fault.statuses[0], fault.message)
        elif fault is not None and fault.kind == "in_flight_statuses":
            task.interim = fault.statuses
        elif fault is not None and fault.kind in ("empty_success", "poisoned_result_url"):
            task.response = fault.value
        elif fault is not None and fault.form is not None:
            task.failure = ("FAILED", f"generation failed for the API key {MARKER}")
            task.echo = echo_text(api_key, fault.form, in_json=True).encode("utf-8")
        elif fault is not None:
            return fault_reply(fault)
        return ok({"task_id": task_id, "type": request.type, "status": "IN_PROGRESS"})

    def _new_task_id(self) -> str:
        while True:
            task_id = f"n{self._id_rng.getrandbits(56):014x}nb2"
            if task_id not in self._tasks:
                return task_id

    def _status(self, api_key: str, task_id: str, base_url: str, now: float) -> Reply:
        if not task_id:
            return error(400, "task_id: required, as a query parameter")
        task = self._tasks.get(task_id)
        if task is None or task.api_key != api_key:
            return error(404, f"task not found: {task_id}")
        status = task.status(now)
        finished = now >= task.finished_at
        data: dict[str, Any] = {
            "task_id": task.task_id,
            "status": status,
            "type": task.request.type,
            "model": MODEL,
            "consumed_credits": task.request.credits if finished else None,
            "response": None,
            "request": task.request.as_sent(),
            "created_at": task.created_at,
        }
        if finished and task.failure:
            data["error"] = task.failure[1]
        elif finished and task.response is RESULT_URL:
            data["response"] = [f"{base_url.rstrip('/')}/results/{task.task_id}/0.{task.extension()}"]
        elif finished and task.response is MISSING:
            del data["response"]
        elif finished:
            data["response"] = task.response
        reply = ok(data)
        if finished and task.echo is not None:
            return replace(reply, body=reply.body.replace(_MARKER_BYTES, task.echo))
        return reply

    def _result(self, path: str, now: float) -> tuple[Reply, _Image | None]:
        task_id, _, name = path.removeprefix("/results/").partition("/")
        task = self._tasks.get(task_id)
        if task is None or name != f"0.{task.extension()}" or now < task.finished_at or task.failure:
            return error(404, f"no such result: {path}"), None
        if self._result_ttl is not None and now > task.finished_at + self._result_ttl:
            return error(403, "the result URL has expired"), None
        request = task.request
        reply = Reply(200, (("content-type", content_type(request.output_format)),), b"")
        return reply, (request.prompt, request.aspect_ratio, request.resolution, request.output_format)


def _bearer(headers: Mapping[str, str]) -> str:
    """The key of an ``Authorization: Bearer <key>`` header; empty for any other."""
    scheme, _, key = headers.get("authorization", "").strip().partition(" ")
    return key.strip() if scheme.lower() == "bearer" else ""


def _finish(reply: Reply, image: _Image | None, bomb: Fault | None) -> Reply:
    """The costly part of an answer: render its image, then wrap it in a compression bomb."""
    if image is not None:
        reply = replace(reply, body=render_image(*image))
    if bomb is not None:
        reply = compression_bomb(reply, bomb)
    return reply
