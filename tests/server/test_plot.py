"""The Pillow line chart behind convergence.png and epsilon.png: ticks, legend, pixels."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from PIL import Image, ImageColor

from medfed.server.outputs.plot import (
    LEGEND_CAP,
    PALETTE,
    legend_entries,
    line_chart,
    nice_ticks,
    tick_label,
)
from medfed.server.outputs.report import plot_convergence, plot_epsilon
from medfed.server.study.loop import GLOBAL

BLACK = (0, 0, 0)


def _chart(tmp_path: Path, series, highlight: str | None = None) -> Image.Image:
    path = tmp_path / "chart.png"
    line_chart(series, title="t", xlabel="round", ylabel="y", path=path, highlight=highlight)
    return Image.open(path)


def _count(image: Image.Image, colour: tuple[int, int, int], right: int = 540) -> int:
    """Pixels of exactly ``colour`` in the left part of the image (the axes, not the legend)."""
    plot = image.convert("RGB").crop((0, 0, right, image.height))
    return sum(n for n, c in plot.getcolors(plot.width * plot.height) if c == colour)


@pytest.mark.parametrize(
    ("lo", "hi", "kwargs", "expected"),
    [
        (0.62, 0.81, {}, [0.60, 0.65, 0.70, 0.75, 0.80, 0.85]),
        (0.0, 1.0, {}, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]),
        (-3.2, -0.4, {}, [-3.5, -3.0, -2.5, -2.0, -1.5, -1.0, -0.5, 0.0]),
        (1, 15, {"target": 10, "integer": True}, [0, 2, 4, 6, 8, 10, 12, 14, 16]),
        (1, 3, {"target": 10, "integer": True}, [1, 2, 3]),
        (0.7, 0.7, {}, [0.66, 0.68, 0.70, 0.72, 0.74]),  # constant: widened by 5 %
        (0.0, 0.0, {}, [-0.6, -0.4, -0.2, 0.0, 0.2, 0.4, 0.6]),
        (4, 4, {"integer": True}, [3, 4, 5]),
        (120.0, 30.0, {}, [20.0, 40.0, 60.0, 80.0, 100.0, 120.0]),  # reversed bounds
    ],
)
def test_nice_ticks_by_hand(lo, hi, kwargs, expected):
    assert nice_ticks(lo, hi, **kwargs) == pytest.approx(expected)


@given(st.floats(-1e6, 1e6), st.floats(0, 1e6), st.integers(2, 12))
@example(524288.0, 0.001, 11)  # a tiny span far from zero: float spacing shows in the gaps
def test_nice_ticks_cover_the_range_in_1_2_5_steps(lo, span, target):
    hi = lo + span
    ticks = nice_ticks(lo, hi, target)
    step = ticks[1] - ticks[0]
    # Each tick is the nearest float to i * step: a gap may be off by an ulp of the ticks'
    # magnitude (0.001 apart at 524288, the ulp is 1e-6 of the step).
    ulp = math.ulp(max(abs(ticks[0]), abs(ticks[-1])))
    assert ticks[0] <= lo + step * 1e-6 + ulp and ticks[-1] >= hi - step * 1e-6 - ulp
    assert 2 <= len(ticks) <= target + 2
    assert all(
        b - a == pytest.approx(step, rel=1e-6, abs=4 * ulp) for a, b in itertools.pairwise(ticks)
    )
    mantissa = step / 10 ** math.floor(math.log10(step))
    assert min(abs(mantissa - m) for m in (1, 2, 5, 10)) < 1e-6 + 40 * ulp / step


def test_tick_labels_use_the_step_s_decimals_and_never_minus_zero():
    assert [tick_label(t, [0.6, 0.65]) for t in (0.6, 0.65)] == ["0.60", "0.65"]
    assert tick_label(4.0, [0.0, 2.0, 4.0]) == "4"
    assert tick_label(nice_ticks(-0.5, 0.5)[3], nice_ticks(-0.5, 0.5)) == "0.0"
    assert tick_label(2e8, [0.0, 1e8, 2e8]) == "2e+08"


def test_legend_puts_the_highlight_first_shortens_names_and_caps_at_twelve():
    names = [f"hospital-{i}" for i in range(19)] + ["all hospitals", "x" * 40]
    lines = legend_entries(names, highlight="all hospitals")
    assert len(lines) == LEGEND_CAP + 1
    assert lines[0] == ("all hospitals", "all hospitals")
    assert lines[-1] == ("+9 more", None)
    assert legend_entries(["x" * 40]) == [("x" * 19 + "...", "x" * 40)]
    assert legend_entries(["a", "b"]) == [("a", "a"), ("b", "b")]


def test_chart_is_a_900_by_540_png_with_every_series_colour(tmp_path):
    series = {f"h{i}": [(r, 0.5 + 0.01 * i * r) for r in range(1, 16)] for i in range(4)}
    series["all"] = [(r, 0.55 + 0.01 * r) for r in range(1, 16)]
    image = _chart(tmp_path, series, highlight="all")
    assert image.format == "PNG" and image.size == (900, 540)
    assert image.convert("RGB").getpixel((0, 0)) == (255, 255, 255)
    for colour in PALETTE[:4]:
        assert _count(image, ImageColor.getrgb(colour)) > 50, colour
    assert _count(image, ImageColor.getrgb(PALETTE[4])) == 0  # only four hospitals
    assert _count(image, BLACK) > 100
    assert not list(tmp_path.glob(".*")), "the temporary file is left behind"


def test_only_the_highlighted_series_is_pure_black(tmp_path):
    series = {"a": [(1, 1.0), (2, 2.0)], "b": [(1, 2.0), (2, 1.0)]}
    assert _count(_chart(tmp_path, series), BLACK, 900) == 0
    assert _count(_chart(tmp_path, series, highlight="b"), BLACK) > 50


@pytest.mark.parametrize("missing", [None, math.nan, math.inf])
def test_a_missing_value_breaks_the_line(tmp_path, missing):
    orange = ImageColor.getrgb(PALETTE[0])
    through = _count(_chart(tmp_path, {"a": [(1, 0.0), (3, 1.0)], "b": [(1, 1.0)]}), orange)
    gap = _count(
        _chart(tmp_path, {"a": [(1, 0.0), (2, missing), (3, 1.0)], "b": [(1, 1.0)]}), orange
    )
    assert 0 < gap < through / 3  # markers only, no line


def test_single_points_constant_and_empty_series_draw(tmp_path):
    blue = ImageColor.getrgb(PALETTE[1])
    assert _count(_chart(tmp_path, {"one": [(1, 0.5)], "flat": [(1, 2.0), (2, 2.0)]}), blue) > 50
    assert (
        _count(
            _chart(tmp_path, {"flat": [(r, 0.0) for r in range(5)]}), ImageColor.getrgb(PALETTE[0])
        )
        > 50
    )
    assert _chart(tmp_path, {}).size == (900, 540)
    assert _chart(tmp_path, {"gone": [(1, None), (2, math.nan)]}).size == (900, 540)


def test_many_series_reuse_the_palette(tmp_path):
    series = {
        f"a-very-long-hospital-name-{i}": [(r, math.sin(r + i)) for r in range(1, 6)]
        for i in range(20)
    }
    image = _chart(tmp_path, series)
    for colour in PALETTE:
        assert _count(image, ImageColor.getrgb(colour)) > 20, colour


def test_report_plots_draw_the_global_model_black_and_skip_no_epsilon(tmp_path):
    rows = [
        {"round": r, "hospital": name, "accuracy": acc, "epsilon": None}
        for r in (1, 2, 3)
        for name, acc in (("h0", 0.6 + r / 20), (GLOBAL, 0.7 + r / 50))
    ]
    rows.append({"round": 1, "hospital": "h1", "accuracy": math.nan, "epsilon": None})
    plot_convergence(rows, "accuracy", tmp_path / "convergence.png")
    image = Image.open(tmp_path / "convergence.png")
    assert _count(image, BLACK) > 50 and _count(image, ImageColor.getrgb(PALETTE[0])) > 50
    assert _count(image, ImageColor.getrgb(PALETTE[1]), 900) == 0  # h1 has no finite value
    assert plot_epsilon(rows, tmp_path / "epsilon.png") is False
    assert not (tmp_path / "epsilon.png").exists()
    for row in rows:
        row["epsilon"] = row["round"] * 0.5
    assert plot_epsilon(rows, tmp_path / "epsilon.png") is True
    assert _count(Image.open(tmp_path / "epsilon.png"), BLACK, 900) == 0  # no global series
