"""A real HTTP server for a simulator: uvicorn on a loopback port, in a thread of its own.

uvicorn runs its own asyncio loop in that thread, so the caller's event loop,
asyncio or trio, only waits for start and stop in a worker thread.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import MutableMapping
from contextlib import AbstractAsyncContextManager, suppress
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from ._asgi import SimulatorApp

if TYPE_CHECKING:
    from banana2_async._client import AsyncBanana2

    from ._core import Simulator

__all__ = ["SimulatorServer"]

_POLL = 0.005


class SimulatorServer:
    """Serves a `Simulator` over HTTP on ``host`` (loopback by default) and ``port`` (0: a free one).

    Use it as ``with`` or ``async with``; `base_url` is valid inside. A
    dropped-connection fault closes the TCP connection without an answer.
    Needs uvicorn (the ``simulator`` extra).
    """

    __slots__ = ("_host", "_port", "_server", "_simulator", "_socket", "_thread")

    def __init__(self, simulator: Simulator, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self._simulator = simulator
        self._host = host
        self._port = port
        self._server: Any = None
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        where = self.base_url if self._thread is not None else "stopped"
        return f"SimulatorServer({where})"

    @property
    def simulator(self) -> Simulator:
        """The simulator it serves."""
        return self._simulator

    @property
    def port(self) -> int:
        """The port it listens on (the one chosen, when asked for port 0)."""
        if self._socket is None:
            raise RuntimeError("the server is not running")
        return int(self._socket.getsockname()[1])

    @property
    def base_url(self) -> str:
        """Where to reach it, e.g. ``http://127.0.0.1:54321``."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    def client(self, **options: Any) -> AbstractAsyncContextManager[AsyncBanana2]:
        """An `AsyncBanana2` talking to this server over loopback, for ``async with``.

        ``options`` go to `AsyncBanana2`; defaults as for `Simulator.client`.
        """
        from ._connect import connect

        return connect(self._simulator, self.base_url, **options)

    def start(self, timeout: float = 10.0) -> None:
        """Bind the port and serve from a new thread; return once it accepts connections.

        Raises:
            ImportError: uvicorn is not installed.
            RuntimeError: already running, or the server failed to start.
        """
        if self._thread is not None:
            raise RuntimeError("the server is already running")
        uvicorn = _import_uvicorn()
        from uvicorn.protocols.http.h11_impl import H11Protocol

        connections: dict[tuple[Any, ...], Any] = {}

        class TrackingProtocol(H11Protocol):
            # The app closes a connection by its peer address, to drop it without an answer.
            def connection_made(self, transport: Any) -> None:
                super().connection_made(transport)
                connections[_peer(transport)] = transport
                _no_delay(transport)

            def connection_lost(self, exc: Exception | None) -> None:
                connections.pop(_peer(self.transport), None)
                super().connection_lost(exc)

        def drop_connection(scope: MutableMapping[str, Any]) -> bool:
            client = scope.get("client")
            transport = connections.get(tuple(client)) if client else None
            if transport is None:
                return False
            transport.close()
            return True

        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.create_server((self._host, self._port), family=family)
        config = uvicorn.Config(
            SimulatorApp(self._simulator, drop_connection=drop_connection),
            lifespan="off",
            log_config=None,
            log_level=None,
            access_log=False,
            proxy_headers=False,
            server_header=False,
            http=TrackingProtocol,
            ws="none",
            loop="asyncio",
            timeout_graceful_shutdown=1,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="banana2-simulator-server", daemon=True
        )
        self._server, self._socket, self._thread = server, sock, thread
        thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the simulator's server did not start")
            time.sleep(_POLL)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving and wait for the thread to end. Does nothing if not running."""
        server, sock, thread = self._server, self._socket, self._thread
        if thread is None:
            return
        server.should_exit = True
        thread.join(timeout)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout)
        if sock is not None:
            sock.close()
        self._server = self._socket = self._thread = None

    def __enter__(self) -> SimulatorServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> SimulatorServer:
        await anyio.to_thread.run_sync(self.start)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Leaving a cancelled scope must still stop the thread.
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self.stop)


def _no_delay(transport: Any) -> None:
    # asyncio sets TCP_NODELAY only on sockets created with proto=IPPROTO_TCP, and socket.create_server
    # leaves proto 0: without it, the answer's body waits for the ACK of its headers, 40 ms per request.
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _peer(transport: Any) -> tuple[Any, ...]:
    peer = transport.get_extra_info("peername")
    return tuple(peer[:2]) if peer else ()


def _import_uvicorn() -> Any:
    try:
        import uvicorn
    except ImportError as exc:
        raise ImportError(
            "serving the simulator over HTTP needs uvicorn: pip install 'banana2-async[simulator]'"
        ) from exc
    return uvicorn
