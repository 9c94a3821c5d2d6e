"""Quantile estimates from bucket counts."""

from __future__ import annotations

import pytest

from ai_service.histogram import quantile

BOUNDS = (1.0, 10.0, 100.0)  # buckets [0, 1), [1, 10), [10, 100), [100, inf)


def test_an_empty_histogram_has_no_quantile() -> None:
    assert quantile(BOUNDS, [0, 0, 0, 0], 0.5) is None


def test_the_estimate_interpolates_inside_the_bucket_holding_the_rank() -> None:
    # 4 values in [1, 10) and 4 in [10, 100): the median (rank 4) ends the first,
    # rank 6 (0.75) is half way through the second.
    counts = [0, 4, 4, 0]
    assert quantile(BOUNDS, counts, 0.5) == pytest.approx(10.0)
    assert quantile(BOUNDS, counts, 0.75) == pytest.approx(55.0)
    assert quantile(BOUNDS, counts, 0.25) == pytest.approx(5.5)


def test_the_first_bucket_starts_at_zero() -> None:
    assert quantile(BOUNDS, [2, 0, 0, 0], 0.5) == pytest.approx(0.5)


def test_a_rank_in_the_open_ended_bucket_reports_its_lower_bound() -> None:
    assert quantile(BOUNDS, [1, 0, 0, 9], 0.95) == 100.0


def test_empty_buckets_before_the_rank_are_skipped() -> None:
    assert quantile(BOUNDS, [0, 0, 1, 0], 0.0) == pytest.approx(10.0)
    assert quantile(BOUNDS, [0, 0, 1, 0], 1.0) == pytest.approx(100.0)


def test_counts_must_match_the_bounds() -> None:
    with pytest.raises(ValueError, match="3 bounds need 4 counts, not 3"):
        quantile(BOUNDS, [1, 2, 3], 0.5)
