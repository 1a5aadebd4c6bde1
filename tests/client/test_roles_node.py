"""The node's side of site roles and of the card keys: the round-0 role cannot carry free text,
and ``node check --verbose`` lists every ignored column."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Message, RecordDict

from medfed.client.commands.check import check_dataset
from medfed.client.guard import GuardViolation, check_reply
from medfed.models.ingest.export import export_synthetic
from medfed.server.simulation.engine import _use_identity


def _stats_exchange(role: str) -> tuple[Message, Message]:
    _use_identity(1, 1)
    request = Message(
        RecordDict({"study": ConfigRecord({"config-json": "{}"})}),
        dst_node_id=5,
        message_type="query.stats",
        group_id="0",
    )
    site = ConfigRecord({"name": "a", "statistics-json": json.dumps({"rows": 3}), "role": role})
    _use_identity(1, 5)
    return request, Message(RecordDict({"site": site}), reply_to=request)


def test_the_guard_lets_a_role_through_but_no_other_text() -> None:
    check_reply(*_stats_exchange("evaluate"))
    with pytest.raises(GuardViolation, match="the round-0 role must be train or evaluate"):
        check_reply(*_stats_exchange("63,male,asymptomatic"))


def test_node_check_verbose_lists_every_ignored_column(tmp_path: Path) -> None:
    card = export_synthetic("diagnosis", 1, tmp_path)[0]
    data = next(tmp_path.glob("*train*.csv"), None) or next(tmp_path.glob("*.csv"))
    lines = data.read_text().splitlines()
    extra = [f"x{k}" for k in range(6)]
    data.write_text(
        "\n".join([lines[0] + "," + ",".join(extra)] + [line + ",1" * 6 for line in lines[1:]])
        + "\n"
    )
    status, short = check_dataset(card)
    assert status == 0
    assert (
        "ignored 6 columns the task does not use: x0, x1, x2, x3, x4, ... (list with "
        "--verbose)" in short
    )
    assert "ignored: " not in short
    status, full = check_dataset(card, verbose=True)
    assert status == 0 and "ignored: x0, x1, x2, x3, x4, x5" in full.splitlines()
