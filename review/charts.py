"""Numbers in, the geometry of small SVG charts out: a confidence histogram, learning curves,
and charts on the unit square (a reliability diagram, precision against coverage).

The templates draw the SVG from these coordinates; nothing here writes markup.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)

# Learning curves keep at most this many points per line (every n-th entry beyond it).
MAX_CURVE_POINTS = 400


@dataclass(frozen=True)
class Bar:
    """One histogram bar: its box in chart units, its count and the range it counts."""

    x: float
    y: float
    width: float
    height: float
    count: int
    low: float
    high: float


@dataclass(frozen=True)
class Histogram:
    width: int
    height: int
    bars: list[Bar]

    @property
    def description(self) -> str:
        return "; ".join(f"{bar.low:.1f} to {bar.high:.1f}: {bar.count}" for bar in self.bars)


def histogram(counts: list[int], width: int = 200, height: int = 60) -> Histogram:
    """Bars of `counts` over equal bins of [0, 1], scaled to the largest count."""
    top = max(counts, default=0) or 1
    step = width / max(1, len(counts))
    bars = []
    for index, count in enumerate(counts):
        bar_height = height * count / top
        bars.append(Bar(round(index * step + 1, 2), round(height - bar_height, 2),
                        round(step - 2, 2), round(bar_height, 2), count,
                        index / len(counts), (index + 1) / len(counts)))
    return Histogram(width, height, bars)


@dataclass(frozen=True)
class Line:
    name: str
    points: str  # "x,y x,y ..." in chart units


@dataclass(frozen=True)
class LineChart:
    """Lines over a shared x axis (training steps) and y axis, with tick labels."""

    title: str
    width: int
    height: int
    lines: list[Line]
    x_ticks: list[tuple[float, str]]
    y_ticks: list[tuple[float, str]]


def line_chart(title: str, steps: list[float], series: dict[str, list[float | None]],
               width: int = 320, height: int = 180) -> LineChart:
    """`series` (name -> values, None for missing) against `steps`, y from 0 to its maximum."""
    stride = max(1, -(-len(steps) // MAX_CURVE_POINTS))
    picked = list(range(0, len(steps), stride))
    if steps and picked[-1] != len(steps) - 1:
        picked.append(len(steps) - 1)
    values = [v for line in series.values() for v in line if v is not None]
    y_top = max(1.0, max(values, default=1.0))
    x_low, x_high = (steps[0], steps[-1]) if steps else (0.0, 1.0)
    x_span = (x_high - x_low) or 1.0

    def x_of(step: float) -> float:
        return round((step - x_low) / x_span * width, 2)

    def y_of(value: float) -> float:
        return round(height - value / y_top * height, 2)

    lines = []
    for name, line_values in series.items():
        points = " ".join(f"{x_of(steps[i])},{y_of(v)}" for i in picked
                          if (v := line_values[i]) is not None)
        if points:
            lines.append(Line(name, points))
    x_ticks = [(x_of(x_low + x_span * f), f"{x_low + x_span * f:g}") for f in (0, 0.5, 1)]
    y_ticks = [(y_of(y_top * f), f"{y_top * f:.2g}") for f in (0, 0.5, 1)]
    return LineChart(title, width, height, lines, x_ticks, y_ticks)


@dataclass(frozen=True)
class Dot:
    x: float
    y: float
    label: str


@dataclass(frozen=True)
class SquareChart:
    """Lines and dots over [0, 1] x [0, 1] (y from `y_low`), with their axis names."""

    title: str
    size: int
    lines: list[Line]
    dots: list[Dot]
    x_name: str
    y_name: str
    y_low: float


def square_chart(title: str, series: dict[str, list[tuple[float, float]]],
                 dots: list[tuple[float, float, str]], x_name: str, y_name: str,
                 y_low: float = 0.0, size: int = 220) -> SquareChart:
    """`series` (name -> (x, y) points, both in [0, 1]) and labelled `dots`, y shown from
    `y_low` to 1 (points under it sit on the axis)."""
    span = (1.0 - y_low) or 1.0

    def at(x: float, y: float) -> tuple[float, float]:
        return round(x * size, 2), round(size - max(0.0, y - y_low) / span * size, 2)

    lines = [Line(name, " ".join("{},{}".format(*at(x, y)) for x, y in points))
             for name, points in series.items() if points]
    return SquareChart(title, size, lines, [Dot(*at(x, y), label) for x, y, label in dots],
                       x_name, y_name, y_low)
