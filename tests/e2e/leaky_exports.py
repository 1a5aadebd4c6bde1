"""Exports whose bad cells hold a made-up patient name, and a check that it reached nothing.

For the end-to-end tests of "no cell value leaves the node" (issue 11, section 1): the simulated
federation here (``test_cells_stay_home.py``) and a loopback deployment can share them.
"""

from __future__ import annotations

import csv
from pathlib import Path

from medfed.models.ingest.export import export_synthetic

NAME = "Zebulon Quackenbush"


def poison(card: Path, failing: bool = False) -> None:
    """Type ``NAME`` into bad cells of the card's training file.

    Three rows get it in a numeric column, one in a categorical column, and every row in an
    extra free-text column (ignored by the task). With ``failing`` the card refuses invalid rows
    (``on_invalid_row: fail``), so its node cannot take part and reports why to the coordinator.
    """
    data = card.parent / f"{card.stem}-train.csv"
    with data.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle))
    header = rows[0]
    for row in (3, 7, 9):
        rows[row][header.index("cholesterol")] = NAME
    rows[11][header.index("thal")] = NAME
    rows = [[*r, "ward" if i == 0 else f"{NAME}, bed {i}"] for i, r in enumerate(rows)]
    with data.open("w", encoding="utf-8", newline="") as handle:
        csv.writer(handle, lineterminator="\n").writerows(rows)
    if failing:
        text = card.read_text(encoding="utf-8")
        card.write_text(
            text.replace("on_invalid_row: drop", "on_invalid_row: fail"), encoding="utf-8"
        )


def leaky_sites(folder: Path, hospitals: int = 3, failing: int | None = None) -> list[Path]:
    """Synthetic diagnosis cards whose training files hold ``NAME`` in bad cells (see
    :func:`poison`); site ``failing`` (if given) refuses its invalid rows."""
    cards = export_synthetic("diagnosis", hospitals, folder, seed=3)
    for index, card in enumerate(cards):
        poison(card, failing=index == failing)
    return cards


def places_holding(name: str, folders: list[Path], streams: list[str]) -> list[str]:
    """Every file under ``folders`` and every stream whose bytes contain ``name`` (any case)."""
    needle = name.lower().encode()
    found = [
        str(path)
        for folder in folders
        for path in folder.rglob("*")
        if path.is_file() and needle in path.read_bytes().lower()
    ]
    found += [f"stream {i}" for i, text in enumerate(streams) if name.casefold() in text.casefold()]
    return found
