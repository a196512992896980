"""Records, statistics, the machine, and the markdown table of a benchmark run."""

from __future__ import annotations

import importlib.metadata
import math
import os
import platform
import statistics
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Record", "machine", "median", "percentile", "ratio", "render_table"]

_PACKAGES = (
    "banana2-async",
    "httpx",
    "httpcore",
    "h11",
    "h2",
    "anyio",
    "pydantic",
    "pydantic-core",
    "uvicorn",
    "hypercorn",
)


@dataclass(frozen=True)
class Record:
    """One reported figure.

    ``value`` is ours, ``baseline`` the same figure of the baseline measured in
    the same run (``None`` where there is none). ``target`` says what is aimed
    for, and ``met`` whether ``value`` meets it (``None``: no target, or not
    measured on this machine). ``rounds`` and ``baseline_rounds`` hold each
    round's figure where ``value`` is their median.
    """

    name: str
    value: float | None
    unit: str
    target: str | None = None
    met: bool | None = None
    baseline: float | None = None
    note: str | None = None
    rounds: list[float] | None = None
    baseline_rounds: list[float] | None = None

    def as_json(self) -> dict[str, Any]:
        """The record as a JSON object (NaN, which JSON lacks, as null)."""
        return {key: _jsonable(value) for key, value in asdict(self).items()}


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, list):
        return [_jsonable(item) for item in value]
    return value


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``, linearly interpolated; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: Iterable[float]) -> float:
    """The median of ``values``; NaN when empty."""
    items = list(values)
    return statistics.median(items) if items else math.nan


def ratio(ours: float, theirs: float) -> float:
    """``ours / theirs``, NaN where it is undefined."""
    if not theirs or math.isnan(ours) or math.isnan(theirs):
        return math.nan
    return ours / theirs


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """The machine a run is measured on: CPU, cores, OS, Python and package versions."""
    versions: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    try:
        load: list[float] | None = [round(value, 2) for value in os.getloadavg()]
    except OSError:
        load = None
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "os": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "executable": sys.executable,
        "packages": versions,
        "load_average": load,
    }


def _number(value: float | None, unit: str) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    if unit in ("tasks", "polls"):
        return f"{value:,.0f}"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}" if magnitude < 1 else f"{value:.2f}"


def render_table(records: Sequence[Record]) -> str:
    """The records as a markdown table."""
    lines = ["| figure | ours | baseline | unit | target | met |", "|---|---:|---:|---|---|:---:|"]
    for record in records:
        met = {True: "yes", False: "**no**", None: ""}[record.met]
        lines.append(
            f"| {record.name} | {_number(record.value, record.unit)} | {_number(record.baseline, record.unit)} "
            f"| {record.unit} | {record.target or ''} | {met} |"
        )
    return "\n".join(lines)
