"""A labelled heatmap PNG (Pillow only, like :mod:`medfed.server.outputs.plot`).

Written here because no plotting library is a dependency (matplotlib would be one only for this);
each cell shows its value, coloured from red (worst) to green (best) over the whole table.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from medfed.server.outputs.plot import _font

_CELL_W, _CELL_H, _PAD = 96, 28, 8


def _colour(value: float, lo: float, hi: float, higher_is_better: bool) -> tuple[int, int, int]:
    if not math.isfinite(value):
        return (220, 220, 220)
    t = 0.5 if hi <= lo else (value - lo) / (hi - lo)
    t = t if higher_is_better else 1.0 - t
    return (int(230 - 120 * t), int(120 + 110 * t), 120)  # red (worst) to green (best)


def _label(value: float) -> str:
    if not math.isfinite(value):
        return "n/a"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3f}"


def heatmap(
    rows: Mapping[str, Mapping[str, float]],
    columns: Sequence[str],
    *,
    title: str,
    higher_is_better: bool,
    path: Path,
) -> None:
    """Draw ``rows[model][column]`` as a table of coloured cells; written atomically to ``path``."""
    font, bold = _font(12), _font(14)
    label_w = max([len(name) for name in rows] + [5]) * 7 + 2 * _PAD
    width = label_w + _CELL_W * len(columns) + _PAD
    height = 2 * _CELL_H + _CELL_H * len(rows) + _PAD
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((_PAD, _PAD // 2), title, fill="black", font=bold)
    values = [v for row in rows.values() for v in row.values() if math.isfinite(v)]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    for j, column in enumerate(columns):
        draw.text((label_w + j * _CELL_W + 4, _CELL_H + 6), column, fill="black", font=font)
    for i, (name, row) in enumerate(rows.items()):
        top = 2 * _CELL_H + i * _CELL_H
        draw.text((_PAD, top + 7), name, fill="black", font=font)
        for j, column in enumerate(columns):
            value = row.get(column, math.nan)
            box = (label_w + j * _CELL_W, top, label_w + (j + 1) * _CELL_W - 2, top + _CELL_H - 2)
            draw.rectangle(box, fill=_colour(value, lo, hi, higher_is_better))
            draw.text((box[0] + 6, top + 7), _label(value), fill="black", font=font)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    tmp = path.with_suffix(".png.partial")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, path)
