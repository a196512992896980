"""An offline simulator of the NanoBanana 2 API, for tests, demos and benchmarks.

One stateful `Simulator` (accounts, credits, tasks, a clock, faults,
counters) with two faces: an in-process httpx transport (`Simulator.transport`)
and a loopback HTTP server (`Simulator.serve`, needs the ``simulator`` extra).
The pytest plugin in `banana2_async.testing.pytest_plugin` provides the
fixtures ``banana2_simulator``, ``banana2_server`` and ``banana2_client``.

Names are imported on first use: pytest loads the plugin in every run, and
that must stay cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._asgi import SimulatorApp as SimulatorApp
    from ._clock import ManualClock as ManualClock
    from ._core import DEFAULT_API_KEY as DEFAULT_API_KEY
    from ._core import DEFAULT_CREDITS as DEFAULT_CREDITS
    from ._core import DEFAULT_LATENCY as DEFAULT_LATENCY
    from ._core import IN_PROCESS_BASE_URL as IN_PROCESS_BASE_URL
    from ._core import MODEL as MODEL
    from ._core import Simulator as Simulator
    from ._faults import BOMB_ENCODINGS as BOMB_ENCODINGS
    from ._faults import ECHO_FORMS as ECHO_FORMS
    from ._faults import ECHO_PLACES as ECHO_PLACES
    from ._faults import MISSING as MISSING
    from ._faults import BombEncoding as BombEncoding
    from ._faults import EchoForm as EchoForm
    from ._faults import EchoPlace as EchoPlace
    from ._faults import Endpoint as Endpoint
    from ._faults import Fault as Fault
    from ._faults import FaultRule as FaultRule
    from ._hostile import EMPTY_RESPONSES as EMPTY_RESPONSES
    from ._hostile import POISONED_CODES as POISONED_CODES
    from ._hostile import POISONED_RESULT_URLS as POISONED_RESULT_URLS
    from ._hostile import POISONED_RETRY_AFTERS as POISONED_RETRY_AFTERS
    from ._hostile import POISONED_TASK_IDS as POISONED_TASK_IDS
    from ._images import image_size as image_size
    from ._images import render_image as render_image
    from ._latency import ShiftedLogNormal as ShiftedLogNormal
    from ._replies import Reply as Reply
    from ._server import SimulatorServer as SimulatorServer
    from ._stats import DROPPED as DROPPED
    from ._stats import SimulatedTask as SimulatedTask
    from ._stats import SimulatorStats as SimulatorStats
    from ._transport import SimulatorTransport as SimulatorTransport

__all__ = [
    "BOMB_ENCODINGS",
    "DEFAULT_API_KEY",
    "DEFAULT_CREDITS",
    "DEFAULT_LATENCY",
    "DROPPED",
    "ECHO_FORMS",
    "ECHO_PLACES",
    "EMPTY_RESPONSES",
    "IN_PROCESS_BASE_URL",
    "MISSING",
    "MODEL",
    "POISONED_CODES",
    "POISONED_RESULT_URLS",
    "POISONED_RETRY_AFTERS",
    "POISONED_TASK_IDS",
    "BombEncoding",
    "EchoForm",
    "EchoPlace",
    "Endpoint",
    "Fault",
    "FaultRule",
    "ManualClock",
    "Reply",
    "ShiftedLogNormal",
    "SimulatedTask",
    "Simulator",
    "SimulatorApp",
    "SimulatorServer",
    "SimulatorStats",
    "SimulatorTransport",
    "image_size",
    "render_image",
]

_HOMES = {
    "BOMB_ENCODINGS": "_faults",
    "DEFAULT_API_KEY": "_core",
    "DEFAULT_CREDITS": "_core",
    "DEFAULT_LATENCY": "_core",
    "DROPPED": "_stats",
    "ECHO_FORMS": "_faults",
    "ECHO_PLACES": "_faults",
    "EMPTY_RESPONSES": "_hostile",
    "IN_PROCESS_BASE_URL": "_core",
    "MISSING": "_faults",
    "MODEL": "_core",
    "POISONED_CODES": "_hostile",
    "POISONED_RESULT_URLS": "_hostile",
    "POISONED_RETRY_AFTERS": "_hostile",
    "POISONED_TASK_IDS": "_hostile",
    "BombEncoding": "_faults",
    "EchoForm": "_faults",
    "EchoPlace": "_faults",
    "Endpoint": "_faults",
    "Fault": "_faults",
    "FaultRule": "_faults",
    "ManualClock": "_clock",
    "Reply": "_replies",
    "ShiftedLogNormal": "_latency",
    "SimulatedTask": "_stats",
    "Simulator": "_core",
    "SimulatorApp": "_asgi",
    "SimulatorServer": "_server",
    "SimulatorStats": "_stats",
    "SimulatorTransport": "_transport",
    "image_size": "_images",
    "render_image": "_images",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
