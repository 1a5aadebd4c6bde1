"""Pooled and local-only baselines under the equal-work rule (simulation only).

* **pooled**: one model trained on every hospital's training rows in one place, for exactly the
  total number of SGD steps the federation took (summed over hospitals and rounds);
* **local only**: each hospital trains alone, with its own statistics, for exactly the steps it
  took in the federation (so the local models together do the federation's total work).

All arms use the same encoder, model, loss, optimiser, learning rate and batch size
(:mod:`medfed.models.pipeline`) and are scored on every hospital's test split, together. Only a
simulation can run them: they need every site's rows in one process.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from medfed.models.encoding import Encoder, encode_target
from medfed.models.ingest.sources import SiteData, federation_size, load_site
from medfed.models.metrics import metrics_from_statistics, sum_statistics
from medfed.models.pipeline import (
    local_training,
    new_model,
    own_statistics,
    test_statistics,
)
from medfed.server.study.loop import StudyResult


def _steps_per_hospital(result: StudyResult) -> dict[str, int]:
    steps: dict[str, int] = {}
    for record in result.rounds:
        for name, train in record.train.items():
            steps[name] = steps.get(name, 0) + int(train["steps"] or 0)
    return steps


def _score(model, encoder: Encoder, sites: list[SiteData], result: StudyResult
           ) -> dict[str, Any]:
    schema, bins = result.schema, int(result.study["evaluate"]["auroc_bins"])
    stats = encoder.stats
    per_site = {}
    for site in sites:
        per_site[site.name] = test_statistics(model, encoder.transform(site.test),
                                              encode_target(site.test, schema), schema, stats, bins)
    return {"global": metrics_from_statistics(schema, sum_statistics(list(per_site.values()))),
            "hospitals": {n: metrics_from_statistics(schema, s) for n, s in per_site.items()}}


def _sites(result: StudyResult, not_run: dict[str, str]) -> list[SiteData]:
    """The sites whose rows load here; each one that does not is in ``not_run`` with why."""
    study = result.study
    sites = []
    for index in range(federation_size(study["federation"])):
        try:
            sites.append(load_site(result.schema, study["federation"], index, int(study["seed"])))
        except Exception as exc:  # noqa: BLE001 - reported in summary.json, never a crash
            not_run[f"hospital {index}"] = f"its rows could not be loaded: {_first_line(exc)}"
    return sites


def _first_line(exc: Exception) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def _pooled(result: StudyResult, sites: list[SiteData], steps: dict[str, int]) -> dict[str, Any]:
    """One model on the training hospitals' rows, scored on every site's test rows."""
    study, schema, stats = result.study, result.schema, result.statistics
    missing = bool(study["preprocessing"]["missing_indicators"])
    encoder = Encoder(schema, stats, missing_indicators=missing)
    training = [s for s in sites if s.role == "train"]
    x = np.concatenate([encoder.transform(s.train) for s in training])
    y = np.concatenate([encode_target(s.train, schema) for s in training])
    model = new_model(schema, stats, encoder.n_inputs)
    local_training(model, x, y, schema, study, stats, seed=int(study["seed"]),
                   steps=sum(steps.values()))
    return {"steps": sum(steps.values()), **_score(model, encoder, sites, result)}


def _local(result: StudyResult, sites: list[SiteData], index: int, site: SiteData,
           steps: dict[str, int]) -> dict[str, Any]:
    """One training hospital's own model, scored on every site's and on its own test rows."""
    study, schema = result.study, result.schema
    own = own_statistics(site.train, schema, int(study["preprocessing"]["min_cell"]), study)
    own_encoder = Encoder(schema, own,
                          missing_indicators=bool(study["preprocessing"]["missing_indicators"]))
    model = new_model(schema, own, own_encoder.n_inputs)
    local_training(model, own_encoder.transform(site.train), encode_target(site.train, schema),
                   schema, study, own, seed=int(study["seed"]) + index + 1,
                   steps=max(steps.get(site.name, 0), 1))
    scored = _score(model, own_encoder, sites, result)
    return {"all_test_rows": scored["global"], "own_test_rows": scored["hospitals"][site.name]}


def run_baselines(result: StudyResult) -> dict[str, Any]:
    """Train and score the pooled and local-only baselines for a finished federated study.

    Never raises: a baseline that cannot run (for one site, or at all) is listed under
    ``not_run`` with its reason, and an evaluation-only site gets no local model (it never
    trains) but its test rows score every baseline.
    """
    not_run: dict[str, str] = {}
    sites = _sites(result, not_run)
    steps = _steps_per_hospital(result)
    pooled: dict[str, Any] = {"global": {}, "hospitals": {}}
    try:
        pooled = _pooled(result, sites, steps)
    except Exception as exc:  # noqa: BLE001 - reported, the study's results are kept
        not_run["pooled"] = f"could not run: {_first_line(exc)}"
    local: dict[str, Any] = {"steps": steps, "hospitals": {}}
    for index, site in enumerate(sites):
        if site.role != "train":
            local["hospitals"][site.name] = {"role": site.role, "not_run": "evaluation-only site "
                                             "(role: evaluate): no local model"}
            continue
        try:
            local["hospitals"][site.name] = _local(result, sites, index, site, steps)
        except Exception as exc:  # noqa: BLE001 - reported, the other sites go on
            not_run[f"local {site.name}"] = f"could not run: {_first_line(exc)}"
    trained = [h for h in local["hospitals"].values() if "all_test_rows" in h]
    local["mean"] = _mean([h["all_test_rows"] for h in trained])
    local["own_site_mean"] = _mean([h["own_test_rows"] for h in trained])
    return {"pooled": pooled, "local": local, "rule": "equal SGD steps", "not_run": not_run}


def _mean(metrics: list[dict[str, float]]) -> dict[str, float]:
    keys = metrics[0].keys() if metrics else []
    return {k: float(np.nanmean([m.get(k, math.nan) for m in metrics])) for k in keys}
