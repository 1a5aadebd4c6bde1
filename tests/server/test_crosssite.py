"""The coordinator's side of cross-site evaluation without a federation: whom it asks for
weights, where it sends them and why every other pair is blank; the CSV's note column."""

from __future__ import annotations

import csv
import io
import math

from medfed.server.outputs.benefit import cross_site_markdown
from medfed.server.outputs.cross_site import cross_site_csv
from medfed.server.study.crosssite import plan


def _hospitals(*switches: tuple[str, bool, bool, str]) -> dict[int, dict]:
    return {
        10 + i: {"name": name, "share_local": share, "evaluate_others": score, "role": role}
        for i, (name, share, score, role) in enumerate(switches)
    }


def test_weights_are_asked_only_where_another_hospital_may_score_them():
    hospitals = _hospitals(
        ("a", True, False, "train"),  # shares, does not score
        ("b", True, False, "train"),
        ("c", False, True, "train"),  # scores, does not share
        ("e", False, True, "evaluate"),  # evaluation-only: scores, has no model of its own
    )
    ask, targets, blank = plan(hospitals, {10, 11, 12, 13})
    assert ask == [10, 11]
    assert targets == {10: [12, 13], 11: [12, 13]}
    assert blank == {
        "a": {"b": "b does not score other hospitals' models (policy)"},
        "b": {"a": "a does not score other hospitals' models (policy)"},
        "c": {name: "c does not share its local-only model (policy)" for name in ("a", "b", "e")},
    }


def test_everything_follows_site_names_not_node_ids():
    """Deployed node ids are random: asking, sending and the blank reasons go in site-name
    order, so the coordinator's log and report read the same on every run."""
    hospitals = {
        99: {"name": "a", "share_local": True, "evaluate_others": True, "role": "train"},
        5: {"name": "b", "share_local": True, "evaluate_others": True, "role": "train"},
        42: {"name": "c", "share_local": False, "evaluate_others": False, "role": "train"},
    }
    ask, targets, blank = plan(hospitals, {5, 42, 99})
    assert ask == [99, 5]  # a, b
    assert targets == {99: [5], 5: [99]}
    assert list(blank) == ["a", "b", "c"] and list(blank["c"]) == ["a", "b"]


def test_nobody_scores_so_no_weights_travel():
    hospitals = _hospitals(("a", True, False, "train"), ("b", True, False, "train"))
    ask, targets, blank = plan(hospitals, {10, 11})
    assert ask == [] and targets == {}
    assert set(blank) == {"a", "b"}


def test_an_offline_hospital_is_not_asked_and_its_pairs_say_so():
    hospitals = _hospitals(("a", True, True, "train"), ("b", True, True, "train"))
    ask, targets, blank = plan(hospitals, {10})
    assert ask == [] and targets == {}
    assert blank == {"a": {"b": "b was not connected"}, "b": {"a": "b was not connected"}}


def test_the_csv_has_a_note_column_only_when_cells_are_blank_by_policy():
    table = {
        "columns": ["a", "b"],
        "rows": {"global": {"a": 0.7, "b": 0.8}, "local a": {"a": 0.75, "b": math.nan}},
    }
    plain = list(csv.reader(io.StringIO(cross_site_csv(table).decode())))
    assert plain == [["model", "a", "b"], ["global", "0.7", "0.8"], ["local a", "0.75", ""]]
    table["notes"] = {"global": "", "local a": "b: b does not score other hospitals' models"}
    noted = list(csv.DictReader(io.StringIO(cross_site_csv(table).decode())))
    assert noted[1] == {
        "model": "local a",
        "a": "0.75",
        "b": "",
        "note": "b: b does not score other hospitals' models",
    }


def test_the_report_says_what_was_scored_and_why_the_rest_is_blank():
    assert cross_site_markdown({"rows": {}, "columns": []}) == ""  # a simulation: the CSV says all
    table = {
        "scores": {"a": {"b": 0.8}, "b": {"a": 0.7}},
        "blank": {"a": {"c": "..."}, "b": {"c": "..."}, "c": {"a": "...", "b": "..."}},
        "notes": {
            "global": "",
            "local a": "c: c does not score other hospitals' models (policy)",
            "local b": "",
            "local c": "a, b: c does not share its local-only model (policy)",
            "personalised a": "stays at its hospital",
        },
    }
    lines = cross_site_markdown(table).splitlines()
    assert "- scored: a on b; b on a" in lines
    assert "- a's model not scored on c: c does not score other hospitals' models (policy)" in lines
    assert "- c's model not scored on a, b: c does not share its local-only model (policy)" in lines
    assert not any(line.startswith("- b's") or "stays" in line for line in lines)
