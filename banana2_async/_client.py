"""AsyncBanana2: options, lifecycle, and the calls users make."""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable, Coroutine, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio
import httpx
from anyio.abc import TaskGroup, TaskStatus

from ._exceptions import APITimeoutError, ConfigurationError, FailureKind, InvalidRequestError
from ._handle import AsCompleted, TaskHandle
from ._http import DEFAULT_REQUEST_TIMEOUT, DEFAULT_TIMEOUT, Wire
from ._poller import Poller
from ._requests import DEFAULT_BASE_URL, RequestFactory, check_base_url
from ._schedule import RateBudget, parse_interval
from ._secret import Secret, redact_library_logs
from ._send import open_sender
from ._throttle import Throttle
from ._types import (
    DEFAULT_BATCH_CONCURRENCY,
    DEFAULT_DOWNLOAD_MAX_BYTES,
    DEFAULT_DOWNLOAD_RETRIES,
    DEFAULT_DOWNLOAD_TIMEOUT,
    NOT_GIVEN,
    AspectRatio,
    ClientStatistics,
    NotGiven,
    OutputFormat,
    Resolution,
    TaskType,
)
from ._validate import check_non_negative_int, check_positive_int, check_seconds, check_task_id

if TYPE_CHECKING:
    # Bulk runs and downloads (sqlite3 and all), and the models (pydantic's model machinery),
    # are imported when first used.
    from ._batch import Batch, BatchEvent
    from ._models import GenerationRequest, GenerationResult, TaskInfo

__all__ = ["AsyncBanana2"]

logger = logging.getLogger("banana2_async")

DEFAULT_WAIT_TIMEOUT = 600.0
DEFAULT_NOT_FOUND_GRACE = 10.0
DEFAULT_SUBMIT_TIMEOUT = 600.0


def _wait_timeout(value: float | None, field: str = "wait_timeout") -> float | None:
    if value is None:
        return None
    return check_seconds(value, field)


def _httpx_timeout(value: object) -> httpx.Timeout:
    """``timeout`` as an ``httpx.Timeout``, each of its parts checked."""
    if isinstance(value, httpx.Timeout):
        for part, seconds in value.as_dict().items():
            if seconds is not None:
                check_seconds(seconds, f"timeout.{part}")
        return value
    return httpx.Timeout(check_seconds(value, "timeout"))


class AsyncBanana2:
    """The async client of the NanoBanana 2 image API.

    Use it as ``async with AsyncBanana2() as client:``. Every task it submits
    or tracks is watched by ONE poller per client, which polls each task
    every ``poll_interval`` seconds and settles the task's handles.

    Args:
        api_key: The API key; defaults to ``$BANANA2_API_KEY``.
        base_url: The API's address; defaults to ``$BANANA2_BASE_URL``, else
            ``https://banana2api.com``.
        poll_interval: Seconds between two polls of a task: a number, or
            ``(low, high)`` to draw each interval uniformly from.
        wait_timeout: Default deadline of a handle in seconds; ``None`` for none.
        http_client: An ``httpx.AsyncClient`` of your own (transport, proxies,
            HTTP/2). It is not closed by the client. Keep its connection pool
            at least ``max_concurrent_submits + max_concurrent_polls``.
        transport: An httpx transport for the client's own httpx client,
            instead of the default one: ``httpx.AsyncHTTPTransport(http2=True)``,
            a mock, a simulator's. It is closed with the client. Not with
            ``http_client``.
        timeout: httpx's timeouts of each request: of connecting, and of each
            read and write (not of the whole request; see ``request_timeout``).
        request_timeout: The whole-request deadline in seconds: the most one
            request may take from sending to the last byte of its answer, so a
            server that drips its answer cannot hold a request (or a poll
            worker) for ever. A poll or status call past it raises
            `APITimeoutError`; a submit, `SubmissionUncertainError`.
        submit_timeout: The deadline of one `submit` call as a whole, in
            seconds, waits for a free slot and for 429/503 retries included.
            Past it, a submit never sent raises `APITimeoutError`; one that
            may have been sent, `SubmissionUncertainError`.
        max_retries: How often a request is retried where retrying is safe.
        max_concurrent_submits: Submits in flight at once; more wait in line.
        max_concurrent_polls: Status polls in flight at once.
        rate_limit: Requests per second shared by submits and polls; ``None``
            for no limit. A 429 pauses every request either way.
        retry_uncertain_submits: Retry a submit that may have been paid for
            (read timeout, dropped connection, 500/502/504) instead of raising
            `SubmissionUncertainError`. Prefers availability to credits.
        allow_insecure_http: Allow a plain ``http://`` base URL to a host
            other than loopback.
        not_found_grace: Seconds after submit during which a 404 on a poll is
            taken as the server not having caught up yet.
        seed: Seeds the jitter of poll intervals and backoffs, for reproducible runs.

    Raises:
        ConfigurationError: No API key, or an unsafe or invalid base URL.
        InvalidRequestError: An option is out of range.
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        poll_interval: float | tuple[float, float] = (2.0, 3.0),
        wait_timeout: float | None = DEFAULT_WAIT_TIMEOUT,
        http_client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        submit_timeout: float = DEFAULT_SUBMIT_TIMEOUT,
        max_retries: int = 3,
        max_concurrent_submits: int = 16,
        max_concurrent_polls: int = 48,
        rate_limit: float | None = None,
        retry_uncertain_submits: bool = False,
        allow_insecure_http: bool = False,
        not_found_grace: float = DEFAULT_NOT_FOUND_GRACE,
        seed: int | None = None,
    ) -> None:
        key = api_key if api_key is not None else os.environ.get("BANANA2_API_KEY")
        if not key or not key.strip():
            raise ConfigurationError("no API key: pass api_key=... or set the BANANA2_API_KEY environment variable")
        if any(ch.isspace() for ch in key.strip()) or not key.isprintable():
            raise ConfigurationError("the API key contains whitespace or unprintable characters")
        url = check_base_url(
            base_url or os.environ.get("BANANA2_BASE_URL") or DEFAULT_BASE_URL,
            allow_insecure_http=allow_insecure_http,
        )
        try:
            interval = parse_interval(poll_interval)
            budget = RateBudget(rate_limit)
        except ValueError as exc:
            field = "poll_interval" if "poll_interval" in str(exc) else "rate_limit"
            raise InvalidRequestError(str(exc), field=field) from None
        check_non_negative_int(max_retries, "max_retries")
        submits = check_positive_int(max_concurrent_submits, "max_concurrent_submits")
        polls = check_positive_int(max_concurrent_polls, "max_concurrent_polls")
        check_seconds(not_found_grace, "not_found_grace", zero=True)
        httpx_timeout = _httpx_timeout(timeout)
        self._request_timeout = check_seconds(request_timeout, "request_timeout")
        self._submit_timeout = check_seconds(submit_timeout, "submit_timeout")

        self._wait_timeout = _wait_timeout(wait_timeout)
        self._retry_uncertain_submits = retry_uncertain_submits
        self._rng = random.Random(seed)
        self._throttle = Throttle(budget, rng=self._rng)
        api_key = key.strip()
        if not api_key.isascii():
            # httpx would fail on the header with a bare UnicodeEncodeError at the first request.
            raise ConfigurationError("the API key contains non-ASCII characters")
        # A server may echo the key, in any spelling; it is blanked out of every answer before it is read.
        secret = Secret(api_key)
        redact_library_logs(secret)
        sender = open_sender(
            http_client=http_client,
            transport=transport,
            timeout=httpx_timeout,
            max_in_flight=submits + polls,
            secret=secret,
            request_timeout=self._request_timeout,
        )
        self._wire = Wire(
            requests=RequestFactory(sender.http_client, api_key=api_key, base_url=url, timeout=httpx_timeout),
            sender=sender,
            gate=self._throttle,
            secret=secret,
            base_url=url,
            max_retries=max_retries,
            retry_uncertain_submits=retry_uncertain_submits,
            rng=self._rng,
        )
        self._poller = Poller(
            self._wire,
            interval=interval,
            max_concurrent_polls=polls,
            throttle=self._throttle,
            not_found_grace=not_found_grace,
            rng=self._rng,
        )
        # Taking a slot yields once, as anyio's own calls do: a burst of submits over a transport
        # that never waits (an in-process one, say) still lets timers and other tasks run between them.
        self._submit_slots = anyio.Semaphore(submits)
        self._task_group: TaskGroup | None = None
        # Made when the poller starts: a cancel scope needs a running event loop, and building a client does not.
        self._poller_scope: anyio.CancelScope | None = None
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("open" if self._task_group else "not started")
        return f"<AsyncBanana2 base_url={str(self.base_url)!r} {state}>"

    @property
    def base_url(self) -> httpx.URL:
        """The API's address."""
        return self._wire.base_url

    @property
    def http_client(self) -> httpx.AsyncClient:
        """The httpx client requests go through."""
        return self._wire.http_client

    @property
    def poller(self) -> Poller:
        """The client's shared poller (for introspection: ``len(client.poller)``, ``polls_sent``)."""
        return self._poller

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
            pause_remaining=self._throttle.pause_remaining() if self._task_group is not None else 0.0,
        )

    # -- lifecycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> AsyncBanana2:
        if self._closed:
            raise RuntimeError("this AsyncBanana2 is closed; create a new one")
        if self._task_group is not None:
            raise RuntimeError("this AsyncBanana2 is already open")
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        try:
            await task_group.start(self._run_poller)
        except BaseException as exc:
            task_group.cancel_scope.cancel()
            await task_group.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        self._task_group = task_group
        return self

    async def _run_poller(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        # Its own scope, so closing stops the poller without cancelling the code in the `async with` body.
        with anyio.CancelScope() as self._poller_scope:
            await self._poller.run(task_status=task_status)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        task_group = self._task_group
        try:
            await self.aclose()
        finally:
            if task_group is not None:
                # The body's own error is not the poller's: it propagates unwrapped,
                # but a cancellation must reach the task group to be honoured there.
                passed = exc if isinstance(exc, anyio.get_cancelled_exc_class()) else None
                await task_group.__aexit__(type(passed) if passed else None, passed, traceback if passed else None)
        return None

    async def aclose(self) -> None:
        """Fail every pending handle with `ClientClosedError`, stop the poller, close connections.

        Safe to call more than once.
        """
        if self._closed:
            return
        self._closed = True
        self._poller.close()
        if self._poller_scope is not None:
            self._poller_scope.cancel()
        with anyio.CancelScope(shield=True):
            await self._wire.aclose()

    def _require_open(self) -> None:
        if self._closed:
            raise RuntimeError("this AsyncBanana2 is closed")
        if self._task_group is None:
            raise RuntimeError("use the client as 'async with AsyncBanana2(...) as client:' to submit or track tasks")

    def _deadline_of(self, wait_timeout: float | NotGiven | None) -> float | None:
        if isinstance(wait_timeout, NotGiven):
            return self._wait_timeout
        return _wait_timeout(wait_timeout)

    # -- tasks --------------------------------------------------------------------------------

    async def submit(
        self,
        prompt: str,
        *,
        type: TaskType | None = None,
        images: Sequence[str] | None = None,
        aspect_ratio: AspectRatio | None = None,
        resolution: Resolution | None = None,
        output_format: OutputFormat | None = None,
        wait_timeout: float | NotGiven | None = NOT_GIVEN,
    ) -> TaskHandle:
        """Submit one task and return its handle at once; ``await handle`` for the result.

        Options left ``None`` are not sent, so the server's defaults apply
        (text-to-image, 1:1, 1k, png). ``type`` is ``"edit"`` when ``images``
        are given. ``wait_timeout`` overrides the client's default deadline.

        Raises:
            InvalidRequestError: An argument is invalid (nothing is sent).
            SubmissionUncertainError: The request may have been paid for
                without an answer; it is not sent again.
            APIStatusError: The server refused it (`InsufficientCreditsError`, ...).
            APIConnectionError: The server could not be reached.
        """
        from ._models import GenerationRequest

        request = GenerationRequest(
            prompt=prompt,
            type=type,
            images=images,
            aspect_ratio=aspect_ratio,
            resolution=resolution,
            output_format=output_format,
        )
        return await self.submit_request(request, wait_timeout=wait_timeout)

    async def submit_request(
        self,
        request: GenerationRequest,
        *,
        wait_timeout: float | NotGiven | None = NOT_GIVEN,
    ) -> TaskHandle:
        """Submit a prepared `GenerationRequest`; otherwise the same as `submit`."""
        from ._models import GenerationRequest

        if not isinstance(request, GenerationRequest):
            raise InvalidRequestError("request must be a GenerationRequest", field="request")
        timeout = self._deadline_of(wait_timeout)
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

    async def generate(
        self,
        prompt: str,
        *,
        type: TaskType | None = None,
        images: Sequence[str] | None = None,
        aspect_ratio: AspectRatio | None = None,
        resolution: Resolution | None = None,
        output_format: OutputFormat | None = None,
        wait_timeout: float | NotGiven | None = NOT_GIVEN,
    ) -> GenerationResult:
        """Submit one task and wait for its result; see `submit` for the arguments and errors.

        Also raises `TaskFailedError` or `TaskTimeoutError` from the wait.
        Cancelled after the task was submitted (and so may be charged for),
        it logs a WARNING naming the task and how to pick it up again.
        """
        handle = await self.submit(
            prompt,
            type=type,
            images=images,
            aspect_ratio=aspect_ratio,
            resolution=resolution,
            output_format=output_format,
            wait_timeout=wait_timeout,
        )
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

    async def edit(
        self,
        prompt: str,
        *,
        images: Sequence[str],
        aspect_ratio: AspectRatio | None = None,
        resolution: Resolution | None = None,
        output_format: OutputFormat | None = None,
        wait_timeout: float | NotGiven | None = NOT_GIVEN,
    ) -> GenerationResult:
        """Edit 1-14 reference images with a text instruction and wait for the result."""
        return await self.generate(
            prompt,
            type="edit",
            images=images,
            aspect_ratio=aspect_ratio,
            resolution=resolution,
            output_format=output_format,
            wait_timeout=wait_timeout,
        )

    async def status(self, task_id: str) -> TaskInfo:
        """One ``GET /api/status`` of ``task_id`` (retried on transient failures), no polling.

        Works without entering the client's context.
        """
        check_task_id(task_id)
        if self._closed:
            raise RuntimeError("this AsyncBanana2 is closed")
        return await self._wire.fetch_status_retrying(task_id)

    def track(self, task_id: str, *, wait_timeout: float | NotGiven | None = NOT_GIVEN) -> TaskHandle:
        """A handle on an existing task, watched by the shared poller.

        Tracking a task that is already watched adds a handle but no polls.
        A task not watched yet is polled at once.
        """
        check_task_id(task_id)
        timeout = self._deadline_of(wait_timeout)
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

    def batch(
        self,
        requests: Iterable[GenerationRequest | str],
        *,
        concurrency: int = DEFAULT_BATCH_CONCURRENCY,
        journal: str | os.PathLike[str] | None = None,
        max_credits: int | None = None,
        resubmit_uncertain: bool = False,
        dest_dir: str | os.PathLike[str] | None = None,
        on_event: Callable[[BatchEvent], object] | None = None,
        wait_timeout: float | NotGiven | None = NOT_GIVEN,
        keys: Sequence[str | None] | None = None,
        retry_failed: bool = False,
    ) -> Batch:
        """A bulk run of ``requests`` (`GenerationRequest` objects or prompts): iterate it for outcomes.

        ``async for outcome in client.batch(requests):`` yields a `BatchOutcome`
        per request in the order they finish. Nothing is sent until the loop starts.

        Args:
            concurrency: Tasks in flight at once, from submit until downloaded.
            journal: A sqlite file recording the run; running the same job with
                it again resumes without paying twice.
            max_credits: Refuse to start (`BudgetExceededError`) if the run would cost more.
            resubmit_uncertain: Send again the rows of an earlier run whose
                submit may have been paid for without an answer.
            dest_dir: Download each result there (see `download`).
            on_event: Called with every `BatchEvent` (submitted, tracked,
                polled, succeeded, failed) while the run is iterated.
            wait_timeout: Deadline of each task; the client's default if not given.
            keys: Each request's own id in the job (a row's ``id``), so that a
                job may grow: requests added later are sent, the rest resumed.
                ``None`` (or a ``None`` key) identifies a request by its content.
            retry_failed: Send again the rows of an earlier run whose task
                failed on the server (or succeeded without images); this costs credits.

        Raises:
            InvalidRequestError: A request or an option is invalid (nothing is sent).
        """
        from ._batch import Batch

        return Batch(
            _BatchSeam(self),
            requests,
            concurrency=concurrency,
            journal=journal,
            max_credits=max_credits,
            resubmit_uncertain=resubmit_uncertain,
            dest_dir=dest_dir,
            on_event=on_event,
            wait_timeout=wait_timeout,
            keys=keys,
            retry_failed=retry_failed,
        )

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

        Image ``n`` of task ``T`` becomes ``T-n.<ext>``, the extension from the
        answer's content type; a task id that is not a plain file name (lower
        case letters, digits, ``_`` and ``-``) is spelt with safe characters
        and a short hash of it, so distinct ids never share a file. Each file
        is streamed to a temporary name and renamed when complete. The API
        key is never sent to the result host. Works without entering the
        client's context.

        Args:
            max_bytes: Cap on each image, counted after its content coding is
                undone, while it streams.
            max_retries: Retries of an image after a transient failure.
            timeout: Seconds each attempt at an image may take, from connecting
                to its last byte; one over it is not retried.

        Raises:
            InvalidRequestError: ``max_bytes``, ``max_retries`` or ``timeout`` is out of range.
            ResultExpiredError: A result URL answered 403, 404 or 410.
            DownloadError: An image could not be downloaded (a bad URL or
                redirect, too large, not an image, over its deadline, still
                failing after ``max_retries`` retries, disk error).
        """
        from ._download import download_result

        if self._closed:
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
        return self._client._closed

    def start_soon(self, function: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        """Run ``function(*args)`` in the client's task group.

        Raises:
            RuntimeError: The client is not open.
        """
        client = self._client
        client._require_open()
        assert client._task_group is not None
        client._task_group.start_soon(function, *args)

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
