"""How long the simulator's tasks take: the shifted log-normal model, uniform pairs, seeds and speed."""

from __future__ import annotations

import bisect
import dataclasses
import math
import random
import re
from pathlib import Path
from typing import Any

import pytest

from banana2_async.testing import DEFAULT_LATENCY, ManualClock, ShiftedLogNormal, Simulator

AUTH = {"Authorization": "Bearer sk-sim-test"}
SIMULATOR_PAGE = Path(__file__).resolve().parent.parent / "docs" / "simulator.md"
DRAWS = 4_000
PROBABILITIES = (0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99)


def _durations(sim: Simulator, resolution: str, count: int) -> list[float]:
    """Submit ``count`` tasks at ``resolution`` and return how long each takes, in simulator seconds."""
    body = b'{"prompt": "p", "resolution": "%s"}' % resolution.encode()
    for _ in range(count):
        assert sim.handle("POST", "/api/generate", headers=AUTH, body=body).status == 200
    return [task.finishes - task.created for task in sim.tasks() if task.request.get("resolution") == resolution]


@pytest.mark.parametrize("resolution", sorted(DEFAULT_LATENCY))
def test_draws_follow_the_quantile_function(resolution: str) -> None:
    """Of 4,000 seeded draws, the share at or below quantile(p) is p, within 0.025, and their mean is the mean."""
    model = DEFAULT_LATENCY[resolution]
    rng = random.Random(20)
    draws = sorted(model.sample(rng) for _ in range(DRAWS))
    for p in PROBABILITIES:
        share = bisect.bisect_right(draws, model.quantile(p)) / DRAWS
        assert share == pytest.approx(p, abs=0.025)
    assert sum(draws) / DRAWS == pytest.approx(model.mean, rel=0.02)


@pytest.mark.parametrize("resolution", sorted(DEFAULT_LATENCY))
def test_the_default_durations_skew_right(resolution: str) -> None:
    """Each default model has its mean above its median and a longer upper than lower tail, in theory and in draws."""
    model = DEFAULT_LATENCY[resolution]
    p10, p50, p90 = (model.quantile(p) for p in (0.1, 0.5, 0.9))
    assert model.mean > p50
    assert p90 - p50 > p50 - p10
    rng = random.Random(21)
    draws = sorted(model.sample(rng) for _ in range(DRAWS))
    d10, d50, d90 = (draws[int(p * DRAWS)] for p in (0.1, 0.5, 0.9))
    assert sum(draws) / DRAWS > d50
    assert d90 - d50 > d50 - d10


@pytest.mark.parametrize(
    ("resolution", "floor", "median", "cap"), [("1k", 6, 11, 56), ("2k", 9, 16, 79), ("4k", 15, 27, 135)]
)
def test_the_default_models_have_their_documented_floor_median_and_cap(
    resolution: str, floor: float, median: float, cap: float
) -> None:
    """Default 1k, 2k and 4k tasks take at least 6, 9, 15 s, at the median 11, 16, 27 s, and at most 56, 79, 135 s."""
    model = DEFAULT_LATENCY[resolution]
    assert (model.quantile(0), model.quantile(0.5), model.quantile(1)) == pytest.approx((floor, median, cap))
    assert model.sigma == 0.5


def test_the_documented_table_is_the_default_models() -> None:
    """The table on the simulator page gives each default model's parameters, quantiles and mean, to 0.1 s."""
    rows = re.findall(r"^\| `(\dk)` +((?:\|[^|\n]*)+)\|$", SIMULATOR_PAGE.read_text(encoding="utf-8"), re.M)
    assert sorted(resolution for resolution, _ in rows) == sorted(DEFAULT_LATENCY)
    for resolution, cells in rows:
        model = DEFAULT_LATENCY[resolution]
        documented = [float(cell) for cell in cells.strip("|").split("|")]
        quantiles = [model.quantile(p) for p in (0.1, 0.5, 0.9, 0.99)]
        actual = [model.floor, model.median_extra, model.sigma, model.quantile(1), *quantiles, model.mean]
        assert documented == [round(value, 1) for value in actual]


def test_a_draw_is_the_quantile_of_one_random_number() -> None:
    """sample() turns one rng.random() into quantile(u): the same seed gives the same durations."""
    model = ShiftedLogNormal(floor=2, median_extra=3, sigma=0.8, cap=20)
    drawn = random.Random(5)
    uniform = random.Random(5)
    assert [model.sample(drawn) for _ in range(50)] == [model.quantile(uniform.random()) for _ in range(50)]


def test_quantile_is_exact_at_known_points() -> None:
    """quantile(p) is floor + median_extra * exp(sigma * z_p), clipped at the cap; 0 and 1 give floor and cap."""
    model = ShiftedLogNormal(floor=1, median_extra=4, sigma=0.5)
    assert model.quantile(0.5) == 5
    assert model.quantile(0.8413447460685429) == pytest.approx(1 + 4 * math.exp(0.5))
    assert model.quantile(0) == 1
    assert model.quantile(1) == math.inf
    capped = dataclasses.replace(model, cap=7)
    assert capped.quantile(0.99) == 7
    assert capped.quantile(1) == 7
    assert capped.quantile(0.5) == 5
    for p in (-0.1, 1.5, math.nan):
        with pytest.raises(ValueError, match="p must be between 0 and 1"):
            model.quantile(p)


def test_sigma_zero_takes_floor_plus_median_extra_every_time() -> None:
    """With sigma=0 every duration is floor + median_extra, the cap still applying."""
    model = ShiftedLogNormal(floor=3, median_extra=2, sigma=0)
    rng = random.Random(1)
    assert {model.sample(rng) for _ in range(20)} == {5}
    assert (model.quantile(0), model.quantile(1), model.mean) == (5, 5, 5)
    assert ShiftedLogNormal(floor=3, median_extra=2, sigma=0, cap=4).mean == 4


@pytest.mark.parametrize("cap", [None, 1_000.0, 12.0, 7.0, 5.0])
def test_mean_is_the_integral_of_the_quantile_function(cap: float | None) -> None:
    """The mean, cap or not, agrees with the average of quantile(p) over p in (0, 1)."""
    model = ShiftedLogNormal(floor=5, median_extra=4, sigma=0.5, cap=cap)
    steps = 20_000
    average = sum(model.quantile((i + 0.5) / steps) for i in range(steps)) / steps
    assert model.mean == pytest.approx(average, rel=1e-3)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"floor": -1}, "floor"),
        ({"floor": math.nan}, "floor"),
        ({"floor": math.inf}, "floor"),
        ({"median_extra": 0}, "median_extra"),
        ({"median_extra": -2}, "median_extra"),
        ({"median_extra": math.inf}, "median_extra"),
        ({"sigma": -0.1}, "sigma"),
        ({"sigma": math.nan}, "sigma"),
        ({"cap": 0.5}, "cap"),
        ({"cap": math.nan}, "cap"),
    ],
)
def test_inconsistent_parameters_are_refused(options: dict[str, Any], field: str) -> None:
    """A floor below 0, a median_extra not above 0, a negative sigma, a cap below the floor, or NaN raise ValueError."""
    with pytest.raises(ValueError, match=f"^{field} must be"):
        ShiftedLogNormal(**{"floor": 1, "median_extra": 2, "sigma": 0.5, **options})


def test_a_model_is_a_frozen_value() -> None:
    """Models compare and hash by value and cannot be changed."""
    model = ShiftedLogNormal(6, 5, 0.5, cap=56)
    assert model == ShiftedLogNormal(floor=6, median_extra=5, sigma=0.5, cap=56)
    assert hash(model) == hash(ShiftedLogNormal(floor=6, median_extra=5, sigma=0.5, cap=56))
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.floor = 1  # type: ignore[misc]


def test_durations_lie_between_floor_and_cap_divided_by_speed() -> None:
    """With a model per resolution, each task's duration is that model's draw divided by speed, within floor and cap."""
    latency = {
        "1k": ShiftedLogNormal(floor=1, median_extra=1, sigma=1.5, cap=3),
        "2k": ShiftedLogNormal(floor=2, median_extra=2, sigma=1.5, cap=6),
        "4k": ShiftedLogNormal(floor=4, median_extra=4, sigma=1.5, cap=12),
    }
    for resolution, model in latency.items():
        durations = _durations(Simulator(latency=latency, speed=10, seed=8, clock=ManualClock()), resolution, 200)
        rng = random.Random(8)
        assert durations == pytest.approx([model.sample(rng) / 10 for _ in durations])
        assert model.cap is not None
        assert all(model.floor / 10 <= seconds <= model.cap / 10 for seconds in durations)
        assert max(durations) == pytest.approx(model.cap / 10)


def test_a_pair_is_still_drawn_uniformly() -> None:
    """A (low, high) pair draws rng.uniform(low, high) per task, as it always did, and may mix with models."""
    latency: dict[str, ShiftedLogNormal | tuple[float, float]] = {
        "1k": (2.0, 4.0),
        "2k": (3, 3),
        "4k": ShiftedLogNormal(floor=1, median_extra=1, sigma=0.1),
    }
    durations = _durations(Simulator(latency=latency, seed=4, clock=ManualClock()), "1k", 100)
    rng = random.Random(4)
    assert durations == [rng.uniform(2.0, 4.0) for _ in durations]
    assert set(_durations(Simulator(latency=latency, seed=4, clock=ManualClock()), "2k", 10)) == {3}


def test_the_same_seed_gives_the_same_durations() -> None:
    """Two simulators with the same seed draw the same default durations; another seed draws others."""
    runs = [_durations(Simulator(seed=seed, clock=ManualClock()), "2k", 30) for seed in (12, 12, 13)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_infinite_speed_takes_no_time() -> None:
    """With speed=inf every task finishes when it is created, whatever the model."""
    assert set(_durations(Simulator(speed=math.inf, clock=ManualClock()), "4k", 10)) == {0}


@pytest.mark.parametrize(
    ("latency", "error", "match"),
    [
        ({"1k": (2, 1), "2k": (1, 2), "4k": (1, 2)}, ValueError, r"^latency for 1k: need 0 <= low <= high"),
        ({"1k": (-1, 1), "2k": (1, 2), "4k": (1, 2)}, ValueError, r"^latency for 1k: need 0 <= low <= high"),
        ({"1k": 3.0, "2k": (1, 2), "4k": (1, 2)}, TypeError, r"^latency for 1k: a ShiftedLogNormal or a \(low, high\)"),
        ({"1k": (1, 2, 3), "2k": (1, 2), "4k": (1, 2)}, TypeError, r"^latency for 1k: a ShiftedLogNormal"),
        ({"1k": ShiftedLogNormal(1, 1, 0.5)}, ValueError, r"^latency has no entry for 2k, 4k"),
    ],
)
def test_a_bad_latency_table_is_refused(latency: dict[str, Any], error: type[Exception], match: str) -> None:
    """An inverted or negative pair, an entry that is neither a model nor a pair, or a missing resolution is refused."""
    with pytest.raises(error, match=match):
        Simulator(latency=latency)
