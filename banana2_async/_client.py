"""AsyncBanana2: the calls users make, on one wire, one poller and one task group."""

from __future__ import annotations

import enum
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio
import httpx
from anyio.abc import TaskGroup, TaskStatus

from ._exceptions import APITimeoutError, FailureKind, InvalidRequestError
from ._handle import AsCompleted, TaskHandle
from ._http import Wire
from ._options import client_settings, wait_timeout_of
from ._poller import Poller
from ._requests import RequestFactory
from ._secret import Secret, redact_library_logs
from ._send import open_sender
from ._throttle import Throttle
from ._types import (
    DEFAULT_DOWNLOAD_MAX_BYTES,
    DEFAULT_DOWNLOAD_RETRIES,
    DEFAULT_DOWNLOAD_TIMEOUT,
    NOT_GIVEN,
    ClientStatistics,
    NotGiven,
)
from ._validate import check_task_id

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine

    from typing_extensions import Unpack

    # Bulk runs and downloads (sqlite3 and all), and the models (pydantic's model machinery),
    # are imported when first used.
    from ._batch import Batch
    from ._models import GenerationRequest, GenerationResult, TaskInfo
    from ._options import BatchOptions, ClientOptions, EditOptions, TaskOptions

__all__ = ["AsyncBanana2", "ClientState"]

logger = logging.getLogger("banana2_async")


class ClientState(enum.Enum):
    """Where a client is in its life: made, open (``async with``), closed."""

    UNOPENED = "not started"
    OPENED = "open"
    CLOSED = "closed"


class _Lifecycle:
    """A client's life: the task group its poller runs in, from ``async with`` until closed, once."""

    __slots__ = ("_poller_scope", "state", "task_group")

    def __init__(self) -> None:
        self.state = ClientState.UNOPENED
        self.task_group: TaskGroup | None = None
        # Made when the poller starts: a cancel scope needs a running event loop, and building a client does not.
        self._poller_scope: anyio.CancelScope | None = None

    async def open(self, run_poller: Callable[..., Coroutine[Any, Any, None]]) -> None:
        """Enter a task group and start the poller in it, in a scope of its own."""
        if self.state is not ClientState.UNOPENED:
            raise RuntimeError(f"this AsyncBanana2 is {self.state.value}: create a new one")

        async def poller(*, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
            # Its own scope, so closing stops the poller without cancelling the code in the `async with` body.
            with anyio.CancelScope() as self._poller_scope:
                await run_poller(task_status=task_status)

        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        try:
            await task_group.start(poller)
        except BaseException as exc:
            task_group.cancel_scope.cancel()
            await task_group.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        self.task_group = task_group
        self.state = ClientState.OPENED

    def close(self) -> bool:
        """Mark the client closed and stop its poller; whether it was not closed already."""
        if self.state is ClientState.CLOSED:
            return False
        self.state = ClientState.CLOSED
        if self._poller_scope is not None:
            self._poller_scope.cancel()
        return True

    async def exit(
        self, aclose: Callable[[], Awaitable[None]], exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        """Close the client with ``aclose``, then leave the task group."""
        task_group = self.task_group
        try:
            await aclose()
        finally:
            if task_group is not None:
                # The body's own error is not the poller's: it propagates unwrapped,
                # but a cancellation must reach the task group to be honoured there.
                passed = exc if isinstance(exc, anyio.get_cancelled_exc_class()) else None
                await task_group.__aexit__(type(passed) if passed else None, passed, traceback if passed else None)

    def require_open(self) -> None:
        """Raise `RuntimeError` unless the client is open."""
        if self.state is ClientState.CLOSED:
            raise RuntimeError("this AsyncBanana2 is closed")
        if self.state is ClientState.UNOPENED:
            raise RuntimeError("use the client as 'async with AsyncBanana2(...) as client:' to submit or track tasks")


class AsyncBanana2:
    """The async client of the NanoBanana 2 image API.

    Use it as ``async with AsyncBanana2() as client:``. Every task it submits
    or tracks is watched by ONE poller per client, which polls each task
    every ``poll_interval`` seconds and settles the task's handles.

    Args:
        api_key: The API key; defaults to ``$BANANA2_API_KEY``.
        **options: The client's options, each described at `ClientOptions`.

    Raises:
        ConfigurationError: No API key, or an unsafe or invalid base URL.
        InvalidRequestError: An option is out of range.
        TypeError: An option that does not exist.
    """

    def __init__(self, api_key: str | None = None, **options: Unpack[ClientOptions]) -> None:
        settings = client_settings(api_key, options)
        self._wait_timeout = settings.wait_timeout
        self._submit_timeout = settings.submit_timeout
        self._retry_uncertain_submits = settings.retry_uncertain_submits
        self._rng = settings.rng
        self._throttle = Throttle(settings.budget, rng=self._rng)
        # A server may echo the key, in any spelling; it is blanked out of every answer before it is read.
        secret = Secret(settings.api_key)
        redact_library_logs(secret)
        sender = open_sender(
            http_client=settings.http_client,
            transport=settings.transport,
            timeout=settings.timeout,
            max_in_flight=settings.max_concurrent_submits + settings.max_concurrent_polls,
            secret=secret,
            request_timeout=settings.request_timeout,
        )
        requests = RequestFactory(
            sender.http_client, api_key=settings.api_key, base_url=settings.base_url, timeout=settings.timeout
        )
        self._wire = Wire(
            requests=requests,
            sender=sender,
            gate=self._throttle,
            secret=secret,
            base_url=settings.base_url,
            max_retries=settings.max_retries,
            retry_uncertain_submits=settings.retry_uncertain_submits,
            rng=self._rng,
        )
        self._poller = Poller(
            self._wire,
            interval=settings.interval,
            max_concurrent_polls=settings.max_concurrent_polls,
            throttle=self._throttle,
            not_found_grace=settings.not_found_grace,
            rng=self._rng,
            learn_first_poll=settings.learn_first_poll,
        )
        # Taking a slot yields once, as anyio's own calls do: a burst of submits over a transport
        # that never waits (an in-process one, say) still lets timers and other tasks run between them.
        self._submit_slots = anyio.Semaphore(settings.max_concurrent_submits)
        self._life = _Lifecycle()

    def __repr__(self) -> str:
        return f"<AsyncBanana2 base_url={str(self.base_url)!r} {self.state.value}>"

    @property
    def base_url(self) -> httpx.URL:
        """The API's address."""
        return self._wire.base_url

    @property
    def http_client(self) -> httpx.AsyncClient:
        """The httpx client requests go through."""
        return self._wire.http_client

    def statistics(self) -> ClientStatistics:
        """A snapshot of what the client is doing and has done: tasks watched, polls and submits sent, pauses."""
        poller, wire = self._poller, self._wire
        return ClientStatistics(
            tasks_watched=len(poller),
            handles_pending=len(poller.pending()),
            polls_sent=poller.polls_sent,
            poll_workers=poller.workers,
            submits_sent=wire.submits_sent,
            retries=wire.retries,
            rate_limit_pauses=self._throttle.budget.pauses,
            pause_remaining=self._throttle.pause_remaining() if self.state is ClientState.OPENED else 0.0,
        )

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def state(self) -> ClientState:
        """Where the client is in its life: made, open, closed."""
        return self._life.state

    async def __aenter__(self) -> AsyncBanana2:
        await self._life.open(self._poller.run)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> bool | None:
        await self._life.exit(self.aclose, exc, traceback)
        return None

    async def aclose(self) -> None:
        """Fail every pending handle with `ClientClosedError`, stop the poller, close connections.

        Safe to call more than once.
        """
        if self._life.close():
            self._poller.close()
            with anyio.CancelScope(shield=True):
                await self._wire.aclose()

    def _require_open(self) -> None:
        self._life.require_open()

    # -- tasks --------------------------------------------------------------------------------

    async def submit(self, prompt: str, **options: Unpack[TaskOptions]) -> TaskHandle:
        """Submit one task and return its handle at once; ``await handle`` for the result.

        Options (`TaskOptions`: ``type``, ``images``, ``aspect_ratio``,
        ``resolution``, ``output_format``) left out are not sent, so the
        server's defaults apply (text-to-image, 1:1, 1k, png). ``type`` is
        ``"edit"`` when ``images`` are given. ``wait_timeout`` overrides the
        client's default deadline.

        Raises:
            InvalidRequestError: An argument is invalid (nothing is sent).
            SubmissionUncertainError: The request may have been paid for
                without an answer; it is not sent again.
            APIStatusError: The server refused it (`InsufficientCreditsError`, ...).
            APIConnectionError: The server could not be reached.
        """
        from ._models import GenerationRequest

        fields: dict[str, Any] = dict(options)
        wait_timeout = fields.pop("wait_timeout", NOT_GIVEN)
        request = GenerationRequest(prompt=prompt, **fields)
        return await self.submit_request(request, wait_timeout=wait_timeout)

    async def submit_request(
        self, request: GenerationRequest, *, wait_timeout: float | NotGiven | None = NOT_GIVEN
    ) -> TaskHandle:
        """Submit a prepared `GenerationRequest`; otherwise the same as `submit`."""
        from ._models import GenerationRequest

        if not isinstance(request, GenerationRequest):
            raise InvalidRequestError("request must be a GenerationRequest", field="request")
        timeout = wait_timeout_of(wait_timeout, self._wait_timeout)
        self._require_open()
        deadline = anyio.current_time() + self._submit_timeout
        with anyio.CancelScope(deadline=deadline) as waiting:
            await self._submit_slots.acquire()
        if waiting.cancelled_caught:
            raise APITimeoutError(
                f"POST /api/generate was not sent within submit_timeout ({self._submit_timeout:g} s): "
                "no submit slot came free in time (max_concurrent_submits). It was never sent.",
                kind=FailureKind.NOT_SENT_IN_TIME,
                method="POST",
                path="/api/generate",
            )
        try:
            # The wire awaits a sent request's answer even for a cancelled caller, and nothing
            # between its return and `attach` yields: a task id the server charged for is never dropped.
            accepted = await self._wire.submit(request, deadline=deadline)
            return self._poller.attach(accepted.task_id, wait_timeout=timeout, request=request)
        finally:
            self._submit_slots.release()

    async def generate(self, prompt: str, **options: Unpack[TaskOptions]) -> GenerationResult:
        """Submit one task and wait for its result; see `submit` for the options and errors.

        Also raises `TaskFailedError` or `TaskTimeoutError` from the wait.
        Cancelled after the task was submitted (and so may be charged for),
        it logs a WARNING naming the task and how to pick it up again.
        """
        handle = await self.submit(prompt, **options)
        try:
            return await handle
        except anyio.get_cancelled_exc_class():
            logger.warning(
                "cancelled while waiting for task %s, which was submitted and may be charged for; "
                "its result can still be had with client.track(%r)",
                handle.task_id,
                handle.task_id,
            )
            raise

    async def edit(self, prompt: str, *, images: Sequence[str], **options: Unpack[EditOptions]) -> GenerationResult:
        """Edit 1-14 reference images with a text instruction and wait for the result (see `generate`)."""
        return await self.generate(prompt, type="edit", images=images, **options)

    async def status(self, task_id: str) -> TaskInfo:
        """One ``GET /api/status`` of ``task_id`` (retried on transient failures), no polling.

        Works without entering the client's context.
        """
        check_task_id(task_id)
        if self.state is ClientState.CLOSED:
            raise RuntimeError("this AsyncBanana2 is closed")
        return await self._wire.fetch_status_retrying(task_id)

    def track(self, task_id: str, *, wait_timeout: float | NotGiven | None = NOT_GIVEN) -> TaskHandle:
        """A handle on an existing task, watched by the shared poller.

        Tracking a task that is already watched adds a handle but no polls.
        A task not watched yet is polled at once.
        """
        check_task_id(task_id)
        timeout = wait_timeout_of(wait_timeout, self._wait_timeout)
        self._require_open()
        return self._poller.attach(task_id, wait_timeout=timeout, immediately=True)

    def as_completed(self, handles: Iterable[TaskHandle]) -> AsCompleted:
        """Yield each handle as it settles, successes and failures alike.

        Check each with ``await handle`` (returns or raises at once) or
        ``handle.exception()``. To leave the loop early and let go of the
        handles no one else awaits, close it: ``async with
        client.as_completed(handles) as results: async for done in results: ...``.
        """
        return AsCompleted(handles)

    # -- bulk runs and downloads ---------------------------------------------------------------

    def batch(self, requests: Iterable[GenerationRequest | str], **options: Unpack[BatchOptions]) -> Batch:
        """A bulk run of ``requests`` (`GenerationRequest` objects or prompts): iterate it for outcomes.

        ``async for outcome in client.batch(requests):`` yields a `BatchOutcome`
        per request in the order they finish. Nothing is sent until the loop
        starts. The options are described at `BatchOptions`.

        Raises:
            InvalidRequestError: A request or an option is invalid (nothing is sent).
        """
        from ._batch import Batch

        return Batch(_BatchSeam(self), requests, **options)

    async def download(
        self,
        result: GenerationResult,
        dest_dir: str | os.PathLike[str],
        *,
        max_bytes: int = DEFAULT_DOWNLOAD_MAX_BYTES,
        max_retries: int = DEFAULT_DOWNLOAD_RETRIES,
        timeout: float = DEFAULT_DOWNLOAD_TIMEOUT,  # noqa: ASYNC109 - per attempt, which a caller's own deadline cannot be
    ) -> list[Path]:
        """Download the images of ``result`` into ``dest_dir``; return the paths written.

        Image ``n`` of task ``T`` becomes ``T-n.<ext>``; each is streamed, capped
        at ``max_bytes`` decoded, retried ``max_retries`` times, each attempt
        within ``timeout`` seconds, and never sent the API key. Works without
        entering the client's context. See `download_result` for the details.

        Raises:
            InvalidRequestError: ``max_bytes``, ``max_retries`` or ``timeout`` is out of range.
            ResultExpiredError: A result URL answered 403, 404 or 410.
            DownloadError: An image could not be downloaded.
        """
        from ._download import download_result

        if self.state is ClientState.CLOSED:
            raise RuntimeError("this AsyncBanana2 is closed")
        return await download_result(
            self._wire.http_client,
            result,
            dest_dir,
            max_bytes=max_bytes,
            max_retries=max_retries,
            timeout=timeout,
            rng=self._rng,
        )


class _BatchSeam:
    """What a bulk run may use of its client (`_batch.BatchClient`): nothing of its insides besides."""

    __slots__ = ("_client",)

    def __init__(self, client: AsyncBanana2) -> None:
        self._client = client

    @property
    def base_url(self) -> httpx.URL:
        """The API's address, for messages."""
        return self._client.base_url

    @property
    def retries_uncertain_submits(self) -> bool:
        """Whether the client sends again a submit that may have landed (``retry_uncertain_submits``)."""
        return self._client._retry_uncertain_submits

    @property
    def closed(self) -> bool:
        """Whether the client was closed."""
        return self._client.state is ClientState.CLOSED

    def require_open(self) -> None:
        """Raise `RuntimeError` unless the client is open (entered, not closed)."""
        self._client._require_open()

    def start_soon(self, function: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        """Run ``function(*args)`` in the client's task group.

        Raises:
            RuntimeError: The client is not open.
        """
        life = self._client._life
        life.require_open()
        assert life.task_group is not None
        life.task_group.start_soon(function, *args)

    def on_poll(self, listener: Callable[[str], object]) -> Callable[[], None]:
        """Call ``listener(task_id)`` after each answered poll; return what stops it."""
        poller = self._client._poller
        poller.add_poll_listener(listener)
        return lambda: poller.remove_poll_listener(listener)

    async def submit_request(self, request: GenerationRequest, *, wait_timeout: float | NotGiven | None) -> TaskHandle:
        """`AsyncBanana2.submit_request`."""
        return await self._client.submit_request(request, wait_timeout=wait_timeout)

    def track(self, task_id: str, *, wait_timeout: float | NotGiven | None) -> TaskHandle:
        """`AsyncBanana2.track`."""
        return self._client.track(task_id, wait_timeout=wait_timeout)

    async def download(self, result: GenerationResult, dest_dir: str | os.PathLike[str]) -> list[Path]:
        """`AsyncBanana2.download` with its defaults."""
        return await self._client.download(result, dest_dir)
