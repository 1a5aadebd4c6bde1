"""Inline SVG line charts for the dashboard (metric per round, epsilon per round).

Hand-written rather than a charting library: the pages must work offline with every asset in
the package, and a few polylines with axes are ~60 lines of SVG. Each series is a ``<polyline>``
with a ``<title>`` (the browser shows it on hover) and ``data-series`` for tests.
"""

from __future__ import annotations

import math
from html import escape

WIDTH, HEIGHT, PAD_L, PAD_R, PAD_T, PAD_B = 720, 260, 56, 12, 12, 30
PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)

Series = tuple[str, list[tuple[float, float]]]


def color(index: int) -> str:
    """The palette colour of series ``index`` (the legend uses the same)."""
    return PALETTE[index % len(PALETTE)]


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values covering [low, high]."""
    if high <= low:
        high = low + 1.0
    raw = (high - low) / count
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 2.5, 5, 10) if raw <= step * m)
    first = math.ceil(low / step) * step
    return [round(first + i * step, 10) for i in range(int((high - first) / step + 1e-9) + 1)]


def line_chart(
    series: list[Series],
    *,
    rounds: int,
    y_label: str,
    limits: list[tuple[str, float]] | None = None,
    bold: str | None = None,
    colors: list[str] | None = None,
) -> str:
    """An SVG chart of ``series`` (label, [(round, value)]) over rounds 1..``rounds``.

    ``limits`` are dashed horizontal lines (e.g. privacy budgets); the series labelled ``bold``
    is drawn thicker (the global metric among the hospitals'); ``colors`` overrides the palette
    per series (so a hospital has one colour on every chart).
    """
    values = [y for _, pts in series for _, y in pts] + [v for _, v in limits or []]
    if not values:
        return '<p class="empty">no values yet</p>'
    low, high = min(values), max(values)
    pad = (high - low) * 0.05 or abs(high) * 0.05 or 1.0
    low, high = low - pad, high + pad
    span_x = max(rounds - 1, 1)

    def sx(x: float) -> float:
        return PAD_L + (x - 1) / span_x * (WIDTH - PAD_L - PAD_R)

    def sy(y: float) -> float:
        return HEIGHT - PAD_B - (y - low) / (high - low) * (HEIGHT - PAD_T - PAD_B)

    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(y_label)} per round">'
    ]
    for tick in nice_ticks(low, high):
        parts.append(
            f'<line class="grid" x1="{PAD_L}" x2="{WIDTH - PAD_R}" y1="{sy(tick):.1f}" '
            f'y2="{sy(tick):.1f}"/><text x="{PAD_L - 4}" y="{sy(tick) + 4:.1f}" '
            f'text-anchor="end">{tick:g}</text>'
        )
    for tick in nice_ticks(1, max(rounds, 2), 8):
        if 1 <= tick <= rounds and float(tick).is_integer():
            parts.append(
                f'<text x="{sx(tick):.1f}" y="{HEIGHT - 10}" text-anchor="middle">{tick:g}</text>'
            )
    for index, (label, points) in enumerate(series):
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
        width = 3 if label == bold else 1.5
        stroke = colors[index] if colors else color(index)
        parts.append(
            f'<polyline data-series="{escape(label)}" fill="none" '
            f'stroke="{stroke}" stroke-width="{width}" points="{coords}">'
            f"<title>{escape(label)}</title></polyline>"
        )
    for label, value in limits or []:
        parts.append(
            f'<line class="limit" x1="{PAD_L}" x2="{WIDTH - PAD_R}" y1="{sy(value):.1f}"'
            f' y2="{sy(value):.1f}"><title>{escape(label)}: {value:g}</title></line>'
        )
    parts.append(
        f'<text x="{WIDTH - PAD_R}" y="{HEIGHT - 22}" text-anchor="end" class="axis">'
        "round</text></svg>"
    )
    return "".join(parts)
