"""Governance on a real federation: a TLS SuperLink and three SuperNodes on loopback
(:class:`medfed.server.runtime.LoopbackFederation`), driven by the ``medfed`` commands and by
the README's "For your data-protection officer" blocks as written (only the variable lines at a
block's top change: ``CARD``, ``KEY``, ``PORT``, ``HASH``).

The nodes run with a policy file that leaves ``require_approval`` to ``node start``'s default
(true). In order: a study nobody approved waits for approvals (``medfed status`` shows them),
then is refused with the one-line reason; the README's manifest is approved by two hospitals and
runs on those two, the summary saying why the third is absent; a one-character change of a
setting is refused by the coordinator (``--manifest``) and by the nodes (a new hash); every round
is in ``node audit --format csv``; an edited audit log is detected and stops its node until an
operator acknowledges it; an approval is revoked.
"""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from medfed.infra.loopback import MEDFED, POLICY, LoopbackFederation

pytestmark = [pytest.mark.slow, pytest.mark.serial]

README = Path(__file__).resolve().parents[2] / "README.md"
COMMON = ("rounds=2", "privacy=dpsgd", "strategy.min_nodes=2")  # the README's study
NOT_APPROVED = re.compile(
    r"study not approved: manifest ([0-9a-f]{8}) \(approve it with medfed "
    r"node approve\)"
)


def dpo_blocks() -> dict[str, str]:
    """The bash block after each ``<!-- dpo-test: NAME -->`` marker of README.md, by name."""
    found = re.findall(
        r"^<!-- dpo-test: ([\w-]+) -->\n```bash\n(.*?)^```", README.read_text(), re.M | re.S
    )
    return dict(found)


def run_block(
    fed: LoopbackFederation, name: str, stdin: str = "", **values: str
) -> subprocess.CompletedProcess[str]:
    """Run README block ``name`` in the federation's folder, its top variable lines set to
    ``values``; bash -euo pipefail, output captured."""
    lines = dpo_blocks()[name].splitlines()
    for i, line in enumerate(lines):
        key = line.split("=", 1)[0]
        if re.fullmatch(r"[A-Z_]+", key) and key in values:
            lines[i] = f"{key}={values.pop(key)}"
    assert not values, f"no variable line {sorted(values)} in block {name}"
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", "\n".join(lines)],
        cwd=fed.workdir,
        env=fed.env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _waiting_status(fed: LoopbackFederation, study: subprocess.Popen) -> dict:
    deadline, last = time.monotonic() + 120, None
    while time.monotonic() < deadline and study.poll() is None:
        last = fed.medfed("status", str(fed.coord), "--json")
        report = json.loads(last.stdout or "{}")
        if report.get("approvals"):
            return report
        time.sleep(0.5)
    raise AssertionError(
        f"no approvals in medfed status while the study waited: {last}\n{fed.tails()}"
    )


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    work = tmp_path_factory.mktemp("governance")
    with LoopbackFederation(work) as fed:
        (work / "policy.yaml").write_text(POLICY.replace("require_approval: false\n", ""))
        run = [MEDFED, "run", "--superlink", fed.superlink, "--ca", str(fed.coord / "ca.crt")]
        nobody = fed.start(
            "nobody",
            [
                *run,
                *COMMON,
                "timeout=60",
                "governance.approval_timeout=12",
                f"output_dir={work / 'nobody'}",
            ],
        )
        fed.waiting = _waiting_status(fed, nobody)
        nobody.wait(timeout=180)
        fed.manifest = run_block(fed, "coordinator-manifest")
        fed.approvals = [
            run_block(
                fed,
                "hospital-approve",
                stdin="y\n",
                CARD=f"cards/hospital-{i}.yaml",
                KEY=f"hospital-{i}/node.key",
            )
            for i in (0, 1)
        ]
        fed.approved = run_block(fed, "coordinator-run", PORT=str(fed.port))
        yield fed


def printed_hash(stdout: str) -> str:
    """The manifest hash ``medfed study manifest`` prints after the YAML."""
    return re.findall(r"^sha256: ([0-9a-f]{64})$", stdout, re.M)[-1]


def _hash(fed) -> str:
    return printed_hash(fed.manifest.stdout)


def test_a_study_nobody_approved_waits_then_is_refused_with_the_reason(fed):
    assert fed.processes["nobody"].returncode == 1
    study = fed.waiting["approvals"][0]
    assert study["approved"] == []
    assert sorted(study["not_approved"]) == ["hospital-0", "hospital-1", "hospital-2"]
    assert all(NOT_APPROVED.fullmatch(why) for why in study["not_approved"].values())
    log = fed.log("nobody")
    assert "only 0 hospital(s) sent its statistics in round 0, strategy.min_nodes=2" in log
    refused = NOT_APPROVED.findall(log)
    assert len(set(refused)) == 1 and refused[0] == study["manifest"][:8]
    failed = json.loads((fed.workdir / "nobody" / "summary.json").read_text())  # issue 11 §3
    assert failed["status"] == "failed" and "only 0 hospital(s)" in failed["reason"]


def test_approved_by_two_of_three_runs_on_two_and_says_why_the_third_is_absent(fed):
    assert fed.manifest.returncode == 0, fed.manifest.stderr
    for approval in fed.approvals:
        assert approval.returncode == 0, approval.stdout + approval.stderr
        assert "columns: age, sex, chest_pain" in approval.stdout
        assert "with:    hospital-0, hospital-1, hospital-2" in approval.stdout
    assert fed.approved.returncode == 0, fed.approved.stdout[-3000:] + fed.approved.stderr
    summary = json.loads((fed.workdir / "runs" / "approved" / "summary.json").read_text())
    digest = _hash(fed)
    assert summary["governance"]["manifest"] == digest
    assert summary["governance"]["approved_by"] == ["hospital-0", "hospital-1"]
    assert summary["governance"]["absent"] == {
        "hospital-2": (
            f"study not approved: manifest {digest[:8]} (approve it with medfed node approve)"
        )
    }
    assert [h["name"] for h in summary["hospitals"]] == ["hospital-0", "hospital-1"]
    assert "study-started" in fed.approved.stdout and "absent hospital-2" in fed.approved.stdout


def test_a_one_character_change_after_approval_is_refused(fed):
    changed = fed.medfed(
        "run",
        "--superlink",
        fed.superlink,
        "--ca",
        str(fed.coord / "ca.crt"),
        "--manifest",
        "study.yaml",
        *COMMON,
        "train.lr=0.11",
    )
    assert changed.returncode == 2
    assert re.fullmatch(
        r"medfed: error: --manifest study.yaml: this study differs from the "
        rf"approved manifest {_hash(fed)[:8]} in train; .*\n",
        changed.stderr,
    )
    manifest = yaml.safe_load((fed.workdir / "study.yaml").read_text())["manifest"]
    nodes = fed.run(
        *COMMON,
        "train.lr=0.11",
        "timeout=60",
        f"governance.sites={json.dumps(manifest['sites'])}",
        f"governance.coordinator='{manifest['coordinator']}'",
    )
    assert nodes.returncode == 1
    refused = set(NOT_APPROVED.findall(nodes.stdout + nodes.stderr))
    again = fed.medfed(
        "study", "manifest", "--coordinator", str(fed.coord), *COMMON, "train.lr=0.11"
    )
    assert refused == {printed_hash(again.stdout)[:8]} != {_hash(fed)[:8]}


def test_node_audit_csv_lists_every_round_of_the_study(fed):
    audit = run_block(fed, "hospital-audit", CARD="cards/hospital-0.yaml")
    assert audit.returncode == 0, audit.stderr
    assert "entries, chain and head verified" in audit.stdout
    rows = list(csv.DictReader(io.StringIO(audit.stdout[audit.stdout.index("seq,") :])))
    study = [r for r in rows if r["manifest"] == _hash(fed)]
    kinds = [(r["kind"], r["round"]) for r in study]
    assert kinds[:1] == [("approve", "")] and ("study-start", "0") in kinds
    assert [k for k in kinds if k[0] == "round" and k[1] != "0"] == [("round", "1"), ("round", "2")]
    assert kinds[-1] == ("study-end", "2")
    trained = [r for r in study if r["kind"] == "round" and r["round"] in ("1", "2")]
    assert all(
        r["arrays"].startswith("arrays.float32(")
        and int(r["array_bytes"]) > 0
        and float(r["epsilon"]) > 0
        and "num-examples" in r["metric_keys"]
        for r in trained
    )
    assert any(r["kind"] == "data-check" for r in rows)  # node start checked the data


def test_an_edited_audit_log_is_detected_and_stops_the_node(fed):
    log = fed.workdir / "cards" / "hospital-1.yaml.audit.jsonl"
    log.write_text(log.read_text().replace('"kind":"round"', '"kind":"study-end"', 1))
    verify = fed.medfed("node", "audit", "--dataset", "cards/hospital-1.yaml", "--verify")
    assert verify.returncode == 1 and verify.stderr.startswith(
        "medfed: error: audit log tampered: "
    )
    rerun = fed.run("--manifest", "study.yaml", *COMMON, "timeout=60")
    assert rerun.returncode == 1
    assert "audit log damaged, the node refuses to work" in rerun.stdout + rerun.stderr
    ack = fed.medfed(
        "node", "audit", "--dataset", "cards/hospital-1.yaml", "--acknowledge", "edited in a test"
    )
    assert ack.returncode == 0 and "damaged audit log kept as" in ack.stdout
    assert (
        fed.medfed("node", "audit", "--dataset", "cards/hospital-1.yaml", "--verify").returncode
        == 0
    )


def test_a_hospital_revokes_its_approval(fed):
    revoke = run_block(fed, "hospital-revoke", CARD="cards/hospital-0.yaml", HASH=_hash(fed)[:8])
    assert revoke.returncode == 0, revoke.stderr
    assert f"revoked manifest {_hash(fed)[:8]} for hospital-0" in revoke.stdout
    again = run_block(fed, "hospital-revoke", CARD="cards/hospital-0.yaml", HASH=_hash(fed)[:8])
    assert again.returncode == 2 and "is not approved at hospital-0" in again.stderr
