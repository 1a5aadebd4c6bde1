"""Cross-site evaluation of a simulated study: every model on every site's test split.

Rows are models -- ``global`` (the federated model), ``local <site>`` (that site trained alone,
with its own statistics and the SGD steps it took in the federation, as the local-only baseline
and the node's benefit table do) and ``personalised <site>`` (the file the node stored under
``personalised/``); columns are the sites' test splits; cells are the task's primary metric.
Every model encodes rows with the statistics it was trained with: a personalised or local model
with its own site's, the global model with the global ones (or, under
``preprocessing.normalisation=site``, each column with that site's own, as in the federation).

Simulation only: it needs every site's rows in one process. In deployment the per-hospital benefit
table (global and personalised on the hospital's own rows) is what exists; other sites' models
never reach a hospital.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import torch

from medfed.models.encoding import Encoder, GlobalStats, encode_target
from medfed.models.ingest.sources import SiteData, federation_size, load_site
from medfed.models.metrics import metrics_from_statistics
from medfed.models.pipeline import (
    local_only_model,
    new_model,
    own_statistics,
    site_key,
    test_statistics,
)
from medfed.server.study.loop import StudyResult


def _own(site: SiteData, result: StudyResult) -> GlobalStats:
    study = result.study
    return own_statistics(site.train, result.schema, int(study["preprocessing"]["min_cell"]), study)


def _score(
    model: torch.nn.Module, stats: GlobalStats, site: SiteData, result: StudyResult
) -> float:
    study, schema = result.study, result.schema
    encoder = Encoder(
        schema, stats, missing_indicators=bool(study["preprocessing"]["missing_indicators"])
    )
    sums = test_statistics(
        model,
        encoder.transform(site.test),
        encode_target(site.test, schema),
        schema,
        stats,
        int(study["evaluate"]["auroc_bins"]),
    )
    return float(metrics_from_statistics(schema, sums)[schema.primary_metric])


def _global_row(result: StudyResult, sites: list[SiteData]) -> dict[str, float]:
    study = result.study
    per_site = study["preprocessing"]["normalisation"] == "site"
    row = {}
    for site in sites:
        stats = _own(site, result) if per_site else result.statistics
        missing = bool(study["preprocessing"]["missing_indicators"])
        width = Encoder(result.schema, stats, missing_indicators=missing).n_inputs
        model = new_model(result.schema, stats, width, study)
        model.load_state_dict(result.final_state)
        row[site.name] = _score(model, stats, site, result)
    return row


def _local_model(result: StudyResult, site: SiteData, steps: int) -> tuple[Any, GlobalStats]:
    model, own, _ = local_only_model(
        site.train, result.schema, result.study, site_key(site.name), steps
    )
    return model, own


def _personal_model(result: StudyResult, path: Path) -> tuple[Any, GlobalStats]:
    saved = torch.load(path, weights_only=False)
    stats = GlobalStats.from_dict(saved["statistics"])
    width = Encoder(
        result.schema, stats, missing_indicators=bool(saved["encoder"]["missing_indicators"])
    ).n_inputs
    model = new_model(result.schema, stats, width, result.study)
    model.load_state_dict(saved["state_dict"])
    return model, stats


def _steps(result: StudyResult) -> dict[str, int]:
    steps: dict[str, int] = {}
    for record in result.rounds:
        for name, train in record.train.items():
            steps[name] = steps.get(name, 0) + int(train.get("steps") or 0)
    return steps


def cross_site(result: StudyResult) -> dict[str, Any]:
    """The cross-site table ``{"metric", "columns", "rows": {model: {site: value}}, "not_run"}``.

    Never raises: when the sites' rows cannot be loaded here (deployment) the table is empty and
    ``not_run`` says why.
    """
    study = result.study
    table: dict[str, Any] = {"metric": result.schema.primary_metric, "columns": [], "rows": {}}
    try:
        sites = [
            load_site(result.schema, study["federation"], i, int(study["seed"]))
            for i in range(federation_size(study["federation"]))
        ]
    except Exception as exc:  # noqa: BLE001 - reported in summary.json, never a crash
        table["not_run"] = f"the sites' rows are not available here ({str(exc).splitlines()[0]})"
        return table
    table["columns"] = [site.name for site in sites]
    table["rows"]["global"] = _global_row(result, sites)
    steps = _steps(result)
    folder = Path(study["output_dir"]) / "personalised"
    for site in sites:
        if site.role != "train":
            continue
        model, stats = _local_model(result, site, steps.get(site.name, 0))
        table["rows"][f"local {site.name}"] = {
            s.name: _score(model, stats, s, result) for s in sites
        }
    for site in sites:
        if (folder / f"{site.name}.pt").exists():
            model, stats = _personal_model(result, folder / f"{site.name}.pt")
            table["rows"][f"personalised {site.name}"] = {
                s.name: _score(model, stats, s, result) for s in sites
            }
    return table


def cross_site_csv(table: dict[str, Any]) -> bytes:
    """``model,<site>,<site>...`` rows of the primary metric (empty cells for NaN)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["model", *table["columns"]])
    for model, row in table["rows"].items():
        cells = [row.get(site, math.nan) for site in table["columns"]]
        writer.writerow([model, *("" if not math.isfinite(v) else f"{v:.6g}" for v in cells)])
    return buffer.getvalue().encode()
