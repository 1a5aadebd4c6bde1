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


def run_baselines(result: StudyResult) -> dict[str, Any]:
    """Train and score the pooled and local-only baselines for a finished federated study."""
    study, schema, stats = result.study, result.schema, result.statistics
    n = federation_size(study["federation"])
    sites = [load_site(schema, study["federation"], i, int(study["seed"])) for i in range(n)]
    steps = _steps_per_hospital(result)
    seed = int(study["seed"])
    missing = bool(study["preprocessing"]["missing_indicators"])

    encoder = Encoder(schema, stats, missing_indicators=missing)
    x = np.concatenate([encoder.transform(s.train) for s in sites])
    y = np.concatenate([encode_target(s.train, schema) for s in sites])
    model = new_model(schema, stats, encoder.n_inputs)
    local_training(model, x, y, schema, study, stats, seed=seed, steps=sum(steps.values()))
    pooled = {"steps": sum(steps.values()), **_score(model, encoder, sites, result)}

    local: dict[str, Any] = {"steps": steps, "hospitals": {}}
    for index, site in enumerate(sites):
        own = own_statistics(site.train, schema, int(study["preprocessing"]["min_cell"]))
        own_encoder = Encoder(schema, own, missing_indicators=missing)
        model = new_model(schema, own, own_encoder.n_inputs)
        local_training(model, own_encoder.transform(site.train), encode_target(site.train, schema),
                       schema, study, own, seed=seed + index + 1,
                       steps=max(steps.get(site.name, 0), 1))
        scored = _score(model, own_encoder, sites, result)
        local["hospitals"][site.name] = {"all_test_rows": scored["global"],
                                         "own_test_rows": scored["hospitals"][site.name]}
    local["mean"] = _mean([h["all_test_rows"] for h in local["hospitals"].values()])
    local["own_site_mean"] = _mean([h["own_test_rows"] for h in local["hospitals"].values()])
    return {"pooled": pooled, "local": local, "rule": "equal SGD steps"}


def _mean(metrics: list[dict[str, float]]) -> dict[str, float]:
    keys = metrics[0].keys() if metrics else []
    return {k: float(np.nanmean([m.get(k, math.nan) for m in metrics])) for k in keys}
