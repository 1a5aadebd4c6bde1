"""Per-round line charts as PNG, drawn with Pillow alone.

``medfed simulate`` draws one or two small charts per study. Importing matplotlib cost more CPU
(~0.3 s) than everything else in writing the run directory; Pillow imports in ~10 ms. The chart
is drawn at twice its size and averaged down 2 x 2, which anti-aliases lines and markers while
keeping their interior pixels exactly in the series colour (the tests look for them).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from PIL import Image, ImageColor, ImageDraw, ImageFont

Point = tuple[float, float | None]
Pixel = tuple[float, float]
Box = tuple[float, float, float, float]
#: Okabe & Ito's colour-blind-safe palette, black left out: black marks the highlighted series.
PALETTE = ("#E69F00", "#56B4E9", "#009E73", "#0072B2", "#D55E00", "#CC79A7", "#F0E442")
#: Marker shapes, changed once the palette has been used up (more than 7 series).
MARKERS = ("circle", "square", "triangle", "diamond")
HIGHLIGHT = "#000000"
LEGEND_CAP = 12
NAME_CHARS = 22
_SS = 2  # supersampling factor
Rgb = tuple[int, ...]
_GRID, _FRAME, _INK = (225, 225, 225), (90, 90, 90), (30, 30, 30)


def nice_step(raw: float) -> float:
    """The smallest 1, 2 or 5 x 10^k that is at least ``raw`` (> 0)."""
    power = 10.0 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw * (1 - 1e-9))


def nice_ticks(lo: float, hi: float, target: int = 6, integer: bool = False) -> list[float]:
    """Evenly spaced 1-2-5 ticks from at or below ``lo`` to at or above ``hi``.

    At most ``target + 2`` ticks; ``integer`` keeps the step a whole number (rounds). A zero span
    (one point, a constant series) is widened by 5 % of the value (or by 0.5, or by 1 when
    ``integer``) instead of dividing by zero.
    """
    lo, hi = min(lo, hi), max(lo, hi)
    if hi - lo <= max(1e-9 * max(abs(lo), abs(hi)), 1e-300):  # lost in float rounding: zero
        pad = 1.0 if integer else (abs(lo) * 0.05 or 0.5)
        lo, hi = lo - pad, hi + pad
    step = nice_step((hi - lo) / target)
    if integer:
        step = max(step, 1.0)
    decimals = max(0, -math.floor(math.log10(step)))
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    return [round(i * step, decimals) + 0.0 for i in range(first, last + 1)]


def tick_label(value: float, ticks: Sequence[float]) -> str:
    """``value`` with as many decimals as the tick step needs (0.60, 0.65; 2, 4; 1.2e+08)."""
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    decimals = -math.floor(math.log10(step) + 1e-9)
    biggest = max(abs(t) for t in ticks)
    if biggest >= 1e7:
        return f"{value:.{max(1, math.floor(math.log10(biggest)) + decimals + 1)}g}"
    return f"{value:.{max(0, decimals)}f}"


def legend_entries(
    names: Iterable[str], highlight: str | None = None
) -> list[tuple[str, str | None]]:
    """The legend's (text, series) lines: highlighted first, names shortened, ``LEGEND_CAP`` max.

    Past the cap, one last line ``+N more`` (series None) counts the series left out.
    """
    names = list(names)
    ordered = [n for n in names if n == highlight] + [n for n in names if n != highlight]
    lines: list[tuple[str, str | None]] = [
        (n if len(n) <= NAME_CHARS else n[: NAME_CHARS - 3] + "...", n)
        for n in ordered[:LEGEND_CAP]
    ]
    if len(ordered) > LEGEND_CAP:
        lines.append((f"+{len(ordered) - LEGEND_CAP} more", None))
    return lines


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled font at ``size`` px (Pillow >= 10.1 with FreeType), else its bitmap font."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one fixed-size bitmap font
        return ImageFont.load_default()


def _finite(points: Sequence[Point]) -> list[Point]:
    """Points sorted by x; a missing or non-finite y becomes None, a gap in the line."""
    return sorted(
        (float(x), float(y) if y is not None and math.isfinite(y) else None)
        for x, y in points
        if x is not None and math.isfinite(x)
    )


class _Canvas:
    """An RGB image drawn at ``_SS`` times its size; coordinates are final pixels."""

    def __init__(self, size: tuple[int, int]) -> None:
        self.image = Image.new("RGB", (size[0] * _SS, size[1] * _SS), "white")
        self.draw = ImageDraw.Draw(self.image)
        self.fonts = {k: _font(px * _SS) for k, px in (("title", 16), ("label", 13), ("tick", 12))}

    def size(self, text: str, font: str) -> tuple[float, float]:
        left, top, right, bottom = self.draw.textbbox((0, 0), text, font=self.fonts[font])
        return (right - left) / _SS, (bottom - top) / _SS

    def text(self, xy: tuple[float, float], text: str, font: str, anchor: str = "lt") -> None:
        """Text whose bounding box has its ``anchor`` (l/m/r, t/m/b) at ``xy``."""
        left, top, right, bottom = self.draw.textbbox((0, 0), text, font=self.fonts[font])
        fx, fy = "lmr".index(anchor[0]) / 2, "tmb".index(anchor[1]) / 2
        x = xy[0] * _SS - left - fx * (right - left)
        y = xy[1] * _SS - top - fy * (bottom - top)
        self.draw.text((x, y), text, fill=_INK, font=self.fonts[font])

    def vertical_text(self, xy: tuple[float, float], text: str, font: str) -> None:
        """Text read bottom to top, centred at ``xy``."""
        left, top, right, bottom = self.draw.textbbox((0, 0), text, font=self.fonts[font])
        mask = Image.new("L", (int(right - left), int(bottom - top)))
        ImageDraw.Draw(mask).text((-left, -top), text, fill=255, font=self.fonts[font])
        mask = mask.rotate(90, expand=True)
        corner = (round(xy[0] * _SS - mask.width / 2), round(xy[1] * _SS - mask.height / 2))
        self.image.paste(_INK, (*corner, corner[0] + mask.width, corner[1] + mask.height), mask)

    def line(self, points: Sequence[Pixel], colour: Rgb, width: float) -> None:
        self.draw.line(
            [(x * _SS, y * _SS) for x, y in points],
            fill=colour,
            width=max(1, round(width * _SS)),
            joint="curve",
        )

    def marker(self, x: float, y: float, shape: str, radius: float, colour: Rgb) -> None:
        x, y, r = x * _SS, y * _SS, radius * _SS
        if shape == "circle":
            self.draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
        elif shape == "square":
            self.draw.rectangle(
                (x - r * 0.85, y - r * 0.85, x + r * 0.85, y + r * 0.85), fill=colour
            )
        elif shape == "triangle":
            self.draw.polygon(
                [(x, y - r * 1.15), (x + r, y + r * 0.7), (x - r, y + r * 0.7)], fill=colour
            )
        else:
            self.draw.polygon(
                [(x, y - r * 1.2), (x + r, y), (x, y + r * 1.2), (x - r, y)], fill=colour
            )

    def save(self, path: Path) -> None:
        """Average 2 x 2 blocks down to the final size; write to a temporary name, then rename."""
        from medfed.infra.files import atomic_write

        atomic_write(path, lambda handle: self.image.reduce(_SS).save(handle, format="PNG"))


class _Style(NamedTuple):
    colour: Rgb
    marker: str
    width: float  # line width, px
    radius: float  # marker radius, px


def _styles(names: Sequence[str], highlight: str | None) -> dict[str, _Style]:
    """Each series' style: palette colours in the order given; the highlighted one black, thick."""
    styles: dict[str, _Style] = {}
    i = 0
    for name in names:
        if name == highlight:
            styles[name] = _Style(ImageColor.getrgb(HIGHLIGHT), "circle", 3.0, 4.0)
        else:
            colour = ImageColor.getrgb(PALETTE[i % len(PALETTE)])
            styles[name] = _Style(colour, MARKERS[i // len(PALETTE) % len(MARKERS)], 1.6, 3.0)
            i += 1
    return styles


def _axes(
    canvas: _Canvas,
    box: Box,
    xlim: tuple[float, float],
    xticks: list[float],
    yticks: list[float],
    xlabel: str,
    ylabel: str,
) -> Callable[[float, float], Pixel]:
    """Grid, frame, ticks and axis labels; returns the data-to-pixel mapping.

    x spans ``xlim``, y spans the first to the last of ``yticks``.
    """
    left, top, right, bottom = box
    pad = 10.0  # keeps markers on the first and last tick off the frame
    sx = (right - left - 2 * pad) / (xlim[1] - xlim[0])
    sy = (bottom - top - 2 * pad) / (yticks[-1] - yticks[0])

    def to_px(x: float, y: float) -> Pixel:
        return left + pad + (x - xlim[0]) * sx, bottom - pad - (y - yticks[0]) * sy

    for tick in xticks:
        x = to_px(tick, yticks[0])[0]
        canvas.line([(x, top), (x, bottom)], _GRID, 1)
        canvas.line([(x, bottom), (x, bottom + 5)], _FRAME, 1)
        canvas.text((x, bottom + 8), tick_label(tick, xticks), "tick", "mt")
    for tick in yticks:
        y = to_px(xlim[0], tick)[1]
        canvas.line([(left, y), (right, y)], _GRID, 1)
        canvas.line([(left - 5, y), (left, y)], _FRAME, 1)
        canvas.text((left - 8, y), tick_label(tick, yticks), "tick", "rm")
    canvas.line(
        [(left, top), (right, top), (right, bottom), (left, bottom), (left, top)], _FRAME, 1
    )
    height = canvas.image.height / _SS
    canvas.text(((left + right) / 2, height - 12), xlabel, "label", "mb")
    canvas.vertical_text((18, (top + bottom) / 2), ylabel, "label")
    return to_px


def _legend(
    canvas: _Canvas,
    corner: tuple[float, float],
    width: float,
    lines: list[tuple[str, str | None]],
    styles: dict[str, _Style],
) -> None:
    """One row per line: a short stroke with the series' marker, then its (shortened) name."""
    x0, y0 = corner
    for row, (text, name) in enumerate(lines):
        y = y0 + 14 + 20 * row
        if name is not None:
            style = styles[name]
            canvas.line([(x0 + 8, y), (x0 + 34, y)], style.colour, style.width)
            canvas.marker(x0 + 21, y, style.marker, style.radius, style.colour)
        canvas.text((x0 + 42, y), text, "tick", "lm")
    bottom = y0 + 20 * len(lines) + 8
    canvas.line(
        [(x0, y0), (x0 + width, y0), (x0 + width, bottom), (x0, bottom), (x0, y0)], _GRID, 1
    )


def _series(canvas: _Canvas, pixels: list[Pixel | None], style: _Style) -> None:
    """A polyline through the pixels, broken at each None, with a marker on every point."""
    segment: list[Pixel] = []
    for pixel in [*pixels, None]:
        if pixel is not None:
            segment.append(pixel)
            continue
        if len(segment) > 1:
            canvas.line(segment, style.colour, style.width)
        for x, y in segment:
            canvas.marker(x, y, style.marker, style.radius, style.colour)
        segment = []


def line_chart(
    series: Mapping[str, Sequence[Point]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    path: Path,
    highlight: str | None = None,
    size: tuple[int, int] = (900, 540),
) -> None:
    """Write a PNG line chart of ``series`` (name -> (x, y) points) to ``path``, atomically.

    Each series is a polyline with markers in its own colour; ``highlight`` names the series
    drawn thick, black and on top (the global model). A None or non-finite y leaves a gap. x
    spans the data (ticks are whole numbers when every x is: rounds), y the 1-2-5 ticks around
    it. The legend sits right of the axes.
    """
    data = {name: _finite(points) for name, points in series.items()}
    xs = [x for points in data.values() for x, y in points if y is not None]
    ys = [y for points in data.values() for _, y in points if y is not None]
    xticks = nice_ticks(
        min(xs, default=0.0), max(xs, default=1.0), 10, all(x.is_integer() for x in xs)
    )
    xlim = (min(xs), max(xs)) if xs and min(xs) < max(xs) else (xticks[0], xticks[-1])
    xticks = [t for t in xticks if xlim[0] <= t <= xlim[1]]
    yticks = nice_ticks(min(ys, default=0.0), max(ys, default=1.0))
    canvas = _Canvas(size)
    styles = _styles(list(data), highlight)
    lines = legend_entries(data, highlight)
    legend_w = 48 + max((canvas.size(text, "tick")[0] for text, _ in lines), default=-48)
    label_w = max(canvas.size(tick_label(t, yticks), "tick")[0] for t in yticks)
    box = (44 + label_w, 46, size[0] - legend_w - 36, size[1] - 58)
    canvas.text(((box[0] + box[2]) / 2, 14), title, "title", "mt")
    to_px = _axes(canvas, box, xlim, xticks, yticks, xlabel, ylabel)
    for name in sorted(data, key=lambda n: n == highlight):
        _series(
            canvas, [(to_px(x, y) if y is not None else None) for x, y in data[name]], styles[name]
        )
    if lines:
        _legend(canvas, (box[2] + 16, box[1]), legend_w, lines, styles)
    canvas.save(path)
