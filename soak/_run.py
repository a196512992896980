"""The soak run: many tasks through one client, against the faulty loopback simulator.

`run_soak` starts the simulator's server in a process of its own, submits
``tasks`` prompts through one `AsyncBanana2` (``concurrency`` of them in
flight), awaits every handle, closes the client, and then holds what the
client saw against the simulator's own record (`soak._verify`).

Each outcome is written to a scratch file as it happens rather than kept in
memory, so that the memory measured across the run is the SDK's, not the
soak's bookkeeping; the file is read back, and removed, once the client has
closed.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import secrets
import subprocess
import sys
import tempfile
import time
import traceback
import tracemalloc
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

import anyio
import httpx

from banana2_async import (
    AsyncBanana2,
    GenerationResult,
    SubmissionUncertainError,
    TaskFailedError,
    TaskHandle,
)

from ._server import FaultMix, ServerConfig

__all__ = ["SoakConfig", "SoakRun", "open_sockets", "run_soak"]

_ASPECTS: Final = ("1:1", "16:9", "9:16", "4:3", "3:4", "21:9")
_DEADLINE_GRACE: Final = 2.0


@dataclass(frozen=True)
class SoakConfig:
    """How big and how hostile a soak is.

    ``speed`` divides the simulator's task durations (6-135 s, medians 11-27 s); the client
    polls at the provider's 2-3 s divided by the same speed, and its deadline
    is 600 s divided by it (at least 10 s). ``read_timeout`` is the client's;
    slow answers come 1.5 times later.

    Two settings exist to show that the soak catches what it should:
    ``retry_uncertain_submits`` (the client's opt-in, which may pay twice)
    and ``keep_results`` (the soak itself keeps every settled handle, a leak).
    """

    tasks: int = 10_000
    concurrency: int = 64
    speed: float = 100.0
    seed: int = 20250320
    backend: str = "asyncio"
    read_timeout: float = 1.0
    edit_share: float = 0.1
    phases: int = 10
    trace_memory: bool = True
    max_concurrent_submits: int = 16
    max_concurrent_polls: int = 48
    retry_uncertain_submits: bool = False
    keep_results: bool = False
    faults: FaultMix = field(default_factory=FaultMix)

    @property
    def poll_interval(self) -> tuple[float, float]:
        """The client's poll interval, at the simulator's pace."""
        return (2.0 / self.speed, 3.0 / self.speed)

    @property
    def wait_timeout(self) -> float:
        """Each handle's deadline: the default 600 s at the simulator's pace, and at least 30 s.

        A loaded machine can starve the client for seconds; a timeout in the soak
        must mean the SDK lost a task, not that the machine was busy.
        """
        return max(600.0 / self.speed, 30.0)


@dataclass
class SoakRun:
    """What the client side saw; `soak._verify` holds it against the server's record."""

    config: SoakConfig
    api_key: str
    base_url: str = ""
    outcomes: list[dict[str, Any]] = field(default_factory=list)
    wall: float = 0.0
    kinds: Counter[str] = field(default_factory=Counter)
    registry_after: int = -1
    pending_after: int = -1
    leaked_tasks: list[str] = field(default_factory=list)
    sockets_before: int = 0
    sockets_after_close: int = 0
    log_records: int = 0
    key_in_logs: int = 0
    key_in_text: list[str] = field(default_factory=list)
    polls_sent: int = 0
    memory: list[tuple[int, int, int]] = field(default_factory=list)
    registry_at_barriers: list[int] = field(default_factory=list)
    server_report: dict[str, Any] = field(default_factory=dict)


def open_sockets() -> int:
    """How many of this process's file descriptors are sockets (Linux ``/proc``; -1 elsewhere)."""
    fd_dir = "/proc/self/fd"
    if not os.path.isdir(fd_dir):
        return -1
    count = 0
    for name in os.listdir(fd_dir):
        try:
            if os.readlink(os.path.join(fd_dir, name)).startswith("socket:"):
                count += 1
        except OSError:
            continue  # the descriptor listdir itself used, closed since
    return count


class _KeyWatch(logging.Handler):
    """Formats every log record, as a real handler would, and counts those that show the key."""

    def __init__(self, key: str) -> None:
        super().__init__(logging.DEBUG)
        self.key = key
        self.records = 0
        self.leaks = 0
        self.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.records += 1
        if self.key in self.format(record):
            self.leaks += 1


class _Server:
    """The simulator's server process: started, asked for its record, stopped."""

    def __init__(self, config: ServerConfig) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-c", "from soak._server import main; raise SystemExit(main())"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        assert self._process.stdin is not None
        assert self._process.stdout is not None
        self._stdin, self._stdout = self._process.stdin, self._process.stdout
        self._stdin.write(config.to_json() + "\n")
        self._stdin.flush()
        ready = self._stdout.readline().split()
        if len(ready) != 2 or ready[0] != "READY":
            self.stop()
            raise RuntimeError(f"the soak's server did not start: {ready!r}")
        self.base_url: str = ready[1]

    def report(self) -> dict[str, Any]:
        self._stdin.write("report\n")
        self._stdin.flush()
        report: dict[str, Any] = json.loads(self._stdout.readline())
        return report

    def stop(self) -> None:
        if self._process.poll() is None:
            try:
                self._stdin.write("quit\n")
                self._stdin.close()
            except OSError:
                pass
            try:
                self._process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._stdout.close()


def _cause(exc: BaseException) -> str:
    """What an error was raised from: ``APITimeoutError:read-timeout``, ``InternalServerError:500``, ..."""
    cause = exc.__cause__
    if cause is None:
        return ""
    detail = getattr(cause, "kind", None) or getattr(cause, "status_code", None) or ""
    return f"{type(cause).__name__}:{detail}"


def _options(index: int) -> dict[str, Any]:
    """A varied but reproducible request for task number ``index``."""
    options: dict[str, Any] = {"aspect_ratio": _ASPECTS[index % len(_ASPECTS)]}
    if index % 10 == 3:
        options["resolution"] = "2k"
    if index % 4 == 1:
        options["output_format"] = "jpeg"
    return options


class _Client:
    """The client side of one soak: its workers, outcome log and checkpoints."""

    def __init__(self, run: SoakRun, out: IO[str]) -> None:
        self.run = run
        self.config = run.config
        self.out = out
        self.next_index = 0
        self.done = 0
        self.kept: list[TaskHandle] = []

    def _scan(self, *objects: object) -> None:
        key = self.run.api_key
        for obj in objects:
            if isinstance(obj, BaseException):
                texts = [str(obj), repr(obj), "".join(traceback.format_exception(obj))]
            else:
                texts = [repr(obj)]
            for text in texts:
                if key in text:
                    self.run.key_in_text.append(text[:200])

    def _record(self, kind: str, **fields: Any) -> None:
        self.run.kinds[kind] += 1
        self.out.write(json.dumps({"kind": kind, **fields}) + "\n")
        self.done += 1

    def sample(self) -> None:
        gc.collect()
        traced = tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else 0
        self.run.memory.append((self.done, traced, sys.getallocatedblocks()))

    async def worker(self, client: AsyncBanana2, edit_every: int, stop: int) -> None:
        while self.next_index < stop:
            index = self.next_index
            self.next_index += 1
            await self._one(client, index, edit_every)

    async def _one(self, client: AsyncBanana2, index: int, edit_every: int) -> None:
        prompt = f"soak {index:06d}: a lighthouse in a storm, plate {index % 97}"
        options = _options(index)
        if edit_every and index % edit_every == 0:
            options["images"] = [f"https://example.com/soak/{index}.png"]
        fmt = options.get("output_format", "png")
        try:
            handle = await client.submit(prompt, **options)
        except SubmissionUncertainError as exc:
            self._scan(exc)
            self._record("uncertain", prompt=prompt, request_prompt=exc.request.prompt, cause=_cause(exc))
            return
        except Exception as exc:
            self._scan(exc)
            self._record("submit-error", prompt=prompt, error=type(exc).__name__, message=str(exc))
            return
        await self._wait(handle, prompt, fmt)

    async def _wait(self, handle: TaskHandle, prompt: str, fmt: str) -> None:
        fields: dict[str, Any] = {"prompt": prompt, "task_id": handle.task_id, "format": fmt}
        attached = anyio.current_time()
        result: GenerationResult | None = None
        with anyio.move_on_after(self.config.wait_timeout + _DEADLINE_GRACE) as scope:
            try:
                result = await handle
            except TaskFailedError as exc:
                self._scan(exc, handle)
                self._record("failed", status=exc.status, message=exc.message, **fields)
                return
            except Exception as exc:
                # Any other error is a failure of the soak, reported with the rest rather than ending the run.
                self._scan(exc, handle)
                waited = round(anyio.current_time() - attached, 3)
                self._record("error", error=type(exc).__name__, message=str(exc), waited=waited, **fields)
                return
        if self.config.keep_results:
            self.kept.append(handle)
        if scope.cancelled_caught or result is None:
            self._record("hung", **fields)
            return
        self._scan(result, handle)
        self._record("succeeded", images=result.images, credits=result.consumed_credits, **fields)


async def _drive(run: SoakRun, outcomes_path: Path) -> None:
    config = run.config
    baseline_tasks = {task.id for task in anyio.get_running_tasks()}
    run.sockets_before = open_sockets()
    watch = _KeyWatch(run.api_key)
    root = logging.getLogger()
    previous_level = root.level
    root.addHandler(watch)
    root.setLevel(logging.DEBUG)
    edit_every = round(1 / config.edit_share) if config.edit_share > 0 else 0
    try:
        with outcomes_path.open("w", encoding="utf-8") as out:
            side = _Client(run, out)
            side.sample()
            started = time.perf_counter()
            async with AsyncBanana2(
                run.api_key,
                base_url=run.base_url,
                poll_interval=config.poll_interval,
                wait_timeout=config.wait_timeout,
                timeout=httpx.Timeout(config.read_timeout, connect=5.0, pool=30.0),
                seed=config.seed,
                max_concurrent_submits=config.max_concurrent_submits,
                max_concurrent_polls=config.max_concurrent_polls,
                retry_uncertain_submits=config.retry_uncertain_submits,
            ) as client:
                # In phases, each ending with every handle settled: memory is compared between quiet moments.
                phases = max(1, min(config.phases, config.tasks))
                for phase in range(1, phases + 1):
                    stop = config.tasks * phase // phases
                    async with anyio.create_task_group() as group:
                        for _ in range(config.concurrency):
                            group.start_soon(side.worker, client, edit_every, stop)
                    run.registry_at_barriers.append(client.statistics().tasks_watched)
                    side.sample()
                run.wall = time.perf_counter() - started
                figures = client.statistics()
                run.registry_after = figures.tasks_watched
                run.pending_after = figures.handles_pending
                run.polls_sent = figures.polls_sent
                side._scan(client, client.http_client)
            side.sample()
    finally:
        root.removeHandler(watch)
        root.setLevel(previous_level)
    run.log_records, run.key_in_logs = watch.records, watch.leaks
    run.sockets_after_close = open_sockets()
    run.leaked_tasks = [str(task.name) for task in anyio.get_running_tasks() if task.id not in baseline_tasks]


def run_soak(config: SoakConfig) -> SoakRun:
    """Run one soak and return what the client saw, with the server's record attached."""
    api_key = f"sk-soak-{secrets.token_hex(16)}"
    run = SoakRun(config=config, api_key=api_key)
    with tempfile.TemporaryDirectory(prefix="banana2-soak-") as scratch:
        outcomes_path = Path(scratch) / "outcomes.jsonl"
        server = _Server(ServerConfig(api_key=api_key, speed=config.speed, seed=config.seed, faults=config.faults))
        try:
            run.base_url = server.base_url
            if config.trace_memory:
                tracemalloc.start()
            try:
                anyio.run(_drive, run, outcomes_path, backend=config.backend)
            finally:
                if config.trace_memory:
                    tracemalloc.stop()
            run.server_report = server.report()
        finally:
            server.stop()
        with outcomes_path.open(encoding="utf-8") as lines:
            run.outcomes = [json.loads(line) for line in lines]
    return run
