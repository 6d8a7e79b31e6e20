"""Robust aggregation of the parts that the senders of one all-reduce sent for one part index: screening (refuse
non-finite parts and parts of an outsized norm) and the aggregators of ``RobustnessSpec.aggregator``.

Pure functions on a stacked ``[n, k]`` float tensor (row i: sender i's part), so they are tested without a swarm;
``swarm.robust_allreduce`` calls them inside hivemind's reducer.

Usage::

    screening = screen_parts(parts, own_index=2, max_norm_ratio=10.0)
    usable = screening.accepted & (weights > 0)
    result = aggregate(parts[usable], weights[usable], spec.robustness)
    screening.refused  # {sender index: "part_non_finite" | "part_norm"}
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from swarm.spec import RobustnessSpec

NORM_EPSILON = 1e-6  # absolute slack of the norm bound: all-zero parts (LoRA B gradients at start) are fine
REFUSED_NON_FINITE = "part_non_finite"
REFUSED_NORM = "part_norm"


@dataclass(frozen=True)
class Screening:
    """Which senders' parts may be aggregated: ``accepted[i]`` is False exactly for the keys of ``refused``."""

    accepted: torch.Tensor  # bool [n]
    refused: dict[int, str] = field(default_factory=dict)  # sender index -> reason
    reference_norm: float = 0.0  # the norm the bound was taken from (before the ratio and epsilon)


def part_norms(parts: torch.Tensor) -> torch.Tensor:
    """L2 norm of every row, +inf for rows holding a NaN or inf (so they sort last)."""
    finite = torch.isfinite(parts).all(dim=1)
    norms = torch.linalg.vector_norm(parts.double(), dim=1)
    return torch.where(finite & torch.isfinite(norms), norms, torch.full_like(norms, math.inf))


def screen_parts(parts: torch.Tensor, own_index: int | None, max_norm_ratio: float,
                 epsilon: float = NORM_EPSILON) -> Screening:
    """Refuse non-finite parts and parts whose norm exceeds ``max_norm_ratio`` x the reference norm + ``epsilon``.

    The reference is the larger of the own part's norm (the reducer's own data, always trusted and never refused)
    and the lower median of all parts' norms: an attacker can neither shrink it below the honest majority's nor,
    while honest peers are the majority, inflate it. ``own_index`` is None on a reducer that sends nothing.
    """
    n = parts.shape[0]
    norms = part_norms(parts)
    lower_median = float(norms.sort().values[(n - 1) // 2]) if n else 0.0
    reference = lower_median if math.isfinite(lower_median) else 0.0
    if own_index is not None and math.isfinite(float(norms[own_index])):
        reference = max(reference, float(norms[own_index]))
    bound = max_norm_ratio * reference + epsilon
    accepted = torch.ones(n, dtype=torch.bool)
    refused: dict[int, str] = {}
    for index in range(n):
        if index == own_index:
            continue
        if not math.isfinite(float(norms[index])):
            refused[index] = REFUSED_NON_FINITE
        elif float(norms[index]) > bound:
            refused[index] = REFUSED_NORM
        if index in refused:
            accepted[index] = False
    return Screening(accepted=accepted, refused=refused, reference_norm=reference)


def weighted_mean(parts: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """hivemind's reduction: sum of weight x part in sender order, divided by the sum of weights."""
    accumulator = torch.zeros(parts.shape[1], dtype=parts.dtype)
    denominator = 0.0
    for part, weight in zip(parts, weights.tolist()):
        accumulator.add_(part, alpha=weight)
        denominator += weight
    return accumulator.div_(denominator)


def trim_count(n: int, trim_fraction: float) -> int:
    """Parts cut from each side of every coordinate: floor(trim_fraction x n), at least 1 once n >= 3, and never
    so many that nothing is left."""
    k = math.floor(trim_fraction * n)
    if n >= 3:
        k = max(k, 1)
    return max(0, min(k, (n - 1) // 2))


def trimmed_mean(parts: torch.Tensor, trim_fraction: float) -> torch.Tensor:
    """Coordinate-wise mean of the parts left after cutting ``trim_count`` smallest and largest values."""
    n = parts.shape[0]
    k = trim_count(n, trim_fraction)
    ordered = parts.sort(dim=0).values
    return ordered[k:n - k].mean(dim=0)


def coordinate_median(parts: torch.Tensor) -> torch.Tensor:
    """Coordinate-wise median (the mean of the two middle values for an even count)."""
    n = parts.shape[0]
    ordered = parts.sort(dim=0).values
    if n % 2:
        return ordered[n // 2].clone()
    return (ordered[n // 2 - 1] + ordered[n // 2]) / 2


def centered_clip(parts: torch.Tensor, iterations: int, radius_factor: float) -> torch.Tensor:
    """BTARD's CenteredClip: from the coordinate-wise median v, ``iterations`` fixed-point steps
    v += mean_i (x_i - v) * min(1, tau / ||x_i - v||), tau = ``radius_factor`` x the median distance of the parts
    from the starting point. A part moves v by at most tau / n per step, however far away it is."""
    center = coordinate_median(parts)
    distances = torch.linalg.vector_norm(parts - center, dim=1)
    tau = radius_factor * float(distances.median())
    for _ in range(iterations):
        offsets = parts - center
        distances = torch.linalg.vector_norm(offsets, dim=1)
        scale = torch.where(distances > tau, tau / distances.clamp_min(1e-30), torch.ones_like(distances))
        center = center + (offsets * scale[:, None]).mean(dim=0)
    return center


def aggregate(parts: torch.Tensor, weights: torch.Tensor, robustness: RobustnessSpec) -> torch.Tensor:
    """Combine the accepted parts ``[n, k]`` (n >= 1) with the run's aggregator. Only ``mean`` reads ``weights``:
    the robust ones ignore them, since a sender declares its own weight and an attacker would claim a huge one."""
    if parts.shape[0] == 0:
        raise ValueError("nothing to aggregate")
    if robustness.aggregator == "mean":
        return weighted_mean(parts, weights)
    if robustness.aggregator == "trimmed_mean":
        return trimmed_mean(parts, robustness.trim_fraction)
    if robustness.aggregator == "median":
        return coordinate_median(parts)
    return centered_clip(parts, robustness.clip_iterations, robustness.clip_radius_factor)
