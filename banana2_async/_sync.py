"""Banana2: the blocking client, for scripts, notebooks and sync frameworks.

It runs one `AsyncBanana2`, with its one shared poller, on an event loop in a
background thread (anyio's blocking portal) and waits for each call there.
Every method may be called from any thread, several at once.
"""

from __future__ import annotations

import functools
import os
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar

import httpx

from ._batch import DEFAULT_CONCURRENCY, Batch, BatchEvent
from ._client import DEFAULT_NOT_FOUND_GRACE, DEFAULT_SUBMIT_TIMEOUT, DEFAULT_WAIT_TIMEOUT, AsyncBanana2
from ._download import DEFAULT_MAX_BYTES, DEFAULT_MAX_RETRIES
from ._handle import TaskHandle
from ._http import DEFAULT_REQUEST_TIMEOUT, DEFAULT_TIMEOUT
from ._models import GenerationRequest, GenerationResult, TaskInfo
from ._sync_handles import SyncBatch, SyncTaskHandle
from ._sync_loop import LoopThread, close_forgotten
from ._types import DEFAULT_DOWNLOAD_TIMEOUT, NOT_GIVEN, AspectRatio, NotGiven, OutputFormat, Resolution, TaskType

__all__ = ["Banana2"]

T = TypeVar("T")


class Banana2:
    """The blocking client of the NanoBanana 2 image API.

    The same calls as `AsyncBanana2`, without ``await``: one `AsyncBanana2`
    runs on an event loop in a background thread, and each call blocks its
    caller until the loop has the answer. Use it as
    ``with Banana2() as client:``, or call `close` when done. A client may be
    shared by many threads; its tasks are all watched by ONE shared poller.

    Args:
        api_key: The API key; defaults to ``$BANANA2_API_KEY``.
        base_url: The API's address; defaults to ``$BANANA2_BASE_URL``, else
            ``https://banana2api.com``.
        poll_interval: Seconds between two polls of a task: a number, or
            ``(low, high)`` to draw each interval uniformly from.
        wait_timeout: Default deadline of a handle in seconds; ``None`` for none.
        http_client: An ``httpx.AsyncClient`` of your own; it is used on the
            background thread's loop only and is not closed by the client.
        transport: An httpx transport for the client's own httpx client; it
            is used on the background thread's loop and closed with the client.
        timeout: httpx's timeouts of each request (connect, each read and write).
        request_timeout: The whole-request deadline in seconds (see `AsyncBanana2`).
        submit_timeout: The deadline of one submit as a whole (see `AsyncBanana2`).
        max_retries: How often a request is retried where retrying is safe.
        max_concurrent_submits: Submits in flight at once; more wait in line.
        max_concurrent_polls: Status polls in flight at once.
        rate_limit: Requests per second shared by submits and polls; ``None``
            for no limit.
        retry_uncertain_submits: Retry a submit that may have been paid for
            instead of raising `SubmissionUncertainError`.
        allow_insecure_http: Allow a plain ``http://`` base URL to a host
            other than loopback.
        not_found_grace: Seconds after submit during which a 404 on a poll is
            taken as the server not having caught up yet.
        seed: Seeds the jitter of poll intervals and backoffs.
        backend: The event loop of the background thread: ``"asyncio"`` or ``"trio"``.

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
        backend: Literal["asyncio", "trio"] = "asyncio",
    ) -> None:
        options: dict[str, Any] = {
            "base_url": base_url,
            "poll_interval": poll_interval,
            "wait_timeout": wait_timeout,
            "http_client": http_client,
            "transport": transport,
            "timeout": timeout,
            "request_timeout": request_timeout,
            "submit_timeout": submit_timeout,
            "max_retries": max_retries,
            "max_concurrent_submits": max_concurrent_submits,
            "max_concurrent_polls": max_concurrent_polls,
            "rate_limit": rate_limit,
            "retry_uncertain_submits": retry_uncertain_submits,
            "allow_insecure_http": allow_insecure_http,
            "not_found_grace": not_found_grace,
            "seed": seed,
        }
        self._loop = LoopThread(functools.partial(AsyncBanana2, api_key, **options), backend)
        self._client: AsyncBanana2 = self._loop.client
        # Closes the client if it is dropped, or left open at exit, without keeping it alive.
        self._forgotten = weakref.finalize(self, close_forgotten, self._loop, repr(self))

    def __repr__(self) -> str:
        state = "closed" if self._loop.closed else "open"
        return f"<Banana2 base_url={str(self.base_url)!r} {state}>"

    @property
    def base_url(self) -> httpx.URL:
        """The API's address."""
        return self._client.base_url

    @property
    def async_client(self) -> AsyncBanana2:
        """The `AsyncBanana2` doing the work, owned by the background thread's event loop."""
        return self._client

    # -- lifecycle -----------------------------------------------------------------------------

    def __enter__(self) -> Banana2:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Fail every pending handle with `ClientClosedError`, close connections, stop the thread.

        Safe to call more than once, from any thread. Called from the client's
        own thread (in an ``on_event`` callback), it does not wait: the client
        closes once the callback returns.
        """
        self._forgotten.detach()
        self._loop.close()

    def _call(self, func: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``func(*args)`` on the client's loop and wait for it; interrupting the wait cancels it."""
        return self._loop.call(func, *args)

    def _iterate(self, make: Callable[[], AsyncIterator[T]]) -> Iterator[T]:
        """Iterate ``make()`` on the client's loop, yielding each item here; leaving early closes it there."""
        # A generator of its own: an iteration keeps its client open.
        yield from self._loop.iterate(make)

    # -- tasks --------------------------------------------------------------------------------

    def submit(
        self,
        prompt: str,
        *,
        type: TaskType | None = None,
        images: Sequence[str] | None = None,
        aspect_ratio: AspectRatio | None = None,
        resolution: Resolution | None = None,
        output_format: OutputFormat | None = None,
        wait_timeout: float | NotGiven | None = NOT_GIVEN,
    ) -> SyncTaskHandle:
        """Submit one task and return its handle at once; ``handle.result()`` waits for it.

        The arguments and errors are those of `AsyncBanana2.submit`.
        """
        request = GenerationRequest(
            prompt=prompt,
            type=type,
            images=images,
            aspect_ratio=aspect_ratio,
            resolution=resolution,
            output_format=output_format,
        )
        return self.submit_request(request, wait_timeout=wait_timeout)

    def submit_request(
        self,
        request: GenerationRequest,
        *,
        wait_timeout: float | NotGiven | None = NOT_GIVEN,
    ) -> SyncTaskHandle:
        """Submit a prepared `GenerationRequest`; otherwise the same as `submit`."""

        submit = functools.partial(self._client.submit_request, request, wait_timeout=wait_timeout)
        return SyncTaskHandle(self._call(submit), self)

    def generate(
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
        """Submit one task and wait for its result; see `AsyncBanana2.generate`."""
        handle = self.submit(
            prompt,
            type=type,
            images=images,
            aspect_ratio=aspect_ratio,
            resolution=resolution,
            output_format=output_format,
            wait_timeout=wait_timeout,
        )
        return self._call(handle.async_handle.result)

    def edit(
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
        return self.generate(
            prompt,
            type="edit",
            images=images,
            aspect_ratio=aspect_ratio,
            resolution=resolution,
            output_format=output_format,
            wait_timeout=wait_timeout,
        )

    def status(self, task_id: str) -> TaskInfo:
        """One ``GET /api/status`` of ``task_id``, no polling; see `AsyncBanana2.status`."""
        return self._call(self._client.status, task_id)

    def track(self, task_id: str, *, wait_timeout: float | NotGiven | None = NOT_GIVEN) -> SyncTaskHandle:
        """A handle on an existing task, watched by the shared poller; see `AsyncBanana2.track`."""

        client = self._client

        async def track() -> TaskHandle:
            return client.track(task_id, wait_timeout=wait_timeout)

        return SyncTaskHandle(self._call(track), self)

    def as_completed(self, handles: Iterable[SyncTaskHandle]) -> Iterator[SyncTaskHandle]:
        """Yield each handle as it settles, successes and failures alike.

        Check each with ``handle.result()`` (returns or raises at once) or
        ``handle.exception()``. Leaving the loop early releases the handles
        no one else waits on.
        """
        pending = list(dict.fromkeys(handles))
        if not pending:
            return
        by_handle = {handle.async_handle: handle for handle in pending}
        client = self._client
        for done in self._iterate(lambda: client.as_completed(by_handle)):
            yield by_handle[done]

    # -- bulk runs and downloads ---------------------------------------------------------------

    def batch(
        self,
        requests: Iterable[GenerationRequest | str],
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        journal: str | os.PathLike[str] | None = None,
        max_credits: int | None = None,
        resubmit_uncertain: bool = False,
        dest_dir: str | os.PathLike[str] | None = None,
        on_event: Callable[[BatchEvent], object] | None = None,
        wait_timeout: float | NotGiven | None = NOT_GIVEN,
    ) -> SyncBatch:
        """A bulk run of ``requests`` (`GenerationRequest` objects or prompts): iterate it for outcomes.

        ``for outcome in client.batch(requests):`` yields a `BatchOutcome` per
        request in the order they finish; the arguments are those of
        `AsyncBanana2.batch`. ``on_event`` is called on the client's event loop
        thread: keep it quick, and thread-safe.

        Raises:
            InvalidRequestError: A request or an option is invalid (nothing is sent).
        """

        client = self._client

        async def make() -> Batch:
            return client.batch(
                requests,
                concurrency=concurrency,
                journal=journal,
                max_credits=max_credits,
                resubmit_uncertain=resubmit_uncertain,
                dest_dir=dest_dir,
                on_event=on_event,
                wait_timeout=wait_timeout,
            )

        return SyncBatch(self._call(make), self)

    def download(
        self,
        result: GenerationResult,
        dest_dir: str | os.PathLike[str],
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_retries: int = DEFAULT_MAX_RETRIES,
        timeout: float = DEFAULT_DOWNLOAD_TIMEOUT,
    ) -> list[Path]:
        """Download the images of ``result`` into ``dest_dir``; return the paths written.

        See `AsyncBanana2.download`: files are written whole or not at all,
        each attempt at an image has ``timeout`` seconds, and the API key
        never reaches the result host.

        Raises:
            InvalidRequestError: ``max_bytes``, ``max_retries`` or ``timeout`` is out of range.
            ResultExpiredError: A result URL answered 403, 404 or 410.
            DownloadError: An image could not be downloaded.
        """

        download = functools.partial(
            self._client.download, result, dest_dir, max_bytes=max_bytes, max_retries=max_retries, timeout=timeout
        )
        return self._call(download)
