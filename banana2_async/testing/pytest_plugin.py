"""pytest fixtures for testing code that uses banana2_async, against the simulator.

Installed with the package and loaded by pytest automatically (entry point
``pytest11``). It provides:

- ``banana2_simulator``: a fresh `Simulator`, fast (``speed=1000``) and seeded;
- ``banana2_server``: that simulator served over loopback (needs the
  ``simulator`` extra; the test is skipped without it);
- ``banana2_client``: an entered `AsyncBanana2` wired to the simulator
  in-process; an async fixture, for tests marked ``@pytest.mark.anyio``.

Options of the simulator come from the ``banana2_simulator`` marker::

    @pytest.mark.banana2_simulator(credits=40, speed=math.inf)
    async def test_runs_out_of_credits(banana2_client): ...

Loading this module imports nothing but pytest: the simulator is imported
when a fixture is first used.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from banana2_async import AsyncBanana2
    from banana2_async.testing import Simulator, SimulatorServer

__all__ = ["banana2_client", "banana2_server", "banana2_simulator"]

_DEFAULTS: dict[str, Any] = {"speed": 1000.0, "seed": 0}


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``banana2_simulator`` marker."""
    config.addinivalue_line(
        "markers",
        "banana2_simulator(**options): options of the Simulator built by the banana2_simulator fixture",
    )


@pytest.fixture
def banana2_simulator(request: pytest.FixtureRequest) -> Simulator:
    """A fresh simulator: ``Simulator(speed=1000, seed=0)`` unless the ``banana2_simulator`` marker says otherwise."""
    from banana2_async.testing import Simulator

    options = dict(_DEFAULTS)
    marker = request.node.get_closest_marker("banana2_simulator")
    if marker is not None:
        if marker.args:
            raise TypeError("the banana2_simulator marker takes keyword arguments only")
        options.update(marker.kwargs)
    return Simulator(**options)


@pytest.fixture
def banana2_server(banana2_simulator: Simulator) -> Iterator[SimulatorServer]:
    """The ``banana2_simulator`` served over loopback; ``banana2_server.base_url`` says where."""
    pytest.importorskip("uvicorn", reason="banana2_server needs the 'simulator' extra (uvicorn)")
    with banana2_simulator.serve() as server:
        yield server


@pytest.fixture
async def banana2_client(banana2_simulator: Simulator) -> AsyncIterator[AsyncBanana2]:
    """An entered `AsyncBanana2` wired in-process to ``banana2_simulator``, polling at the simulator's pace."""
    async with banana2_simulator.client() as client:
        yield client
