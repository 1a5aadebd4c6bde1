"""The run directory: everything a researcher needs to read, plot or recompute a study.

======================  ==============================================================
``config.yaml``         the resolved study configuration (re-run it with ``--config-dir``)
``metrics.csv``         one row per round and hospital (plus the all-hospitals row)
``summary.json``        final global and per-hospital metrics, baselines, timings, bytes
``model.pt``            the final global weights (``torch.load`` -> ``state_dict``)
``convergence.png``     the primary metric per round, global and per hospital
``calibration.png``     the reliability diagram of a yes/no model (:mod:`.calibration`)
``model/``              the signed model bundle with its model card (:mod:`.bundle`)
``report.md``           a short human-readable report
======================  ==============================================================

Files are written to a temporary name and renamed (:func:`medfed.infra.files.atomic_write`), so a
crash never leaves half a file. ``summary.json`` is written last but one and says how the study
ended: ``status`` is ``finished``, ``stopped`` (it could not go on: ``reason`` says why) or
``failed`` (an error: ``reason``); a run directory without it was interrupted. ``resume=`` trusts
that field (:mod:`medfed.server.study.runstate`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from medfed.infra.files import atomic_write, json_safe, make_folder
from medfed.models.encoding import encoder_state
from medfed.server.outputs.governance_report import governance_summary
from medfed.server.study.loop import GLOBAL, StudyResult


def default_output_dir(study: dict[str, Any]) -> Path:
    """``outputs/<timestamp>-<task>-<strategy>`` under the working directory."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("outputs") / f"{stamp}-{study['task']['name']}-{study['strategy']['name']}"


def metric_rows(result: StudyResult) -> list[dict[str, Any]]:
    """The rows of ``metrics.csv``: test metrics of the global model after each round."""
    sizes = {h["name"]: h for h in result.hospitals.values()}
    all_test = sum(h["n_test"] for h in sizes.values())
    central = {r["round"]: r["epsilon"] for r in result.central_dp.get("rounds", [])}
    rows = []
    for record in result.rounds:
        extra = {"central_epsilon": central.get(record.server_round)} if central else {}
        per_site = dict(record.hospital_metrics)
        for name in record.train:  # trained, but missed the next round that would score it
            per_site.setdefault(name, {})
        if record.global_metrics:
            per_site[GLOBAL] = record.global_metrics
        for name, metrics in per_site.items():
            train = record.train.get(name, {})
            rows.append(
                {
                    "round": record.server_round,
                    "hospital": name,
                    "n_test": sizes.get(name, {}).get("n_test", all_test),
                    **metrics,
                    "train_loss": train.get("loss"),
                    "train_steps": train.get("steps"),
                    "epsilon": train.get("epsilon"),
                    **extra,
                    "seconds": record.seconds,
                    "wire_bytes": record.wire_bytes,
                }
            )
    return rows


def _csv_bytes(rows: list[dict[str, Any]]) -> bytes:
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode()


def _privacy_spent(result: StudyResult, name: str) -> dict[str, Any]:
    """The hospital's last reported epsilon and delta (DP-SGD studies), and rounds it missed."""
    spent: dict[str, Any] = {}
    for record in result.rounds:
        train = record.train.get(name, {})
        if "epsilon" in train:
            spent = {"epsilon": train["epsilon"], "delta": train["delta"]}
    missed = [
        r.server_round
        for r in result.rounds
        if name in r.refusals or name in r.failures or name in r.rejected
    ]
    return {**spent, "rounds_missed": missed}


def summary(result: StudyResult) -> dict[str, Any]:
    """The content of ``summary.json``."""
    final = result.final
    hospitals = [
        {
            "name": h["name"],
            "role": h.get("role", "train"),
            "n_train": h["n_train"],
            "n_test": h["n_test"],
            "metrics": final.hospital_metrics.get(h["name"], {}),
            **_privacy_spent(result, h["name"]),
        }
        for h in result.hospitals.values()
    ]
    metric_names = list(result.schema.metrics) + ["loss"]
    mean = {
        m: sum(h["metrics"].get(m, math.nan) for h in hospitals) / max(len(hospitals), 1)
        for m in metric_names
    }
    study = result.study
    data = {
        "task": result.schema.name,
        "strategy": study["strategy"]["name"],
        "engine": study["engine"]["name"],
        "rounds": study["rounds"],
        "seed": study["seed"],
        "federation": study["federation"]["name"],
        "primary_metric": result.schema.primary_metric,
        "wall_seconds": round(result.wall_seconds, 3),
        "global": final.global_metrics,
        "global_mean_over_hospitals": mean,
        "hospitals": hospitals,
        "sites": [h["name"] for h in hospitals],
        "missing_sites": study["federation"].get("missing_sites") or [],
        "normalisation": study["preprocessing"]["normalisation"],
        "total_train_steps": result.total_train_steps,
        "failures": {str(r.server_round): r.failures for r in result.rounds if r.failures},
        "status": "stopped" if result.stopped else "finished",
        "reason": result.stopped or None,
        "stopped": result.stopped or None,
        "refusals": {str(r.server_round): r.refusals for r in result.rounds if r.refusals},
        "rejected": {str(r.server_round): r.rejected for r in result.rounds if r.rejected},
        "skipped": {str(r.server_round): r.skipped for r in result.rounds if r.skipped},
        "privacy": study["privacy"]["name"],
        "study_id": study.get("study_id"),
        "wire_bytes": result.wire_bytes,
        "governance": governance_summary(result),  # manifest, approvals, suppressed metrics
    }
    if result.central_dp:
        data["central_dp"] = result.central_dp
    if result.baselines:
        data["baselines"] = result.baselines
    if result.personalised:
        data["personalised"] = result.personalised
    if result.cross_site:
        data["cross_site"] = result.cross_site
    if result.early_stopping:
        data["early_stopping"] = result.early_stopping
    return json_safe(data)


def site_statistics(result: StudyResult) -> dict[str, Any]:
    """``normalisation`` and, under per-site normalisation, each site's own statistics (from
    its round-0 aggregates), so whatever scores rows with ``model.pt`` can use the right ones
    (:func:`medfed.models.scoring.encoder_for`)."""
    norm = result.study["preprocessing"]["normalisation"]
    if norm != "site":
        return {"normalisation": norm}
    return {
        "normalisation": norm,
        "site_statistics": {
            h["name"]: h["site_statistics"]
            for h in result.hospitals.values()
            if "site_statistics" in h
        },
    }


def write_run(result: StudyResult) -> Path:
    """Write the run directory of ``result`` (see the module docstring) and return its path.

    ``summary.json`` comes last: a run directory whose summary says ``finished`` is complete.
    """
    out = make_folder(result.study["output_dir"])
    atomic_write(out / "config.yaml", yaml.safe_dump(result.study, sort_keys=False).encode())
    rows = metric_rows(result)
    atomic_write(out / "metrics.csv", _csv_bytes(rows))
    data = summary(result)
    buffer = io.BytesIO()
    torch.save(
        {
            "state_dict": result.final_state,
            "task": result.schema.name,
            "statistics": result.statistics.to_dict(),
            "encoder": encoder_state(
                result.statistics, result.study["preprocessing"]["missing_indicators"]
            ),
            **site_statistics(result),
        },
        buffer,
    )
    atomic_write(out / "model.pt", buffer.getvalue())
    from medfed.server.outputs.bundle import write_model_bundle
    from medfed.server.outputs.calibration import calibration_report
    from medfed.server.outputs.report import plot_convergence, plot_epsilon, report_markdown

    plot_convergence(rows, result.schema.primary_metric, out / "convergence.png")
    plot_epsilon(rows, out / "epsilon.png")
    from medfed.server.outputs.benefit import benefit_markdown, write_cross_site

    write_cross_site(result, out)
    calibration, verdict = calibration_report(result, out)
    write_model_bundle(result, data, out, verdict)  # model/: signed bundle with its model card
    report = report_markdown(data, result.study) + benefit_markdown(data) + calibration
    atomic_write(out / "report.md", report.encode())
    atomic_write(out / "summary.json", json.dumps(data, indent=2).encode())
    from medfed.server.monitor.status import write_final

    write_final(result)  # status.json says finished only once every file above is written
    return out
