"""Governance rehearsed in simulation with the real CLI and the in-process engine.

Each test proves one thing the deployment test does not: round 0 waits for a late approval; a
revocation stops a node at the next round; a site with 3 positive test cases discloses no exact
count (and without the control it would).
"""

from __future__ import annotations

import csv
import json
import subprocess
import time
from pathlib import Path

import pytest

from medfed.client.approval import approve
from medfed.client.audit import AuditLog
from medfed.models.manifest import build_manifest, manifest_hash

pytestmark = pytest.mark.slow

MEDFED = str(Path(__import__("sys").executable).with_name("medfed"))


def medfed(cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MEDFED, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def cards(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("gov-sim")
    assert (
        medfed(
            work, "synth", "export", "--task", "diagnosis", "--hospitals", "3", "cards"
        ).returncode
        == 0
    )
    return work


def sites(work: Path) -> str:
    return (
        "federation.cards=["
        + ",".join(str(work / "cards" / f"hospital-{i}.yaml") for i in range(3))
        + "]"
    )


def test_round0_waits_for_a_late_approval(cards, tmp_path):
    common = ["federation=sites", sites(cards), "rounds=1", "quiet=true"]
    assert medfed(tmp_path, "study", "manifest", *common, "--out", "m.yaml").returncode == 0
    for i in (0, 1):
        done = medfed(
            tmp_path,
            "node",
            "approve",
            "m.yaml",
            "--dataset",
            str(cards / "cards" / f"hospital-{i}.yaml"),
            "--approvals-dir",
            "appr",
            "--yes",
        )
        assert done.returncode == 0, done.stderr
    run = subprocess.Popen(
        [
            MEDFED,
            "simulate",
            *common,
            "policy.require_approval=true",
            f"policy.approvals_dir={tmp_path / 'appr'}",
            "governance.approval_timeout=120",
            f"output_dir={tmp_path / 'run'}",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    log = tmp_path / "run" / "audit" / "coordinator.audit.jsonl"
    deadline = time.monotonic() + 120
    while b'"approvals"' not in (log.read_bytes() if log.exists() else b""):
        assert time.monotonic() < deadline and run.poll() is None, run.stdout.read()
        time.sleep(0.2)
    late = medfed(
        tmp_path,
        "node",
        "approve",
        "m.yaml",
        "--dataset",
        str(cards / "cards" / "hospital-2.yaml"),
        "--approvals-dir",
        "appr",
        "--yes",
    )
    assert late.returncode == 0, late.stderr
    assert run.wait(timeout=240) == 0, run.stdout.read()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["governance"]["approved_by"] == ["hospital-0", "hospital-1", "hospital-2"]
    audit = medfed(tmp_path, "coordinator", "audit", str(log))
    assert audit.returncode == 0
    assert "approved by nodes 1001, 1002; waiting for 1003" in audit.stdout
    assert "approved by nodes 1001, 1002, 1003; waiting for (none)" in audit.stdout


class RevokeAfter:
    """An observer that revokes hospital-0's approval once round ``n`` is recorded."""

    def __init__(self, log: AuditLog, digest: str, n: int) -> None:
        self.log, self.digest, self.n = log, digest, n

    def on_start(self, study, hospitals) -> None:
        pass

    def on_round(self, server_round, record) -> None:
        if server_round == self.n:
            self.log.record("revoke", site="hospital-0", manifest=self.digest)


def test_a_revoked_approval_stops_the_node_at_the_next_round(small_study, tmp_path):
    from medfed.client.app import app
    from medfed.server.simulation.engine import InProcessGrid
    from medfed.server.study.loop import run_study

    study = small_study(
        "rounds=4",
        "policy.require_approval=true",
        f"policy.approvals_dir={tmp_path}",
        f"output_dir={tmp_path / 'run'}",
    )
    digest = manifest_hash(build_manifest(study))
    logs = {i: AuditLog(tmp_path / f"hospital-{i}.audit.jsonl") for i in range(3)}
    for i, log in logs.items():
        approve(log, digest, f"hospital-{i}", [])
    grid = InProcessGrid(
        app, [{"partition-id": i, "num-partitions": 3} for i in range(3)], run_config={}
    )
    result = run_study(grid, study, RevokeAfter(logs[0], digest, 1))
    # the observer hears of round 1 once round 2 has scored its model, i.e. after round 2
    refused = {r.server_round: r.refusals.get("hospital-0") for r in result.rounds}
    assert refused[1] is refused[2] is None and "hospital-0" in result.rounds[2].train
    expected = (
        "refused by the node's policy: study not approved: manifest "
        f"{digest[:8]} (approve it with medfed node approve)"
    )
    assert refused[3] == refused[4] == expected
    kinds = [(e["kind"], e["round"]) for e in logs[0].verify()]
    assert ("revoke", None) in kinds and ("refusal", 3) in kinds and ("round", 3) not in kinds


def _three_positives(work: Path) -> None:
    test = work / "cards" / "hospital-2-test.csv"
    with test.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    positives = [r for r in rows if r["cad"] == "1"][:3]
    kept = positives + [r for r in rows if r["cad"] == "0"]
    with test.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(kept)


def test_three_positive_test_cases_are_never_disclosed(cards, tmp_path):
    _three_positives(cards)
    common = ["simulate", "federation=sites", sites(cards), "rounds=2", "quiet=true"]
    control = medfed(tmp_path, *common, "policy.min_cell_count=1", f"output_dir={tmp_path}/c")
    assert control.returncode == 0, control.stderr
    sensitivity = {
        h["name"]: h["metrics"]["sensitivity"]
        for h in json.loads((tmp_path / "c" / "summary.json").read_text())["hospitals"]
    }
    assert sensitivity["hospital-2"] in (0.0, 1 / 3, 2 / 3, 1.0)  # it would tell tp of 3
    done = medfed(tmp_path, *common, f"output_dir={tmp_path}/run")
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    site = next(h for h in summary["hospitals"] if h["name"] == "hospital-2")
    assert set(site["metrics"].values()) == {None}
    assert "hospital-2" in summary["governance"]["suppressed"]
    others = [h for h in summary["hospitals"] if h["name"] != "hospital-2"]
    assert all(h["metrics"]["sensitivity"] is not None for h in others)
    report = (tmp_path / "run" / "report.md").read_text()
    row = next(line for line in report.splitlines() if line.startswith("| hospital-2 |"))
    assert "0.333" not in row and "0.667" not in row and "hospital-2: per-site metrics" in report
    text = (tmp_path / "run" / "summary.json").read_text() + report
    assert '"tp"' not in text and "positives" not in text


def test_the_readme_rehearsal_runs_as_written(tmp_path):
    """README "For your data-protection officer", block ``simulation``, unchanged."""
    import os
    import re

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = re.search(
        r"^<!-- dpo-test: simulation -->\n```bash\n(.*?)^```", readme, re.M | re.S
    ).group(1)
    env = {**os.environ, "PATH": f"{Path(MEDFED).parent}:{os.environ['PATH']}"}
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr
    governance = json.loads((tmp_path / "rehearsal" / "summary.json").read_text())["governance"]
    assert governance["approved_by"] == ["hospital-0", "hospital-1"]
    assert list(governance["absent"]) == ["hospital-2"]
    assert governance["absent"]["hospital-2"].startswith("study not approved: manifest ")
