"""Screening and the aggregators of swarm.robust_aggregation on small exact examples."""

from __future__ import annotations

import math

import pytest
import torch

from swarm.robust_aggregation import (REFUSED_NON_FINITE, REFUSED_NORM, aggregate, centered_clip, coordinate_median,
                                      screen_parts, trim_count, trimmed_mean, weighted_mean)
from swarm.spec import RobustnessSpec


def honest_parts(n: int = 5, k: int = 64, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return 1.0 + 0.1 * torch.randn(n, k, generator=generator)


def test_screening_refuses_non_finite_and_outsized_parts_and_names_them():
    parts = honest_parts(6)  # three bad parts of six: the honest half still sets the reference
    parts[1, 3] = math.nan
    parts[2, 0] = math.inf
    parts[4] *= 11.0
    screening = screen_parts(parts, own_index=0, max_norm_ratio=10.0)
    assert screening.refused == {1: REFUSED_NON_FINITE, 2: REFUSED_NON_FINITE, 4: REFUSED_NORM}
    assert screening.accepted.tolist() == [True, False, False, True, False, True]


def test_screening_keeps_parts_within_the_bound():
    parts = honest_parts(4)
    parts[3] *= 9.0  # within 10x of the reference
    assert screen_parts(parts, own_index=0, max_norm_ratio=10.0).refused == {}


def test_own_part_is_never_refused_and_raises_the_reference():
    parts = honest_parts(4)
    parts[2] *= 1000.0
    screening = screen_parts(parts, own_index=2, max_norm_ratio=10.0)
    assert screening.refused == {}  # the own part is huge, so the reference is its norm
    screening = screen_parts(parts, own_index=0, max_norm_ratio=10.0)
    assert screening.refused == {2: REFUSED_NORM}


def test_screening_uses_the_lower_median_when_the_own_part_is_small():
    parts = honest_parts(4)
    parts[0] *= 0.01  # a small own part: the honest majority's norm is the reference, not 10x the tiny one
    assert screen_parts(parts, own_index=0, max_norm_ratio=10.0).refused == {}


def test_all_zero_parts_pass_and_anything_else_is_refused_then():
    parts = torch.zeros(4, 16)
    assert screen_parts(parts, own_index=0, max_norm_ratio=10.0).refused == {}
    parts[3] = torch.randn(16)
    assert screen_parts(parts, own_index=0, max_norm_ratio=10.0).refused == {3: REFUSED_NORM}


def test_mean_is_the_weighted_mean():
    parts = honest_parts(3)
    weights = torch.tensor([1.0, 2.0, 5.0])
    expected = (parts * weights[:, None]).sum(0) / weights.sum()
    result = aggregate(parts, weights, RobustnessSpec(aggregator="mean"))
    assert torch.allclose(result, expected, atol=1e-6)
    assert torch.allclose(weighted_mean(parts, weights), expected, atol=1e-6)


@pytest.mark.parametrize("outlier", [1e3, -1e6, 1e30])
@pytest.mark.parametrize("aggregator", ["median", "trimmed_mean"])
def test_median_and_trimmed_mean_ignore_one_outlier_of_any_size(aggregator, outlier):
    parts = honest_parts(4)
    honest = parts[:3]
    parts[3] = outlier
    result = aggregate(parts, torch.ones(4), RobustnessSpec(aggregator=aggregator))
    # every coordinate stays within the honest values' range, whatever the outlier's size
    assert (result >= honest.min(0).values - 1e-6).all() and (result <= honest.max(0).values + 1e-6).all()


def test_robust_aggregators_ignore_declared_weights():
    parts = honest_parts(4)
    parts[3] = 50.0
    for aggregator in ("median", "trimmed_mean", "centered_clip"):
        spec = RobustnessSpec(aggregator=aggregator)
        light = aggregate(parts, torch.ones(4), spec)
        heavy = aggregate(parts, torch.tensor([1.0, 1.0, 1.0, 1e9]), spec)
        assert torch.equal(light, heavy)


def test_trim_count():
    assert [trim_count(n, 0.25) for n in (1, 2, 3, 4, 8, 9)] == [0, 0, 1, 1, 2, 2]
    assert trim_count(3, 0.0) == 1 and trim_count(10, 0.49) == 4


def test_trimmed_mean_and_median_of_known_values():
    parts = torch.tensor([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [100.0, -100.0]])
    assert trimmed_mean(parts, 0.25).tolist() == [2.5, 15.0]
    assert coordinate_median(parts).tolist() == [2.5, 15.0]
    assert coordinate_median(parts[:3]).tolist() == [2.0, 20.0]


def test_centered_clip_bounds_an_outliers_influence():
    parts = honest_parts(5, k=32)
    honest_center = centered_clip(parts[:4], iterations=3, radius_factor=1.0)
    shifts = []
    for size in (10.0, 1e3, 1e6):
        attacked = parts.clone()
        attacked[4] = size
        result = centered_clip(attacked, iterations=3, radius_factor=1.0)
        shifts.append(float((result - honest_center).norm()))
    # however far the outlier is, it moves the result by about the same bounded amount
    distances = (parts[:4] - coordinate_median(parts[:4])).norm(dim=1)
    assert max(shifts) < 3 * float(distances.max())
    assert shifts[2] < 1.5 * shifts[0] + 1e-3


def test_centered_clip_of_honest_parts_is_near_their_mean():
    parts = honest_parts(6, k=128)
    result = centered_clip(parts, iterations=50, radius_factor=100.0)  # radius covers everyone: the mean
    assert torch.allclose(result, parts.mean(0), atol=1e-4)
