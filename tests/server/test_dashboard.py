"""The dashboard's readers: ledgers parsed as the node does, old runs, charts, CLI errors."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from medfed.client.commands.check import node_main
from medfed.client.ledger import Ledger
from medfed.models.ingest.export import export_synthetic
from medfed.server.dashboard.node import load_node
from medfed.server.dashboard.runs import find_runs, linked_file, load_run
from medfed.server.dashboard.svg import line_chart, nice_ticks

MEDFED = Path(sys.executable).with_name("medfed")


def _ledger(folder: Path, name: str) -> Ledger:
    ledger = Ledger(folder / f"{name}.ledger.jsonl")
    for study, round_ in (("s1", 1), ("s1", 2), ("s2", 1)):
        entry = ledger.reserve(study, "diagnosis", round_, 1.1, 0.05, 40, 1e-5, 2.0)
        ledger.commit(entry, 2.0)
    ledger.release(ledger.reserve("s2", "diagnosis", 2, 1.1, 0.05, 40, 1e-5, 3.0), "refused")
    return ledger


def test_the_node_view_spends_what_the_node_ledger_spends(tmp_path):
    ledger = _ledger(tmp_path, "hospital-a")
    (tmp_path / "policy.yaml").write_text("max_epsilon_total: 10.0\nmax_epsilon_per_study: 4\n")
    node = load_node(tmp_path)
    spend = ledger.spent()
    [shown] = node["ledgers"]
    assert shown["problem"] == "" and shown["count"] == 8
    assert shown["total"] == pytest.approx(spend.total, rel=1e-12)
    assert {s: v["epsilon"] for s, v in shown["studies"].items()} == pytest.approx(spend.studies)
    assert {s: v["rounds"] for s, v in shown["studies"].items()} == {"s1": 2, "s2": 1}
    assert shown["remaining"] == pytest.approx(10.0 - spend.total)
    assert shown["entries"][0]["status"] == "released"  # newest first


def test_a_ledger_with_a_removed_line_is_shown_broken(tmp_path):
    _ledger(tmp_path, "hospital-a")
    path = tmp_path / "hospital-a.ledger.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:2] + lines[3:]))
    [shown] = load_node(tmp_path)["ledgers"]
    assert shown["problem"] == ("line 3 is out of sequence: entries were removed or reordered")


def test_node_check_leaves_its_summary_for_the_node_view(tmp_path, capsys):
    [card, *_] = export_synthetic("diagnosis", 1, tmp_path)
    assert node_main(["check", "--dataset", str(card)]) == 0
    printed = capsys.readouterr().out
    saved = json.loads(Path(f"{card}.check.json").read_text())
    assert saved["exit_status"] == 0 and saved["report"] == printed.rstrip("\n")
    assert saved["result"] == "result: usable"
    [check] = load_node(tmp_path)["checks"]
    assert check["report"] == saved["report"]


@pytest.fixture(scope="module")
def finished_run(small_study, tmp_path_factory) -> Path:
    from medfed.server.simulation.run import run_simulated_study

    out = tmp_path_factory.mktemp("runs") / "dp-study"
    run_simulated_study(small_study("rounds=3", "privacy=dpsgd", f"output_dir={out}"))
    return out


def test_a_run_without_status_json_reads_the_same_from_its_final_files(finished_run, tmp_path):
    old = tmp_path / "old-run"
    shutil.copytree(finished_run, old)
    (old / "status.json").unlink()
    live, legacy = load_run(finished_run), load_run(old)
    assert legacy["status"] == live["status"] == "finished"
    assert [legacy[k] for k in ("sites", "task", "rounds")] == [
        live[k] for k in ("sites", "task", "rounds")
    ]
    assert legacy["headline"] == pytest.approx(live["headline"])
    assert legacy["epsilon"] == pytest.approx(live["epsilon"]) and live["epsilon"] > 0
    for a, b in zip(live["history"], legacy["history"], strict=True):
        assert a["participation"] == b["participation"]
        assert a["epsilon"] == pytest.approx(b["epsilon"])
        assert a["global"] == pytest.approx(b["global"])
        assert a["hospitals"].keys() == b["hospitals"].keys()
        for site, values in a["hospitals"].items():
            assert values == pytest.approx(b["hospitals"][site])


def test_only_linked_files_are_served(finished_run):
    assert set(find_runs([finished_run.parent]).values()) == {finished_run}
    assert linked_file(finished_run, "report.md") == finished_run / "report.md"
    for name in ("checkpoint.pt", "model.pt", "ledgers/hospital-0.ledger.jsonl", "../x"):
        assert linked_file(finished_run, name) is None


def test_ticks_and_a_chart_by_hand():
    assert nice_ticks(0.0, 1.0) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(0.62, 0.78) == [0.65, 0.7, 0.75]
    svg = line_chart(
        [("a<b", [(1, 0.0), (3, 1.0)])], rounds=3, y_label="m", limits=[("budget", 0.5)]
    )
    assert 'data-series="a&lt;b"' in svg and "<title>budget: 0.5</title>" in svg
    assert line_chart([], rounds=3, y_label="m") == '<p class="empty">no values yet</p>'


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(MEDFED), "dashboard", *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.slow
def test_dashboard_option_errors_are_one_line_and_exit_2(tmp_path):
    missing = _cli("--runs", str(tmp_path / "nope"))
    assert missing.returncode == 2
    assert missing.stderr == (
        f"medfed: error: --runs {tmp_path / 'nope'}: no such folder; give an existing directory\n"
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = _cli("--runs", str(tmp_path), "--port", str(port))
    assert busy.returncode == 2 and busy.stderr.startswith(
        f"medfed: error: --host 127.0.0.1 --port {port}: cannot listen there"
    )
    assert len(busy.stderr.splitlines()) == 1


def test_a_running_study_that_stopped_writing_is_flagged(finished_run, tmp_path):
    import os

    run = tmp_path / "killed"
    shutil.copytree(finished_run, run)
    status = json.loads((run / "status.json").read_text())
    (run / "status.json").write_text(json.dumps({**status, "status": "running", "timeout": 5}))
    assert load_run(run)["silent"] == ""
    old = (run / "status.json").stat().st_mtime - 600
    os.utime(run / "status.json", (old, old))
    assert load_run(run)["silent"] == (
        "no update for 10 min although a round may take at most "
        "5 s: the study's process may have ended"
    )


def test_audit_log_and_approvals_are_shown_when_the_folder_holds_them(tmp_path):
    rows = [
        {"seq": 0, "event": "approval", "manifest": "ab12cd34"},
        {"seq": 1, "event": "round", "study": "s1", "round": 1},
    ]
    (tmp_path / "hospital-a.audit.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "approvals").mkdir()
    (tmp_path / "approvals" / "ab12cd34.json").write_text(json.dumps({"manifest": "ab12cd34"}))
    node = load_node(tmp_path)
    assert [row["seq"] for row in node["audit"]] == [1, 0]  # newest first
    assert node["audit_columns"] == ["seq", "event", "study", "round", "manifest"]
    assert node["approvals"] == [{"file": "ab12cd34.json", "manifest": "ab12cd34"}]
    assert node["ledgers"] == [] and node["checks"] == []
