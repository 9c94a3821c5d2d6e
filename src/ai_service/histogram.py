"""Quantile estimates from bucketed counts (the rollups behind `/api/v1/stats`)."""

from __future__ import annotations

from collections.abc import Sequence


def quantile(bounds: Sequence[float], counts: Sequence[int], q: float) -> float | None:
    """Estimate the `q`-quantile (0..1) of values counted in buckets, or None if empty.

    `counts[i]` counts the values in [bounds[i-1], bounds[i]) — from 0 for the
    first bucket; the last one (`counts[len(bounds)]`) holds everything from
    `bounds[-1]` on. As Prometheus' `histogram_quantile`: find the bucket holding
    the value of rank `q * total` and interpolate linearly inside it; a rank in
    the open-ended last bucket reports its lower bound. The estimate is therefore
    only as good as the bucket that holds it.
    """
    if len(counts) != len(bounds) + 1:
        raise ValueError(f"{len(bounds)} bounds need {len(bounds) + 1} counts, not {len(counts)}")
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    cumulative = 0
    for index, count in enumerate(counts):
        if count > 0 and cumulative + count >= rank:
            if index == len(bounds):
                return float(bounds[-1])
            lower = float(bounds[index - 1]) if index else 0.0
            upper = float(bounds[index])
            return lower + (upper - lower) * max(rank - cumulative, 0.0) / count
        cumulative += count
    return float(bounds[-1])  # q above 1: past every value
