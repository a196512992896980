"""Shared fixtures: every async test runs on asyncio, on asyncio in debug mode, and on trio.

A test marked ``virtual_clock`` runs on trio with `trio.testing.MockClock(autojump_threshold=0)`:
whenever every task waits, the clock jumps to the next deadline, so its sleeps, backoffs and
deadlines cost no wall time and its timings are exact. On asyncio it keeps real time.

``pytest -m "not slow"`` is the fast loop. It leaves out the ``slow`` tests, the runs in asyncio's
debug mode, and the asyncio runs of a ``slow_in_real_time`` test (one whose trio run is on the
virtual clock and fast).
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
    pytest.param(ASYNCIO_DEBUG, id="asyncio+debug", marks=pytest.mark.slow),
    pytest.param("trio", id="trio"),
]


@pytest.fixture(params=BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> str | tuple[str, dict[str, Any]]:
    """Run each anyio test once per backend; trio on a virtual clock for a ``virtual_clock`` test."""
    backend: str | tuple[str, dict[str, Any]] = request.param
    if backend == "trio" and request.node.get_closest_marker("virtual_clock") is not None:
        return ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})
    return backend


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``slow`` the asyncio runs of a ``slow_in_real_time`` test, before ``-m`` selects."""
    for item in items:
        if item.get_closest_marker("slow_in_real_time") is None:
            continue
        callspec = getattr(item, "callspec", None)
        backend = callspec.params.get("anyio_backend") if callspec is not None else None
        if backend == "asyncio" or backend == ASYNCIO_DEBUG:
            item.add_marker(pytest.mark.slow)
