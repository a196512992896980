"""Banana2: the blocking client, for scripts, notebooks and sync frameworks.

Each call is the `AsyncBanana2` call of the same name, run on the client's
own event loop thread (`LoopThread`, in `_sync_loop`) while the caller
blocks. Every method may be called from any thread, several at once.
"""

from __future__ import annotations

import functools
import os
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import httpx

from ._client import AsyncBanana2
from ._sync_handles import SyncBatch, SyncTaskHandle
from ._sync_loop import LoopThread, close_forgotten
from ._types import DEFAULT_DOWNLOAD_MAX_BYTES, DEFAULT_DOWNLOAD_RETRIES, DEFAULT_DOWNLOAD_TIMEOUT, NOT_GIVEN, NotGiven

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ._models import GenerationRequest, GenerationResult, TaskInfo
    from ._options import BatchOptions, ClientOptions, EditOptions, TaskOptions

__all__ = ["Banana2"]

T = TypeVar("T")


async def _on_loop(call: Callable[[], T]) -> T:
    """Run a synchronous method of the async client in a task on its loop."""
    return call()


class Banana2:
    """The blocking client of the NanoBanana 2 image API: `AsyncBanana2` without ``await``.

    One `AsyncBanana2` runs on an event loop in a background thread; each
    method is the `AsyncBanana2` method of its name, blocking its caller until
    the loop has the answer. Any number of threads may share a client; its
    tasks are all watched by ONE shared poller. Use it as ``with Banana2() as
    client:``, or call `close` when done: a client left open is closed, with a
    `ResourceWarning`, when it is garbage-collected or the program ends.

    Args:
        api_key: The API key; defaults to ``$BANANA2_API_KEY``.
        backend: The event loop of the background thread: ``"asyncio"`` or ``"trio"``.
        **options: Those of [`AsyncBanana2`][banana2_async.AsyncBanana2]
            ([`ClientOptions`][banana2_async.ClientOptions]); an
            ``http_client`` or ``transport`` is used on the background
            thread's loop only.

    Raises:
        ConfigurationError: No API key, or an unsafe or invalid base URL.
        InvalidRequestError: An option is out of range.
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        backend: Literal["asyncio", "trio"] = "asyncio",
        **options: Unpack[ClientOptions],
    ) -> None:
        make_client = functools.partial(AsyncBanana2, api_key, **options)
        # Called on the loop's thread: everything the async client makes belongs to that loop.
        self._loop = LoopThread(make_client, backend)
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

    def submit(self, prompt: str, **options: Unpack[TaskOptions]) -> SyncTaskHandle:
        """Same as [`AsyncBanana2.submit`][banana2_async.AsyncBanana2.submit]; ``handle.result()`` waits."""
        return SyncTaskHandle(self._call(functools.partial(self._client.submit, prompt, **options)), self)

    def submit_request(
        self,
        request: GenerationRequest,
        *,
        wait_timeout: float | NotGiven | None = NOT_GIVEN,
    ) -> SyncTaskHandle:
        """Same as [`AsyncBanana2.submit_request`][banana2_async.AsyncBanana2.submit_request]."""
        submit = functools.partial(self._client.submit_request, request, wait_timeout=wait_timeout)
        return SyncTaskHandle(self._call(submit), self)

    def generate(self, prompt: str, **options: Unpack[TaskOptions]) -> GenerationResult:
        """Same as [`AsyncBanana2.generate`][banana2_async.AsyncBanana2.generate]: blocks until the result."""
        return self._call(functools.partial(self._client.generate, prompt, **options))

    def edit(self, prompt: str, *, images: Sequence[str], **options: Unpack[EditOptions]) -> GenerationResult:
        """Same as [`AsyncBanana2.edit`][banana2_async.AsyncBanana2.edit]: blocks until the result."""
        return self._call(functools.partial(self._client.edit, prompt, images=images, **options))

    def status(self, task_id: str) -> TaskInfo:
        """Same as [`AsyncBanana2.status`][banana2_async.AsyncBanana2.status]."""
        return self._call(self._client.status, task_id)

    def track(self, task_id: str, *, wait_timeout: float | NotGiven | None = NOT_GIVEN) -> SyncTaskHandle:
        """Same as [`AsyncBanana2.track`][banana2_async.AsyncBanana2.track]."""
        track = functools.partial(self._client.track, task_id, wait_timeout=wait_timeout)
        return SyncTaskHandle(self._call(_on_loop, track), self)

    def as_completed(self, handles: Iterable[SyncTaskHandle]) -> Iterator[SyncTaskHandle]:
        """Same as [`AsyncBanana2.as_completed`][banana2_async.AsyncBanana2.as_completed], in a plain ``for``.

        ``handle.result()`` returns or raises at once for each handle yielded;
        leaving the loop early releases the handles no one else waits on.
        """
        pending = list(dict.fromkeys(handles))
        if not pending:
            return
        by_handle = {handle.async_handle: handle for handle in pending}
        as_completed = functools.partial(self._client.as_completed, by_handle)
        for done in self._iterate(as_completed):
            yield by_handle[done]

    # -- bulk runs and downloads ---------------------------------------------------------------

    def batch(self, requests: Iterable[GenerationRequest | str], **options: Unpack[BatchOptions]) -> SyncBatch:
        """Same as [`AsyncBanana2.batch`][banana2_async.AsyncBanana2.batch]: ``for outcome in client.batch(requests):``.

        ``on_event`` is called on the client's event loop thread: keep it
        quick, and thread-safe.
        """
        batch = functools.partial(self._client.batch, requests, **options)
        return SyncBatch(self._call(_on_loop, batch), self)

    def download(
        self,
        result: GenerationResult,
        dest_dir: str | os.PathLike[str],
        *,
        max_bytes: int = DEFAULT_DOWNLOAD_MAX_BYTES,
        max_retries: int = DEFAULT_DOWNLOAD_RETRIES,
        timeout: float = DEFAULT_DOWNLOAD_TIMEOUT,
    ) -> list[Path]:
        """Same as [`AsyncBanana2.download`][banana2_async.AsyncBanana2.download]."""
        download = functools.partial(
            self._client.download, result, dest_dir, max_bytes=max_bytes, max_retries=max_retries, timeout=timeout
        )
        return self._call(download)
