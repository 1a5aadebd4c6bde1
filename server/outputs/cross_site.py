"""Cross-site evaluation of a simulated study: every model on every site's test split.

Rows are models -- ``global`` (the federated model), ``local <site>`` (that site trained alone,
with its own statistics and the SGD steps it took in the federation, as the local-only baseline
and the node's benefit table do) and ``personalised <site>`` (the file the node stored under
``personalised/``); columns are the sites' test splits; cells are the task's primary metric.
Every model encodes rows with the statistics it was trained with: a personalised or local model
with its own site's, the global model with the global ones (or, under
``preprocessing.normalisation=site``, each column with that site's own, as in the federation).

In a simulation every cell is computed here, from every site's rows in one process. In deployment
(:func:`deployed_cross_site`) the table holds what the hospitals disclosed: the global model on each
site (the final evaluation), each personalised and local-only model on its own site (the benefit
table), and another hospital's local-only model only where both hospitals' policies allow it
(:mod:`medfed.server.study.crosssite`); every other cell is blank, and the ``note`` column says why.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import torch

from medfed.models.encoding import Encoder, GlobalStats
from medfed.models.ingest.sources import SiteData, federation_size, load_site
from medfed.models.metrics import metrics_from_statistics
from medfed.models.pipeline import (
    local_only_model,
    new_model,
    own_statistics,
    rows_test_statistics,
    site_key,
)
from medfed.server.study.loop import StudyResult


def _own(site: SiteData, result: StudyResult) -> GlobalStats:
    study = result.study
    return own_statistics(site.train, result.schema, int(study["preprocessing"]["min_cell"]), study)


def _score(
    model: torch.nn.Module, stats: GlobalStats, site: SiteData, result: StudyResult
) -> float:
    schema = result.schema
    sums = rows_test_statistics(model, site.test, schema, stats, result.study)
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
    """``model,<site>,<site>...`` rows of the primary metric (empty cells for NaN), and a last
    ``note`` column saying why cells are blank when the table has notes (deployment)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    notes = table.get("notes")
    writer.writerow(["model", *table["columns"], *(["note"] if notes is not None else [])])
    for model, row in table["rows"].items():
        cells = [row.get(site, math.nan) for site in table["columns"]]
        values = ["" if not math.isfinite(v) else f"{v:.6g}" for v in cells]
        writer.writerow([model, *values, *([notes.get(model, "")] if notes is not None else [])])
    return buffer.getvalue().encode()


def _grouped(blanks: dict[str, str]) -> str:
    """``"a, b: reason; c: other reason"``: the blank columns of a row grouped by their reason."""
    columns: dict[str, list[str]] = {}
    for column, why in sorted(blanks.items()):
        columns.setdefault(why, []).append(column)
    return "; ".join(f"{', '.join(names)}: {why}" for why, names in columns.items())


def table_for(result: StudyResult, grid: Any) -> dict[str, Any]:
    """The study's cross-site table: computed here in a simulation; in deployment
    (``federation=nodes``) from what the hospitals disclose, after the cross-site exchange over
    ``grid``. Never raises: a failure leaves the table empty, ``not_run`` saying why."""
    if result.study["federation"].get("name") != "nodes":
        return cross_site(result)
    from medfed.server.study.crosssite import exchange

    try:
        return deployed_cross_site(result, exchange(grid, result))
    except Exception as exc:  # noqa: BLE001 - reported in summary.json, never a crash
        reason = f"the cross-site exchange failed ({str(exc).splitlines()[0]})"
        metric = result.schema.primary_metric
        return {"metric": metric, "columns": [], "rows": {}, "not_run": reason}


OWN_ROWS = "stays at its hospital: scored on that hospital's own test rows only"


def deployed_cross_site(result: StudyResult, exchanged: dict[str, Any]) -> dict[str, Any]:
    """The deployed study's table (module docstring) from the final evaluation, the benefit table
    and the cross-site exchange (:func:`medfed.server.study.crosssite.exchange`)."""
    metric = result.schema.primary_metric
    columns = sorted(str(h["name"]) for h in result.hospitals.values())
    final = result.final.hospital_metrics
    rows: dict[str, dict[str, float]] = {
        "global": {c: float(final.get(c, {}).get(metric, math.nan)) for c in columns}
    }
    notes: dict[str, str] = {"global": ""}
    benefit = (result.personalised or {}).get("hospitals", {})
    for owner, blanks in sorted(exchanged["blank"].items()):
        row = dict.fromkeys(columns, math.nan)
        row.update(exchanged["scores"].get(owner, {}))
        row[owner] = benefit.get(owner, {}).get("local", [math.nan])[0]
        rows[f"local {owner}"] = row
        notes[f"local {owner}"] = _grouped(blanks)
    for owner, values in sorted(benefit.items()):
        rows[f"personalised {owner}"] = {
            c: values["personalised"][0] if c == owner else math.nan for c in columns
        }
        notes[f"personalised {owner}"] = OWN_ROWS
    return {"metric": metric, "columns": columns, "rows": rows, "notes": notes, **exchanged}
