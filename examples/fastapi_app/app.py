"""A FastAPI backend that generates images with banana2_async.

One `AsyncBanana2` client lives as long as the app (its lifespan), so every
request shares ONE poller: a thousand browsers asking about one task cost
the polls of one task.

    POST /images                         submit; 202 with the task id
    GET  /images/{task_id}               the task's state, from the shared poller
    GET  /images/{task_id}/result        wait for the images (?timeout=, 504 when it runs out)
    GET  /images/{task_id}/events        server-sent events: the task's progress until it settles

Run it with ``uvicorn app:app`` (``BANANA2_API_KEY`` set), or against the
simulator: ``BANANA2_BASE_URL=http://127.0.0.1:8000 BANANA2_API_KEY=sk-sim-test``
after ``python -m banana2_async.testing serve --port 8000``.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Annotated, Any, Literal

import anyio
from fastapi import FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from banana2_async import (
    APIConnectionError,
    APIResponseError,
    APIStatusError,
    AsyncBanana2,
    AuthenticationError,
    BadRequestError,
    Banana2Error,
    ClientClosedError,
    InsufficientCreditsError,
    InvalidRequestError,
    NotFoundError,
    RateLimitError,
    SubmissionUncertainError,
    TaskFailedError,
    TaskHandle,
    TaskTimeoutError,
)

ClientFactory = Callable[[], AbstractAsyncContextManager[AsyncBanana2]]
State = Literal["pending", "succeeded", "failed"]

MAX_REMEMBERED_TASKS = 10_000


class ImageRequest(BaseModel):
    """The body of ``POST /images``."""

    prompt: str
    images: list[str] | None = None
    aspect_ratio: Literal["1:1", "3:2", "2:3", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9"] | None = None
    resolution: Literal["1k", "2k", "4k"] | None = None
    output_format: Literal["png", "jpeg"] | None = None


class TaskView(BaseModel):
    """A task as this backend reports it."""

    task_id: str
    state: State
    images: list[str] = Field(default_factory=list)
    error: str | None = None


class Tasks:
    """The handles this backend holds, by task id: the poller watches each task once.

    A task submitted here, or asked about for the first time, gets one
    handle; every later request for it reads that handle. Settled tasks are
    remembered up to ``limit``, oldest forgotten first.
    """

    def __init__(self, client: AsyncBanana2, *, limit: int = MAX_REMEMBERED_TASKS) -> None:
        self.client = client
        self._handles: OrderedDict[str, TaskHandle] = OrderedDict()
        self._limit = limit

    def add(self, handle: TaskHandle) -> None:
        """Remember a freshly submitted task's handle."""
        self._handles[handle.task_id] = handle
        while len(self._handles) > self._limit:
            self._handles.popitem(last=False)

    def get(self, task_id: str) -> TaskHandle:
        """The handle of ``task_id``; the shared poller starts watching a task it does not know.

        A handle whose own deadline passed is replaced: the task may still finish.
        """
        handle = self._handles.get(task_id)
        if handle is None or isinstance(handle.exception(), TaskTimeoutError):
            handle = self.client.track(task_id)
            self.add(handle)
        return handle


# --8<-- [start:settled]
async def settled(handle: TaskHandle, seconds: float) -> bool:
    """Wait up to ``seconds`` for ``handle`` to settle; whether it has.

    It waits on a done callback, not by awaiting the handle, so a request that
    gives up never makes the poller let go of a task others still ask about.
    """
    if handle.done():
        return True
    event = anyio.Event()

    def wake(_: TaskHandle) -> None:
        event.set()

    handle.add_done_callback(wake)
    try:
        with anyio.move_on_after(seconds):
            await event.wait()
    finally:
        handle.remove_done_callback(wake)
    return handle.done()


# --8<-- [end:settled]


def view(handle: TaskHandle) -> TaskView:
    """What a handle says about its task, without waiting."""
    if not handle.done():
        return TaskView(task_id=handle.task_id, state="pending")
    error = handle.exception()
    if error is None:
        return TaskView(task_id=handle.task_id, state="succeeded", images=handle.result_nowait().images)
    return TaskView(task_id=handle.task_id, state="failed", error=str(error))


def http_error(exc: Banana2Error) -> HTTPException:
    """The HTTP answer of this backend for an error of the SDK."""
    headers: dict[str, str] = {}
    if isinstance(exc, (InvalidRequestError, BadRequestError)):
        status = 422  # the caller's input was rejected
    elif isinstance(exc, NotFoundError):
        status = 404
    elif isinstance(exc, TaskTimeoutError):
        status = 504
    elif isinstance(exc, RateLimitError):
        status = 503
        headers["Retry-After"] = str(math.ceil(exc.retry_after or 1))
    elif isinstance(exc, (AuthenticationError, InsufficientCreditsError, ClientClosedError)):
        status = 503  # our account or our shutdown: nothing the caller did
    elif isinstance(exc, (TaskFailedError, SubmissionUncertainError, APIConnectionError, APIResponseError)):
        status = 502  # the image service failed us
    elif isinstance(exc, APIStatusError):
        status = 502
    else:
        status = 500
    detail: dict[str, Any] = {"error": type(exc).__name__, "message": str(exc)}
    task_id = getattr(exc, "task_id", None)
    if task_id is not None:
        detail["task_id"] = task_id
    return HTTPException(status_code=status, detail=detail, headers=headers or None)


def create_app(client_factory: ClientFactory = AsyncBanana2) -> FastAPI:
    """The app. ``client_factory()`` makes the client; by default ``AsyncBanana2()`` from the environment."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with client_factory() as client:
            app.state.tasks = Tasks(client)
            yield

    app = FastAPI(title="banana2-async example", lifespan=lifespan)

    def tasks_of(request: Request) -> Tasks:
        tasks: Tasks = request.app.state.tasks
        return tasks

    @app.post("/images", status_code=202)
    async def submit(body: ImageRequest, request: Request, response: Response) -> TaskView:
        """Submit a task and answer at once with its id; the shared poller takes it from there."""
        tasks = tasks_of(request)
        try:
            handle = await tasks.client.submit(
                body.prompt,
                images=body.images,
                aspect_ratio=body.aspect_ratio,
                resolution=body.resolution,
                output_format=body.output_format,
            )
        except Banana2Error as exc:
            raise http_error(exc) from exc
        tasks.add(handle)
        response.headers["Location"] = f"/images/{handle.task_id}"
        return view(handle)

    @app.get("/images/{task_id}")
    async def state(task_id: str, request: Request) -> TaskView:
        """The task's state as the shared poller last saw it; sends no request of its own."""
        handle = tasks_of(request).get(task_id)
        error = handle.exception()
        if isinstance(error, NotFoundError):
            raise http_error(error)
        return view(handle)

    @app.get("/images/{task_id}/result")
    async def result(
        task_id: str,
        request: Request,
        wait: Annotated[float, Query(alias="timeout", gt=0, le=300, description="seconds to wait at most")] = 30.0,
    ) -> TaskView:
        """Wait up to ``?timeout=`` seconds for the images: 504 when time runs out, the task's error if it failed."""
        handle = tasks_of(request).get(task_id)
        if not await settled(handle, wait):
            raise http_error(TaskTimeoutError(task_id))
        error = handle.exception()
        if isinstance(error, Banana2Error):
            raise http_error(error)
        if error is not None:
            raise error
        return view(handle)

    @app.get("/images/{task_id}/events")
    async def events(
        task_id: str,
        request: Request,
        heartbeat: Annotated[float, Query(gt=0, le=60, description="seconds between two progress events")] = 5.0,
    ) -> StreamingResponse:
        """Server-sent events: ``pending`` with the seconds waited, then ``succeeded`` or ``failed``, then the end."""
        handle = tasks_of(request).get(task_id)

        async def stream() -> AsyncIterator[str]:
            started = anyio.current_time()
            while not handle.done():
                waited = round(anyio.current_time() - started, 3)
                yield sse("pending", {**view(handle).model_dump(), "waited": waited})
                await settled(handle, heartbeat)
            final = view(handle)
            yield sse(final.state, final.model_dump())

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.exception_handler(Banana2Error)
    async def unexpected(request: Request, exc: Banana2Error) -> JSONResponse:
        error = http_error(exc)
        return JSONResponse({"detail": error.detail}, status_code=error.status_code, headers=error.headers)

    return app


def sse(event: str, data: dict[str, Any]) -> str:
    """One server-sent event."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


app = create_app()
