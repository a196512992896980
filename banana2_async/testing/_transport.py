"""The in-process face: an httpx transport that answers from a simulator, no sockets."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import anyio.to_thread
import httpx

if TYPE_CHECKING:
    from ._core import Simulator
    from ._replies import Reply

__all__ = ["SimulatorTransport"]


class SimulatorTransport(httpx.AsyncBaseTransport):
    """Answers every request from a `Simulator`, whatever host it names.

    Faults look as they would on a network: a dropped connection raises
    `httpx.RemoteProtocolError`, and a slow answer that outlasts the request's
    read timeout raises `httpx.ReadTimeout` once that timeout has passed.
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
        base_url = f"{url.scheme}://{url.netloc.decode('ascii')}"

        def answer() -> Reply:
            return self._simulator.handle(
                request.method,
                url.path,
                query=url.query.decode("ascii"),
                headers=dict(request.headers),
                body=body,
                base_url=base_url,
            )

        if url.path.startswith("/results/"):
            # Encoding a large image the first time takes a few dozen milliseconds: keep the event loop free.
            reply = await anyio.to_thread.run_sync(answer)
        else:
            reply = answer()

        if reply.delay > 0:
            timeouts = request.extensions.get("timeout") or {}
            read_timeout = timeouts.get("read")
            if read_timeout is not None and reply.delay > read_timeout:
                await anyio.sleep(read_timeout)
                raise httpx.ReadTimeout("timed out waiting for the simulator's answer", request=request)
            await anyio.sleep(reply.delay)
        if reply.drop:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.", request=request)
        return httpx.Response(reply.status, headers=list(reply.headers), content=reply.body)
