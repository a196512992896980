"""The in-process face: an httpx transport that answers from a simulator, no sockets."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import anyio.to_thread
import httpx

if TYPE_CHECKING:
    from ._core import Simulator

__all__ = ["SimulatorTransport"]


class SimulatorTransport(httpx.AsyncBaseTransport):
    """Answers every request from a `Simulator`, whatever host it names.

    Faults look as they would on a network: a dropped connection raises
    `httpx.RemoteProtocolError`, and a slow answer (or a dripping body's
    pause) that outlasts the request's read timeout raises `httpx.ReadTimeout`
    once that timeout has passed. A body the simulator sends in pieces (a
    drip, a compression bomb) arrives in those pieces.
    Use it as ``httpx.AsyncClient(transport=simulator.transport())``.
    """

    __slots__ = ("_simulator",)

    def __init__(self, simulator: Simulator) -> None:
        self._simulator = simulator

    @property
    def simulator(self) -> Simulator:
        """The simulator this transport answers from."""
        return self._simulator

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Deliver ``request`` to the simulator and return its answer."""
        body = await request.aread()
        url = request.url
        reply, finish = self._simulator._respond(
            request.method,
            url.path,
            query=url.query.decode("ascii"),
            headers=dict(request.headers),
            body=body,
            base_url=f"{url.scheme}://{url.netloc.decode('ascii')}",
        )
        if finish is not None:
            # Encoding a large image, or a compression bomb the first time, takes a while: keep the event loop free.
            reply = await anyio.to_thread.run_sync(finish)

        timeouts = request.extensions.get("timeout") or {}
        read_timeout = timeouts.get("read")
        if reply.delay > 0:
            await _wait(reply.delay, read_timeout, request)
        if reply.drop:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.", request=request)
        if reply.chunk:
            headers = [*reply.headers, ("content-length", str(len(reply.body)))]
            stream = _Pieces(reply.body, reply.chunk, reply.every, read_timeout, request)
            return httpx.Response(reply.status, headers=headers, stream=stream)
        return httpx.Response(reply.status, headers=list(reply.headers), content=reply.body)


async def _wait(seconds: float, read_timeout: float | None, request: httpx.Request) -> None:
    """Wait ``seconds`` for the next bytes; past the read timeout, fail as a socket read would."""
    if read_timeout is not None and seconds > read_timeout:
        await anyio.sleep(read_timeout)
        raise httpx.ReadTimeout("timed out waiting for the simulator's answer", request=request)
    await anyio.sleep(seconds)


class _Pieces(httpx.AsyncByteStream):
    """A body delivered ``chunk`` bytes at a time, each piece ``every`` seconds after the one before.

    An iterator rather than an async generator: a reader that stops early
    leaves nothing to finalise.
    """

    __slots__ = ("_body", "_chunk", "_every", "_offset", "_read_timeout", "_request")

    def __init__(
        self, body: bytes, chunk: int, every: float, read_timeout: float | None, request: httpx.Request
    ) -> None:
        self._body = body
        self._chunk = chunk
        self._every = every
        self._read_timeout = read_timeout
        self._request = request
        self._offset = 0

    def __aiter__(self) -> _Pieces:
        return self

    async def __anext__(self) -> bytes:
        start = self._offset
        if start >= len(self._body):
            raise StopAsyncIteration
        if self._every > 0:
            await _wait(self._every, self._read_timeout, self._request)
        self._offset = start + self._chunk
        return self._body[start : self._offset]
