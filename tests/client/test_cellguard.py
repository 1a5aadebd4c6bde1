"""The reply guard withholds every cell of the node's data that an exception's text quotes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from medfed.client.cellguard import (
    WITHHELD,
    _vocabulary,
    card_of,
    vocabulary,
    withhold_cells,
)
from medfed.client.guard import CellsWithheld, reply_guard
from medfed.server.simulation.engine import _use_identity

NAME = "Zebulon Quackenbush"
HEADER = "age,sex,cholesterol,thal,ward,cad"


def _hashes(*cells: str) -> np.ndarray:
    return np.sort(
        pd.util.hash_array(
            np.asarray([c.casefold() for c in cells], dtype=object), categorize=False
        )
    )


def test_a_quoted_cell_is_withheld_and_the_rest_kept() -> None:
    text = f"could not convert '{NAME}' to float in column 'cholesterol', row 4"
    clean, count = withhold_cells(text, _hashes(NAME.upper(), "Ward 7B"))
    assert (clean, count) == (
        f"could not convert '{WITHHELD}' to float in column 'cholesterol', row 4",
        1,
    )
    assert withhold_cells("row 4: ward 7b, ward 7b", _hashes("Ward 7B")) == (
        f"row 4: {WITHHELD}, {WITHHELD}",
        2,
    )


def test_only_whole_cells_at_word_boundaries_count() -> None:
    cells = _hashes("Zeb", "Quack")
    assert withhold_cells(f"patient {NAME}", cells) == (f"patient {NAME}", 0)


def _card(folder: Path, rows: list[str]) -> Path:
    (folder / "data.csv").write_text("\n".join([HEADER, *rows]) + "\n", encoding="utf-8")
    card = folder / "card.yaml"
    card.write_text("name: st-olaf\ntask: diagnosis\ntrain: data.csv\n", encoding="utf-8")
    return card


def test_the_vocabulary_holds_data_cells_not_declared_names_or_numbers(tmp_path: Path) -> None:
    card = _card(tmp_path, [f"63,male,{NAME},normal,Ward 7B,no", "54,female,233,fixed,Ward 7B,yes"])
    cells = vocabulary(str(card))
    assert withhold_cells(f"'{NAME}' in ward 7b", cells)[1] == 2
    untouched = "st-olaf: column 'cholesterol' value 233 row 2: normal, male, female, no, yes"
    assert withhold_cells(untouched, cells) == (untouched, 0)
    assert withhold_cells("fixed", cells)[1] == 1  # a code the card does not map is data
    assert withhold_cells("column 'ward'", cells)[1] == 1  # a header name might be a cell too


def _failing_app(text: str) -> ClientApp:
    app = ClientApp(mods=[reply_guard])

    @app.query("stats")
    def stats(msg: Message, context: Context) -> Message:
        raise ValueError(text)

    return app


def _query() -> Message:
    _use_identity(1, 1)
    return Message(
        RecordDict({"study": ConfigRecord({"config-json": "{}"})}),
        dst_node_id=3,
        message_type="query.stats",
        group_id="0",
    )


def test_the_guard_replaces_an_exception_that_quotes_a_cell(tmp_path: Path) -> None:
    card = _card(tmp_path, [f"63,male,{NAME},normal,Ward 7B,no"])
    context = Context(
        run_id=1, node_id=3, node_config={"dataset": str(card)}, state=RecordDict(), run_config={}
    )
    with pytest.raises(CellsWithheld) as info:
        _failing_app(f"could not convert string to float: '{NAME}'")(_query(), context)
    assert NAME not in str(info.value) and info.value.__suppress_context__
    assert str(info.value).startswith("ValueError: could not convert string to float: '<cell")
    with pytest.raises(ValueError, match="row 4 is bad"):  # nothing to withhold: unchanged
        _failing_app("row 4 is bad")(_query(), context)


def test_the_card_of_a_simulated_or_deployed_node() -> None:
    study = '{"federation": {"name": "sites", "cards": ["a.yaml", "b.yaml"]}}'
    assert card_of(study, {"partition-id": 1}) == "b.yaml"
    assert card_of(study, {"dataset": "/srv/card.yaml"}) == "/srv/card.yaml"
    assert card_of('{"federation": {"name": "synthetic"}}', {"partition-id": 0}) is None


def test_a_large_vocabulary_is_read_once_and_searched_exactly(tmp_path: Path) -> None:
    """Cost is measured by benchmarks/cellguard_cost.py (no timed tests); here: one build per
    file version, and the binary search finds exactly the cells np.isin finds."""
    rows = [f"{40 + i % 50},male,{200 + i},normal,Patient {i:05d},no" for i in range(20_000)]
    card = str(_card(tmp_path, rows))
    cells = vocabulary(card)
    assert len(cells) == 20_001  # 20,000 patients' cells and the undeclared header 'ward'
    misses = _vocabulary.cache_info().misses
    assert vocabulary(card) is cells and _vocabulary.cache_info().misses == misses
    reason = "rows of Patient 00017, patient 19999 and Patient 20000 (not a patient) in ward 3"
    out, count = withhold_cells(reason, cells)
    assert count == 3  # 'ward' is an undeclared header name: treated as data
    assert "00017" not in out and "19999" not in out and "Patient 20000" in out
    assert withhold_cells("nothing here", cells) == ("nothing here", 0)
    assert withhold_cells(reason, cells[:0]) == (reason, 0)
