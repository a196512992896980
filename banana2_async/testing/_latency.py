"""How long a simulated task takes: duration models, drawn once per task from a seeded random source.

Each model turns one ``random()`` draw into a duration through its own
quantile function, so a seed fixes the durations and the draws follow
`quantile` exactly.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Final, TypeAlias

__all__ = ["LatencyModel", "ShiftedLogNormal", "Uniform", "latency_model"]

_STANDARD_NORMAL: Final = NormalDist()


@dataclass(frozen=True, slots=True)
class ShiftedLogNormal:
    """Task durations in seconds: a floor, plus a right-skewed (log-normal) extra time.

    A duration is ``floor + median_extra * exp(sigma * Z)`` for a standard
    normal ``Z``, clipped at ``cap`` if one is given. Every task takes at least
    ``floor``; the time beyond it is log-normal, as queueing and generation
    times tend to be: most tasks finish near ``floor + median_extra``, a few
    take several times longer. With ``sigma=0.5``, eight tasks in ten take
    between ``0.53`` and ``1.9`` times ``median_extra`` beyond the floor.

    Args:
        floor: the least a task takes; at least 0.
        median_extra: the median of the time beyond ``floor``; more than 0.
        sigma: the spread of that time, as the standard deviation of its
            logarithm; at least 0 (``0``: every task takes ``floor + median_extra``).
        cap: the most a task takes, at least ``floor``; None for no limit.

    Raises:
        ValueError: a value out of its range, or not finite.
    """

    floor: float
    median_extra: float
    sigma: float
    cap: float | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.floor) and self.floor >= 0):
            raise ValueError(f"floor must be a finite number of seconds >= 0, not {self.floor!r}")
        if not (math.isfinite(self.median_extra) and self.median_extra > 0):
            raise ValueError(f"median_extra must be a finite number of seconds > 0, not {self.median_extra!r}")
        if not (math.isfinite(self.sigma) and self.sigma >= 0):
            raise ValueError(f"sigma must be a finite number >= 0, not {self.sigma!r}")
        if self.cap is not None and not self.cap >= self.floor:
            raise ValueError(f"cap must be at least floor ({self.floor!r}), not {self.cap!r}")

    def sample(self, rng: random.Random) -> float:
        """One duration, from one ``rng.random()`` draw."""
        return self.quantile(rng.random())

    def quantile(self, p: float) -> float:
        """The duration that a fraction ``p`` of tasks (0 <= p <= 1) finish within.

        ``quantile(0)`` is ``floor`` and ``quantile(1)`` is ``cap`` (infinite
        without one).

        Raises:
            ValueError: ``p`` outside [0, 1].
        """
        if not 0 <= p <= 1:
            raise ValueError(f"p must be between 0 and 1, not {p!r}")
        if self.sigma == 0:
            extra = self.median_extra
        elif p == 0:
            extra = 0.0
        elif p == 1:
            extra = math.inf
        else:
            try:
                extra = self.median_extra * math.exp(self.sigma * _STANDARD_NORMAL.inv_cdf(p))
            except OverflowError:
                extra = math.inf
        seconds = self.floor + extra
        return seconds if self.cap is None else min(seconds, self.cap)

    @property
    def mean(self) -> float:
        """The mean duration, the cap taken into account."""
        mu = math.log(self.median_extra)
        if self.cap is None:
            return self.floor + math.exp(mu + self.sigma**2 / 2)
        room = self.cap - self.floor
        if room == 0:
            return self.floor
        if self.sigma == 0:
            return self.floor + min(self.median_extra, room)
        # E[min(X, room)] for X log-normal(mu, sigma): the mean below room, plus room times P(X > room).
        z = (math.log(room) - mu) / self.sigma
        below = math.exp(mu + self.sigma**2 / 2) * _STANDARD_NORMAL.cdf(z - self.sigma)
        return self.floor + below + room * (1 - _STANDARD_NORMAL.cdf(z))


@dataclass(frozen=True, slots=True)
class Uniform:
    """Task durations in seconds, uniform between ``low`` and ``high`` (0 <= low <= high).

    Raises:
        ValueError: ``low`` or ``high`` out of that order.
    """

    low: float
    high: float

    def __post_init__(self) -> None:
        if not 0 <= self.low <= self.high:
            raise ValueError(f"need 0 <= low <= high, got ({self.low}, {self.high})")

    def sample(self, rng: random.Random) -> float:
        """One duration, from one ``rng.random()`` draw."""
        return rng.uniform(self.low, self.high)

    def quantile(self, p: float) -> float:
        """The duration that a fraction ``p`` of tasks (0 <= p <= 1) finish within.

        Raises:
            ValueError: ``p`` outside [0, 1].
        """
        if not 0 <= p <= 1:
            raise ValueError(f"p must be between 0 and 1, not {p!r}")
        return self.low + p * (self.high - self.low)

    @property
    def mean(self) -> float:
        """The mean duration."""
        return (self.low + self.high) / 2


LatencyModel: TypeAlias = ShiftedLogNormal | Uniform


def latency_model(resolution: str, value: LatencyModel | Sequence[float]) -> LatencyModel:
    """The model for one entry of a simulator's latency table: a model as is, a ``(low, high)`` pair as `Uniform`.

    Raises:
        ValueError: an inconsistent pair, naming ``resolution``.
        TypeError: neither a model nor a pair.
    """
    if isinstance(value, (ShiftedLogNormal, Uniform)):
        return value
    try:
        low, high = value
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"latency for {resolution}: a ShiftedLogNormal or a (low, high) pair of seconds, not {value!r}"
        ) from exc
    try:
        return Uniform(low, high)
    except ValueError as exc:
        raise ValueError(f"latency for {resolution}: {exc}") from exc
