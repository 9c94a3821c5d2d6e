"""Small server-rendered SVG charts for the overview (no script, no library).

Each bar carries a `<title>` with its numbers in words and the page repeats the
data as a table, so a chart is readable without colour and by a screen reader.
Failed jobs are drawn hatched as well as in another colour.
"""

from __future__ import annotations

from dataclasses import dataclass

WIDTH = 600
HEIGHT = 120


@dataclass(frozen=True, slots=True)
class Point:
    """One bar: its label (a minute or an hour) and the jobs finished then."""

    label: str
    completed: int
    failed: int


@dataclass(frozen=True, slots=True)
class Bar:
    """A bar's geometry in the SVG's coordinates."""

    x: float
    width: float
    completed_y: float
    completed_h: float
    failed_y: float
    failed_h: float
    title: str


@dataclass(frozen=True, slots=True)
class Chart:
    """A stacked bar chart: completed below, failed on top."""

    title: str
    bars: list[Bar]
    peak: int
    first: str
    last: str
    width: int = WIDTH
    height: int = HEIGHT


def bars(points: list[Point], title: str) -> Chart:
    """Lay out `points` as stacked bars scaled to the busiest one."""
    peak = max((p.completed + p.failed for p in points), default=0)
    scale = (HEIGHT - 2) / peak if peak else 0.0
    step = WIDTH / max(len(points), 1)
    laid: list[Bar] = []
    for index, point in enumerate(points):
        completed_h = point.completed * scale
        failed_h = point.failed * scale
        completed_y = HEIGHT - completed_h
        laid.append(
            Bar(
                x=round(index * step + 0.5, 2),
                width=round(max(step - 1, 1), 2),
                completed_y=round(completed_y, 2),
                completed_h=round(completed_h, 2),
                failed_y=round(completed_y - failed_h, 2),
                failed_h=round(failed_h, 2),
                title=f"{point.label}: {point.completed} completed, {point.failed} failed",
            )
        )
    return Chart(
        title=title,
        bars=laid,
        peak=peak,
        first=points[0].label if points else "",
        last=points[-1].label if points else "",
    )


def failure_rate(points: list[Point]) -> str:
    """The share of finished jobs that failed over `points`, in words ("-" when none)."""
    completed = sum(p.completed for p in points)
    failed = sum(p.failed for p in points)
    if completed + failed == 0:
        return "-"
    return f"{100 * failed / (completed + failed):.1f} % ({failed} of {completed + failed})"
