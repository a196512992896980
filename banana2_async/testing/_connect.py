"""Clients wired to a simulator: in-process through its transport, or over its server."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from banana2_async._client import AsyncBanana2

    from ._core import Simulator

__all__ = ["connect"]

# The client's own defaults, in real seconds: the provider's recommended poll
# pace and a generous deadline.
_POLL_INTERVAL = (2.0, 3.0)
_WAIT_TIMEOUT = 600.0
_MIN_POLL_INTERVAL = 0.001
_MIN_WAIT_TIMEOUT = 10.0


def client_options(simulator: Simulator, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with the simulator's key and pace filled in where not given.

    The poll interval and the deadline are the client's defaults divided by
    the simulator's speed, so the client polls as often per task as it would
    against the real API; the deadline never drops below ten seconds.
    """
    speed = simulator.speed
    low, high = (max(seconds / speed, _MIN_POLL_INTERVAL) for seconds in _POLL_INTERVAL)
    options.setdefault("api_key", simulator.api_key)
    options.setdefault("poll_interval", (low, high))
    options.setdefault("wait_timeout", max(_WAIT_TIMEOUT / speed, _MIN_WAIT_TIMEOUT))
    return options


@contextlib.asynccontextmanager
async def connect(simulator: Simulator, base_url: str | None = None, **options: Any) -> AsyncIterator[AsyncBanana2]:
    """An entered `AsyncBanana2` talking to ``simulator``.

    Without ``base_url`` it goes through the simulator's in-process transport;
    with one (a `SimulatorServer`'s), over the network.
    """
    from banana2_async._client import AsyncBanana2

    options = client_options(simulator, options)
    if base_url is not None:
        async with AsyncBanana2(base_url=base_url, **options) as client:
            yield client
        return
    async with AsyncBanana2(base_url=simulator.base_url, transport=simulator.transport(), **options) as client:
        yield client
