"""Shared fixtures: every async test runs on asyncio, on asyncio in debug mode, and on trio.

A test marked ``virtual_clock`` runs on trio with `trio.testing.MockClock(autojump_threshold=0)`:
whenever every task waits, the clock jumps to the next deadline, so its sleeps, backoffs and
deadlines cost no wall time and its timings are exact. On asyncio it keeps real time.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio.testing

ASYNCIO_DEBUG = ("asyncio", {"debug": True})

BACKENDS = [
    pytest.param("asyncio", id="asyncio"),
    # Debug mode reports coroutines never awaited, resources left unclosed, calls from the wrong
    # thread, and (as warnings in the log) callbacks that hold the event loop over 100 ms.
    pytest.param(ASYNCIO_DEBUG, id="asyncio+debug"),
    pytest.param("trio", id="trio"),
]


@pytest.fixture(params=BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> str | tuple[str, dict[str, Any]]:
    """Run each anyio test once per backend; trio on a virtual clock for a ``virtual_clock`` test."""
    backend: str | tuple[str, dict[str, Any]] = request.param
    if backend == "trio" and request.node.get_closest_marker("virtual_clock") is not None:
        return ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})
    return backend
