"""The event loop thread of a `Banana2`: the one thread the library owns, and how it ends.

`LoopThread` runs one `AsyncBanana2` on an event loop (asyncio or trio) in a
thread and serves calls to it through anyio's blocking portal. It ends in
one order, however it is asked to: the client closes (every pending handle
fails with `ClientClosedError`), the calls that woke deliver their outcome
(what is left is cancelled after a short grace), the loop stops, the thread
ends.

A `Banana2` never closed is closed by `close_forgotten`, with a
`ResourceWarning`, from a `weakref.finalize` that holds the `LoopThread` and
never the `Banana2`, so it does not keep the client alive. It runs:

- when the client is garbage-collected, in whichever thread drops it. On
  the loop's own thread it cannot wait for the loop, so it only asks it to
  stop, through the loop's reentrant, thread-safe scheduler;
- at interpreter exit, from ``atexit``: after the program's own threads
  have finished (Python waits for them first; a thread still waiting on a
  handle keeps the loop it needs) and before modules are torn down. It
  waits for the thread a bounded time, and once ``weakref.finalize`` has run
  its exit pass no finalizer runs again, so nothing of the client's runs or
  blocks while the interpreter tears down.

The thread is a daemon: Python joins non-daemon threads before the exit
hooks run, so a non-daemon loop would wait for ever on the hook that stops
it.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import CancelledError, Future
from typing import Any, Final, Literal, TypeVar

import anyio
from anyio.from_thread import BlockingPortal

from ._client import AsyncBanana2

__all__ = ["LoopThread", "close_forgotten"]

T = TypeVar("T")
Backend = Literal["asyncio", "trio"]
Schedule = Callable[[Callable[[], object]], object]
Started = Future[tuple[BlockingPortal, AsyncBanana2, Callable[[], object]]]

# Seconds the calls a close woke (those waiting on a pending handle) have to deliver their outcome,
# before the calls still running are cancelled.
CLOSE_GRACE: Final = 0.25
# Seconds closing a forgotten client waits for its thread at most: the interpreter's exit never hangs on it.
FORGOTTEN_JOIN_TIMEOUT: Final = 0.5


def _threadsafe_scheduler(backend: Backend) -> Schedule:
    """The running loop's own way in: safe from any thread, and reentrant (a finalizer run on the loop's thread).

    anyio's portal refuses calls from the loop's own thread and has no public call that schedules without
    waiting; these two are what it uses underneath.
    """
    if backend == "trio":
        import trio

        return trio.lowlevel.current_trio_token().run_sync_soon
    import asyncio  # noqa: TID251 - the asyncio half of the one backend-specific call (see above)

    return asyncio.get_running_loop().call_soon_threadsafe


class LoopThread:
    """An `AsyncBanana2` served on an event loop in a daemon thread, through a blocking portal."""

    __slots__ = ("_closed", "_ended", "_lock", "_request_stop", "_thread", "client", "portal")

    def __init__(self, make_client: Callable[[], AsyncBanana2], backend: Backend) -> None:
        started: Started = Future()
        self._ended: Future[None] = Future()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(
            target=self._run, args=(make_client, backend, started), name=f"banana2-{backend}", daemon=True
        )
        self._thread.start()
        try:
            portal, client, request_stop = started.result()
        except BaseException:
            self._thread.join()
            raise
        self.portal: BlockingPortal = portal
        self.client: AsyncBanana2 = client
        self._request_stop = request_stop

    @property
    def closed(self) -> bool:
        """Whether `close` was called."""
        return self._closed

    def _run(self, make_client: Callable[[], AsyncBanana2], backend: Backend, started: Started) -> None:
        try:
            anyio.run(self._serve, make_client, backend, started, backend=backend)
        except BaseException as exc:
            if not started.done():
                started.set_exception(exc)
            self._ended.set_exception(exc)
        else:
            self._ended.set_result(None)

    async def _serve(self, make_client: Callable[[], AsyncBanana2], backend: Backend, started: Started) -> None:
        stop = anyio.Event()
        schedule = _threadsafe_scheduler(backend)
        # Made on the loop's thread: everything the async client makes belongs to that loop.
        async with make_client() as client:
            with anyio.CancelScope() as grace:
                async with BlockingPortal() as portal:
                    started.set_result((portal, client, lambda: schedule(stop.set)))
                    await stop.wait()
                    # Every pending handle fails with ClientClosedError, and the calls waiting on
                    # one deliver that, before the portal's remaining calls are cancelled.
                    await client.aclose()
                    grace.deadline = anyio.current_time() + CLOSE_GRACE

    def call(self, func: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``func(*args)`` on the loop and wait for it; interrupting the wait cancels it.

        Raises:
            RuntimeError: The client is closed, or closed during the call.
        """
        future = self._start(func, *args)
        try:
            return future.result()
        except CancelledError:
            if self._closed:
                raise RuntimeError("this Banana2 closed during the call") from None
            raise
        except BaseException:
            future.cancel()
            raise

    def iterate(self, make: Callable[[], AsyncIterator[T]]) -> Iterator[T]:
        """Iterate ``make()`` on the loop, yielding each item here; leaving early closes it there."""
        items: queue.SimpleQueue[tuple[T] | None] = queue.SimpleQueue()

        async def pump() -> None:
            iterator = make()
            try:
                async for item in iterator:
                    items.put((item,))
            finally:
                # Closed here, in the pump's task and shielded, so its cleanup (releasing
                # handles, stopping a run) is over before the pump ends.
                aclose = getattr(iterator, "aclose", None)
                if aclose is not None:
                    with anyio.CancelScope(shield=True):
                        await aclose()

        future = self._start(pump)
        future.add_done_callback(lambda _: items.put(None))
        try:
            while (got := items.get()) is not None:
                yield got[0]
            try:
                future.result()  # raises what ended the iteration
            except CancelledError:
                if self._closed:
                    raise RuntimeError("this Banana2 closed during the iteration") from None
                raise
        finally:
            future.cancel()

    def _start(self, func: Callable[..., Awaitable[T]], *args: Any) -> Future[T]:
        if self._closed:
            raise RuntimeError("this Banana2 is closed")
        try:
            return self.portal.start_task_soon(func, *args)
        except RuntimeError:
            if self._closed:
                raise RuntimeError("this Banana2 is closed") from None
            raise

    def close(self, timeout: float | None = None) -> None:
        """Close the client, stop the loop and wait for the thread to end (``timeout`` seconds at most).

        Safe to call more than once and from any thread. From the loop's own
        thread it does not wait: the client closes once the current callback
        returns. The call that closes it raises what ended the loop, if that was an error.
        """
        with self._lock:
            closing = not self._closed
            self._closed = True
        if closing:
            with contextlib.suppress(RuntimeError):  # the loop has already ended
                self._request_stop()
        if threading.current_thread() is self._thread:
            return
        self._thread.join(timeout)
        if closing and self._ended.done():
            self._ended.result()


def close_forgotten(loop: LoopThread, name: str) -> None:
    """Close the loop of a `Banana2` that was not closed, and say so with a `ResourceWarning` naming it."""
    try:
        loop.close(FORGOTTEN_JOIN_TIMEOUT)
    finally:
        warnings.warn(
            f"unclosed {name}: close it, or use it as 'with Banana2() as client:'", ResourceWarning, stacklevel=1
        )
