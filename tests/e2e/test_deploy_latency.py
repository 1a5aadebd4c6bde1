"""The fast deployment setup end to end: a SuperLink, 3 SuperNodes with short polls and one
long-lived ClientApp worker each, on loopback, running a study submitted with ``flwr run``.

Not timed (the benchmark ``benchmarks/deploy_latency.py`` measures latency): this checks that the
fast setup runs the study to the same result as the in-process engine, and that every message
was handled by the workers.
"""

from __future__ import annotations

import csv
import json

import pytest

from medfed.server.runtime import LoopbackFederation

pytestmark = pytest.mark.slow

OVERRIDES = ["federation.hospitals=3", "federation.min_size=60", "federation.max_size=120",
             "rounds=2", "privacy=none"]
MESSAGES_PER_NODE = 2 + 2 + 1  # query.stats, query.prepare, 2 train rounds, final evaluate


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    work = tmp_path_factory.mktemp("fast-deploy")
    with LoopbackFederation(work, hospitals=3, fast=True) as federation:
        federation.run(" ".join(OVERRIDES), work / "out", timeout=240)
        processes = [p.args for p in federation.processes]
    yield work, processes


def test_fast_setup_runs_the_study_to_the_end(deployed):
    work, _ = deployed
    summary = json.loads((work / "out" / "summary.json").read_text())
    assert (summary["engine"], summary["rounds"], summary["stopped"]) == ("flwr-run", 2, None)
    assert not summary["failures"]
    assert [h["name"] for h in summary["hospitals"]] == ["hospital-0", "hospital-1",
                                                         "hospital-2"]
    with (work / "out" / "metrics.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {(row["round"], row["hospital"]) for row in rows} == {
        (str(r), h) for r in range(3)
        for h in ("hospital-0", "hospital-1", "hospital-2", "all hospitals")}
    assert all(float(row["seconds"]) > 0 for row in rows if row["round"] != "0")


def test_every_message_ran_in_the_long_lived_workers(deployed):
    work, processes = deployed
    assert sum("medfed.client.worker" in args for args in processes) == 3
    assert sum("--isolation" in args and "process" in args for args in processes) == 3
    for index in range(3):
        log = (work / f"worker-{index}.log").read_text()
        assert log.count(" done in ") == MESSAGES_PER_NODE, log[-2000:]
        assert "Traceback" not in log


def test_fast_setup_reaches_the_in_process_weights(deployed, run_inprocess, load_model):
    import torch

    from medfed.server.config import compose_study

    work, _ = deployed
    expected = run_inprocess(compose_study(OVERRIDES)).final_state
    got = load_model(work / "out")
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.allclose(got[key], value, atol=1e-5), key
