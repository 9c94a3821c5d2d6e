"""The overview's SVG bar charts (`ai_service.ui.charts`)."""

from __future__ import annotations

from ai_service.ui.charts import HEIGHT, Point, bars, failure_rate


def test_bars_scale_to_the_busiest_point_and_stack_failed_on_completed() -> None:
    chart = bars([Point("10:00", 2, 0), Point("10:01", 3, 1), Point("10:02", 0, 0)], "t")
    assert chart.peak == 4
    busiest = chart.bars[1]
    assert busiest.completed_h + busiest.failed_h == HEIGHT - 2
    assert busiest.failed_y + busiest.failed_h == busiest.completed_y
    assert busiest.title == "10:01: 3 completed, 1 failed"
    assert chart.bars[2].completed_h == 0
    assert (chart.first, chart.last) == ("10:00", "10:02")


def test_an_empty_chart_has_no_bars_and_no_peak() -> None:
    chart = bars([], "t")
    assert chart.bars == []
    assert chart.peak == 0


def test_failure_rate_in_words() -> None:
    assert failure_rate([Point("a", 3, 1)]) == "25.0 % (1 of 4)"
    assert failure_rate([Point("a", 0, 0)]) == "-"
