"""status.json, the alerts and the Prometheus exporter: hand-computed histories, a real study."""

from __future__ import annotations

import json
import socket
import urllib.request

import pytest

from medfed.server.monitor.alerts import DEFAULTS, compute_alerts, config_error
from medfed.server.monitor.metrics import StudyMetrics
from medfed.server.monitor.status import budgets, round_entry
from medfed.server.simulation.engine import FIRST_NODE_ID
from medfed.server.study.loop import RoundRecord


def _entry(
    round_: int,
    states: dict[str, str],
    accuracy: float | None = None,
    epsilon: dict[str, float] | None = None,
) -> dict:
    return {
        "round": round_,
        "seconds": 0.5,
        "participation": {
            site: [state, "" if state == "trained" else "why"] for site, state in states.items()
        },
        "epsilon": epsilon or {},
        "global": {} if accuracy is None else {"accuracy": accuracy},
        "hospitals": {},
    }


def _status(history: list[dict], status: str = "running", **extra) -> dict:
    return {
        "status": status,
        "round": history[-1]["round"] if history else 0,
        "rounds": 10,
        "primary_metric": "accuracy",
        "higher_is_better": True,
        "history": history,
        "budget": {},
        **extra,
    }


def test_a_hospital_that_missed_three_rounds_in_a_row_raises_one_alert():
    history = [
        _entry(1, {"a": "trained", "b": "missed"}),
        _entry(2, {"a": "missed", "b": "trained"}),
        _entry(3, {"a": "refused", "b": "missed"}),
        _entry(4, {"a": "rejected", "b": "missed"}),
    ]
    alerts = compute_alerts(_status(history), DEFAULTS)
    assert [(a["kind"], a["site"], a["round"]) for a in alerts] == [("missed", "a", 4)]
    assert "rounds 2-4" in alerts[0]["message"]


def test_rounds_a_hospital_was_not_asked_to_join_do_not_count_as_missed():
    history = [_entry(1, {"a": "missed"}), _entry(2, {}), _entry(3, {"a": "missed"})]
    assert compute_alerts(_status(history), DEFAULTS) == []
    history.append(_entry(4, {"a": "missed"}))
    assert [a["site"] for a in compute_alerts(_status(history), DEFAULTS)] == ["a"]


@pytest.mark.parametrize(
    ("values", "higher", "alert"),
    [
        ([0.70, 0.68, 0.66, 0.65], True, True),  # three drops in a row
        ([0.70, 0.68, 0.69, 0.65], True, False),  # one recovery breaks the streak
        ([0.70, 0.68, 0.66], True, False),  # only two steps so far
        ([1.0, 1.2, 1.3, 1.4], False, True),  # an error metric (mae) that rises
        ([1.4, 1.3, 1.2, 1.0], False, False),
    ],
)
def test_a_metric_worse_three_rounds_in_a_row(values, higher, alert):
    history = [_entry(r + 1, {}, accuracy=v) for r, v in enumerate(values)]
    status = {**_status(history), "higher_is_better": higher}
    assert [a["kind"] for a in compute_alerts(status, DEFAULTS)] == (["worse"] if alert else [])


def test_a_site_at_80_percent_of_its_budget():
    history = [_entry(1, {"a": "trained", "b": "trained"}, epsilon={"a": 8.0, "b": 7.99})]
    alerts = compute_alerts(_status(history, budget={"a": 10.0, "b": 10.0}), DEFAULTS)
    assert [(a["kind"], a["site"]) for a in alerts] == [("budget", "a")]
    assert alerts[0]["message"] == "a has spent epsilon 8 of its budget 10 (80%)"


def test_a_stopped_study_is_an_alert_with_its_reason():
    history = [_entry(1, {"a": "refused"})]
    alerts = compute_alerts(
        _status(history, "stopped", reason="round 1: no hospital trained"),
        {**DEFAULTS, "missed_rounds": 5},
    )
    assert [a["kind"] for a in alerts] == ["stopped"]
    assert alerts[0]["message"].endswith("round 1: no hospital trained")


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"alerts": {"missed_rounds": 0}}, "alerts.missed_rounds must be a whole number"),
        ({"alerts": {"worse_rounds": 2.5}}, "alerts.worse_rounds must be a whole number"),
        ({"alerts": {"budget_fraction": 1.5}}, "alerts.budget_fraction must be a number in (0, 1]"),
        ({"alerts": {"missed": 3}}, "alerts.missed is not a setting"),
        ({"metrics_port": 70000}, "metrics_port must be a TCP port"),
    ],
)
def test_bad_alert_settings_are_named(setting, message):
    assert config_error(setting).startswith(message)
    assert config_error({"alerts": dict(DEFAULTS), "metrics_port": None}) is None


def test_a_metrics_port_in_use_is_a_configuration_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert config_error({"metrics_port": port}) == (
            f"metrics_port={port}: 127.0.0.1:{port} is already in use; choose a free port"
        )


def test_round_entry_states_and_budgets_from_the_policy():
    record = RoundRecord(
        3,
        train={"a": {"loss": 0.1, "steps": 4.0, "epsilon": 1.5}},
        failures={"b": "timed out"},
        refusals={"c": "refused by the policy"},
        rejected={"d": "norm 50 > 10 x median"},
        seconds=1.23456,
    )
    entry = round_entry(record)
    assert entry["participation"] == {
        "a": ["trained", ""],
        "b": ["missed", "timed out"],
        "c": ["refused", "refused by the policy"],
        "d": ["rejected", "norm 50 > 10 x median"],
    }
    assert entry["epsilon"] == {"a": 1.5} and entry["seconds"] == 1.2346
    study = {
        "privacy": {"name": "dpsgd"},
        "policy": {
            "max_epsilon_per_study": 10.0,
            "max_epsilon_total": None,
            "hospitals": {"b": {"max_epsilon_total": 2.0}},
        },
    }
    assert budgets(study, ["a", "b"]) == {"a": 10.0, "b": 2.0}
    assert budgets({**study, "privacy": {"name": "none"}}, ["a"]) == {}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_exporter_counts_each_round_once_and_frees_its_port():
    port = _free_port()
    metrics = StudyMetrics(port)
    entry = _entry(1, {"a": "trained", "b": "refused"}, epsilon={"a": 0.75})
    metrics.observe(entry, nodes=2)
    metrics.observe(entry, nodes=2)  # the history is replayed every round: counted once
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    metrics.close()
    assert "medfed_rounds_completed 1.0" in text and "medfed_nodes_connected 2.0" in text
    assert 'medfed_updates_total{outcome="accepted",site="a"} 1.0' in text
    assert 'medfed_updates_total{outcome="refused",site="b"} 1.0' in text
    assert 'medfed_epsilon{site="a"} 0.75' in text
    assert "medfed_round_duration_seconds_count 1.0" in text
    assert config_error({"metrics_port": port}) is None


def test_a_study_writes_status_json_every_round_and_finished_last(
    small_study, tmp_path, monkeypatch
):
    from medfed.server.monitor import status
    from medfed.server.simulation.run import run_simulated_study

    seen: list[dict] = []
    write = status._write

    def spy(path, document):  # every status.json written, as it reached the disk
        write(path, document)
        seen.append(json.loads(path.read_text()))
        assert not (out / "summary.json").exists() or document["status"] != "running"

    monkeypatch.setattr(status, "_write", spy)
    out = tmp_path / "run"
    run_simulated_study(small_study("rounds=3", f"output_dir={out}"))
    assert [(d["status"], d["round"]) for d in seen] == [
        ("running", 0),
        ("running", 1),
        ("running", 2),
        ("running", 3),
        ("finished", 3),
    ]
    final = json.loads((out / "status.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert final == seen[-1] and final["study_id"] == summary["study_id"]
    assert final["history"][-1]["global"]["accuracy"] == pytest.approx(
        summary["global"]["accuracy"]
    )
    assert not list(out.glob(".*.tmp"))


def test_a_study_that_fails_before_round_1_is_failed_in_status_json(
    small_study, tmp_path, run_inprocess
):
    from medfed.server.study.loop import StudyError

    out = tmp_path / "run"
    study = small_study("rounds=2", f"output_dir={out}", "strategy.min_nodes=3", "timeout=1")
    with pytest.raises(StudyError):
        run_inprocess(study, offline=(FIRST_NODE_ID,))  # only two of the three ever connect
    status = json.loads((out / "status.json").read_text())
    assert (status["status"], status["round"]) == ("failed", 0)
    assert status["reason"].startswith("StudyError: only 2 of the 3 hospitals needed")
    assert [a["kind"] for a in status["alerts"]] == ["stopped"]


def test_an_infinite_epsilon_is_written_as_null_not_a_crash(tmp_path):
    """DP-SGD with almost no noise spends an infinite epsilon; status.json (strict JSON) says
    null for it, as every run file does, instead of stopping the study."""
    from medfed.server.monitor.status import _write

    path = tmp_path / "status.json"
    _write(path, {"budgets": {"hospital-0": {"epsilon": float("inf")}}, "loss": float("nan")})
    assert json.loads(path.read_text()) == {
        "budgets": {"hospital-0": {"epsilon": None}},
        "loss": None,
    }
