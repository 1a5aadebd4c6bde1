"""``medfed node ledger`` and ``medfed privacy plan``: numbers, exit codes, tamper reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medfed.client.commands.privacy import EXIT_OK, EXIT_TAMPERED, ledger_main, plan_main
from medfed.client.ledger import Ledger, ledger_path
from medfed.models.privacy import epsilon_from_history, noise_for_target

PLAN = [
    "--sizes",
    "120,400,900",
    "--batch-size",
    "32",
    "--local-steps",
    "10",
    "--rounds",
    "6",
    "--json",
]


def plan_json(capsys, *extra: str) -> dict:
    assert plan_main([*PLAN, *extra]) == EXIT_OK
    return json.loads(capsys.readouterr().out)


def test_plan_with_one_noise_the_smallest_site_runs_out_first(capsys):
    result = plan_json(capsys, "--noise-multiplier", "1.5", "--budget", "3.0")
    assert result["delta"] == 1e-4
    rows = result["hospitals"]
    for row, n in zip(rows, (120, 400, 900), strict=True):
        assert row["sample_rate"] == 32 / n and row["steps_per_round"] == 10
        expected = [epsilon_from_history([(1.5, 32 / n, 10 * r)], 1e-4) for r in range(1, 7)]
        assert row["epsilon_per_round"] == pytest.approx(expected, rel=1e-12)
        k = row["rounds_affordable"]
        assert epsilon_from_history([(1.5, 32 / n, 10 * k)], 1e-4) <= 3.0
        assert epsilon_from_history([(1.5, 32 / n, 10 * (k + 1))], 1e-4) > 3.0
    affordable = [row["rounds_affordable"] for row in rows]
    assert affordable == sorted(affordable) and affordable[0] < affordable[-1]


@pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")
def test_plan_with_a_target_sets_each_sites_noise_for_the_whole_study(capsys):
    result = plan_json(capsys, "--target-epsilon", "1.0", "--delta", "1e-5")
    for row in result["hospitals"]:
        rate = row["sample_rate"]
        assert row["noise_multiplier"] == noise_for_target(1.0, 1e-5, rate, 60)
        assert 0.99 <= row["epsilon_per_round"][-1] <= 1.0
        assert row["rounds_affordable"] >= 6
    noises = [row["noise_multiplier"] for row in result["hospitals"]]
    assert noises == sorted(noises, reverse=True)


def test_plan_prints_a_table_and_rejects_bad_sizes(capsys):
    assert plan_main(PLAN[:-1] + ["--noise-multiplier", "1.0", "--budget", "5"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "epsilon after each round" in out and "hospital-0 (120 rows) runs out first" in out
    assert plan_main(["--sizes", "0,10", *PLAN[2:], "--noise-multiplier", "1"]) == 1  # data
    assert "--sizes must list positive row counts" in capsys.readouterr().err


def test_ledger_report_prints_spend_and_verifies(tmp_path, capsys):
    data = tmp_path / "site.csv"
    ledger = Ledger(ledger_path(data))
    ledger.commit(ledger.reserve("study-a", "diagnosis", 1, 1.0, 0.08, 50, 1e-5, 4.8), 4.8)
    ledger.reserve("study-b", "diagnosis", 1, 2.0, 0.08, 50, 1e-5, 1.5)
    assert ledger_main(["--dataset", str(data), "--json"]) == EXIT_OK
    report = json.loads(capsys.readouterr().out)
    assert report["chain"] == "ok" and report["entries"] == 3
    assert report["total_epsilon"] == pytest.approx(
        epsilon_from_history([(1.0, 0.08, 50), (2.0, 0.08, 50)], 1e-5)
    )
    assert report["studies"]["study-b"]["rounds"] == 1 and report["open_reservations"] == 1
    assert ledger_main(["--dataset", str(ledger.path)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "study-a" in out and "total" in out and "open reservations: 1" in out


def test_ledger_report_exits_non_zero_when_tampered(tmp_path, capsys):
    ledger = Ledger(tmp_path / "site.ledger.jsonl")
    ledger.commit(ledger.reserve("s", "diagnosis", 1, 1.0, 0.08, 50, 1e-5, 4.8), 4.8)
    ledger.path.write_text(ledger.path.read_text().replace('"steps":50', '"steps":5', 1))
    assert ledger_main(["--dataset", str(ledger.path)]) == EXIT_TAMPERED
    assert "TAMPERED" in capsys.readouterr().err


def test_a_missing_ledger_is_an_error_not_zero_spent(tmp_path, capsys):
    assert ledger_main(["--dataset", str(tmp_path / "new.csv")]) == 1
    assert capsys.readouterr().err.startswith(
        f"error: no privacy ledger at {tmp_path / 'new.csv.ledger.jsonl'}"
    )


def test_plan_from_cards_reads_sizes_and_counts_what_the_ledgers_already_spent(tmp_path, capsys):
    from medfed.models.ingest.cards import card_schema, load_card, read_card_data
    from medfed.models.ingest.export import export_synthetic

    cards = [str(c) for c in export_synthetic("diagnosis", 2, tmp_path / "sites", seed=3)]
    sizes = [len(read_card_data(load_card(c), card_schema(load_card(c))).train) for c in cards]
    ledger = Ledger(ledger_path(cards[1]))
    entry = ledger.reserve("earlier-study", "diagnosis", 1, 1.5, 32 / sizes[1], 30, 1e-4, 0.0)
    ledger.commit(entry, 1.0)
    args = [
        "--cards",
        ",".join(cards),
        "--batch-size",
        "32",
        "--local-steps",
        "10",
        "--rounds",
        "6",
        "--noise-multiplier",
        "1.5",
        "--budget",
        "3.0",
        "--delta",
        "1e-4",
        "--json",
    ]
    assert plan_main(args) == EXIT_OK
    rows = json.loads(capsys.readouterr().out)["hospitals"]
    assert [row["rows"] for row in rows] == sizes
    assert [row["hospital"] for row in rows] == ["hospital-0", "hospital-1"]
    earlier = (1.5, 32 / sizes[1], 30)
    assert rows[0]["epsilon_spent"] == 0.0
    assert rows[1]["epsilon_spent"] == pytest.approx(epsilon_from_history([earlier], 1e-4))
    assert rows[1]["epsilon_per_round"][0] == pytest.approx(
        epsilon_from_history([earlier, (1.5, 32 / sizes[1], 10)], 1e-4)
    )
    fresh = plan_main(["--cards", cards[1], *args[2:]])
    assert fresh == EXIT_OK
    alone = json.loads(capsys.readouterr().out)["hospitals"][0]
    assert alone["rounds_affordable"] == rows[1]["rounds_affordable"]
    k = rows[1]["rounds_affordable"]
    fresh_k = next(
        r
        for r in range(1, 1000)
        if epsilon_from_history([(1.5, 32 / sizes[1], 10 * (r + 1))], 1e-4) > 3.0
    )
    assert 0 < k < fresh_k  # the earlier study's spend costs this hospital rounds
    assert epsilon_from_history([earlier, (1.5, 32 / sizes[1], 10 * k)], 1e-4) <= 3.0
    assert epsilon_from_history([earlier, (1.5, 32 / sizes[1], 10 * (k + 1))], 1e-4) > 3.0


def test_plan_from_a_missing_card_is_one_error_line(tmp_path, capsys):
    args = [
        "--cards",
        str(tmp_path / "nope.yaml"),
        "--batch-size",
        "32",
        "--local-steps",
        "10",
        "--rounds",
        "6",
        "--noise-multiplier",
        "1.5",
    ]
    assert plan_main(args) == 2  # a usage error
    err = capsys.readouterr().err
    assert err.startswith("medfed: error: ") and "nope.yaml" in err and err.count("\n") == 1


def test_plan_lists_evaluation_only_cards_apart_and_plans_no_noise_for_them(tmp_path, capsys):
    from medfed.models.ingest.export import export_synthetic

    cards = [str(c) for c in export_synthetic("diagnosis", 3, tmp_path / "sites", seed=3)]
    Path(cards[2]).write_text(Path(cards[2]).read_text() + "role: evaluate\n")
    common = [
        "--batch-size",
        "32",
        "--local-steps",
        "5",
        "--rounds",
        "3",
        "--noise-multiplier",
        "1",
    ]
    assert plan_main(["--cards", ",".join(cards), *common, "--json"]) == EXIT_OK
    result = json.loads(capsys.readouterr().out)
    assert [row["hospital"] for row in result["hospitals"]] == ["hospital-0", "hospital-1"]
    assert result["evaluation_only"] == ["hospital-2"]
    assert plan_main(["--cards", ",".join(cards), *common]) == EXIT_OK
    assert (
        "evaluation only (role: evaluate; no training, no privacy budget spent): hospital-2"
        in capsys.readouterr().out
    )
    assert plan_main(["--cards", cards[2], *common]) == 2
    assert capsys.readouterr().err == (
        "medfed: error: every card given is evaluation-only (role: evaluate): "
        "name at least one card that trains in --cards\n"
    )
