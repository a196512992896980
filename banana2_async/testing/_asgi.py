"""The network face: a plain ASGI 3 application that answers from a simulator."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

if TYPE_CHECKING:
    from ._core import Simulator

__all__ = ["SimulatorApp"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_DISCONNECT_WAIT = 5.0


class SimulatorApp:
    """An ASGI application over a `Simulator`; any ASGI server can serve it.

    A dropped connection needs the server's help to close the socket without
    an answer: ``drop_connection(scope)`` does it and returns True
    (`SimulatorServer` provides one). Without it, the app starts an answer and
    then fails, which an ASGI server turns into an aborted connection. A body
    the simulator sends in pieces (a drip, a compression bomb) goes out piece
    by piece, and stops when the client leaves.
    """

    __slots__ = ("_drop_connection", "_simulator")

    def __init__(self, simulator: Simulator, *, drop_connection: Callable[[Scope], bool] | None = None) -> None:
        self._simulator = simulator
        self._drop_connection = drop_connection

    @property
    def simulator(self) -> Simulator:
        """The simulator this app answers from."""
        return self._simulator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection scope."""
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        body = await _read_body(receive)
        if body is None:
            return
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope.get("headers", ())}
        host = headers.get("host") or _address(scope.get("server"))
        path: str = scope["path"]

        reply, finish = self._simulator._respond(
            scope["method"],
            path,
            query=scope.get("query_string", b"").decode("latin-1"),
            headers=headers,
            body=body,
            base_url=f"{scope.get('scheme', 'http')}://{host}",
        )
        if finish is not None:
            # Encoding a large image, or a compression bomb the first time, takes a while: keep the server's loop free.
            reply = await anyio.to_thread.run_sync(finish)

        if reply.delay > 0 and await _client_left_within(receive, reply.delay):
            return
        if reply.drop:
            await self._drop(scope, receive, send)
            return
        response_headers = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in reply.headers]
        response_headers.append((b"content-length", str(len(reply.body)).encode("ascii")))
        await send({"type": "http.response.start", "status": reply.status, "headers": response_headers})
        if reply.chunk:
            await _send_in_pieces(receive, send, reply.body, reply.chunk, reply.every)
        else:
            await send({"type": "http.response.body", "body": reply.body})

    async def _drop(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._drop_connection is not None and self._drop_connection(scope):
            # Wait for the server to notice, so it does not try to answer for us.
            await _client_left_within(receive, _DISCONNECT_WAIT)
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"1")]})
        raise ConnectionAbortedError("simulated dropped connection")


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _send_in_pieces(receive: Receive, send: Send, body: bytes, chunk: int, every: float) -> None:
    """Send ``body`` ``chunk`` bytes at a time, ``every`` seconds apart; stop if the client leaves."""
    async with anyio.create_task_group() as task_group:

        async def stop_when_the_client_leaves() -> None:
            await _client_left_within(receive, math.inf)
            task_group.cancel_scope.cancel()

        task_group.start_soon(stop_when_the_client_leaves)
        for start in range(0, len(body), chunk):
            if every > 0:
                await anyio.sleep(every)
            await send({"type": "http.response.body", "body": body[start : start + chunk], "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        task_group.cancel_scope.cancel()


async def _client_left_within(receive: Receive, seconds: float) -> bool:
    with anyio.move_on_after(seconds):
        message = await receive()
        while message["type"] != "http.disconnect":
            message = await receive()
        return True
    return False


def _address(server: object) -> str:
    if isinstance(server, (tuple, list)) and len(server) == 2:
        host, port = server
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return "localhost"
