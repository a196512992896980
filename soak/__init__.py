"""The reliability soak of banana2-async: ``nox -s soak -- --tasks N`` (or ``python -m soak``).

Thousands of tasks through one client against the loopback simulator with
every fault at once; it exits non-zero if any invariant fails.
"""

from __future__ import annotations

from ._run import SoakConfig, SoakRun, run_soak
from ._server import FaultMix
from ._verify import Check, as_json, render, verify

__all__ = ["Check", "FaultMix", "SoakConfig", "SoakRun", "as_json", "render", "run_soak", "verify"]
