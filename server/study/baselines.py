"""Pooled and local-only baselines under the equal-work rule (simulation only).

* **pooled**: one model trained on every hospital's training rows in one place, for exactly the
  total number of SGD steps the federation took (summed over hospitals and rounds);
* **local only**: each hospital trains alone for exactly the steps it took in the federation (so
  the local models together do the federation's total work).

The baselines honour the study, so a comparison never sets a private federation against a
non-private pooled model without saying so:

* ``preprocessing.normalisation``: ``global`` encodes every row with the federated round-0
  statistics; ``site`` encodes each hospital's rows (training and test) with its own, as its node
  did in the federation, before they are pooled.
* ``privacy=dpsgd``: the pooled and local models train with DP-SGD at the study's epsilon
  (``privacy.target_epsilon``, or the largest epsilon a hospital reached) and delta, the noise
  planned for their own sampling rate and steps; ``pooled_non_private`` is the same pooled run
  without DP, labelled so.

All arms use the same encoder, model, loss, optimiser, learning rate and batch size
(:mod:`medfed.models.pipeline`) and are scored on every hospital's test split, together. Only a
simulation can run them: they need every site's rows in one process.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from medfed.models.encoding import Encoder, GlobalStats, encode_target
from medfed.models.ingest.sources import SiteData, federation_size, load_site
from medfed.models.metrics import metrics_from_statistics, sum_statistics
from medfed.models.pipeline import (
    local_training,
    new_model,
    own_statistics,
    site_key,
    test_statistics,
)
from medfed.models.settings import lr_schedule_of
from medfed.models.training import seed_torch, step_lr_factor
from medfed.server.study.loop import StudyResult


def _steps_per_hospital(result: StudyResult) -> dict[str, int]:
    steps: dict[str, int] = {}
    for record in result.rounds:
        for name, train in record.train.items():
            steps[name] = steps.get(name, 0) + int(train["steps"] or 0)
    return steps


def _encoders(result: StudyResult, sites: list[SiteData]) -> dict[str, Encoder]:
    """Each site's encoder as the study's ``preprocessing.normalisation`` prescribes."""
    prep = result.study["preprocessing"]
    missing = bool(prep["missing_indicators"])
    encoders = {}
    for site in sites:
        stats = (
            own_statistics(site.train, result.schema, int(prep["min_cell"]), result.study)
            if prep["normalisation"] == "site"
            else result.statistics
        )
        encoders[site.name] = Encoder(result.schema, stats, missing_indicators=missing)
    return encoders


def _score(
    model,
    encoders: dict[str, Encoder],
    stats: GlobalStats,
    sites: list[SiteData],
    result: StudyResult,
) -> dict[str, Any]:
    schema, bins = result.schema, int(result.study["evaluate"]["auroc_bins"])
    per_site = {
        site.name: test_statistics(
            model,
            encoders[site.name].transform(site.test),
            encode_target(site.test, schema),
            schema,
            stats,
            bins,
        )
        for site in sites
    }
    return {
        "global": metrics_from_statistics(schema, sum_statistics(list(per_site.values()))),
        "hospitals": {n: metrics_from_statistics(schema, s) for n, s in per_site.items()},
    }


def _dp_budget(result: StudyResult) -> tuple[float, float] | None:
    """(epsilon, delta) the federation's hospitals were held to, or None without DP-SGD."""
    privacy = result.study["privacy"]
    if privacy.get("name") != "dpsgd":
        return None
    spent = [t for record in result.rounds for t in record.train.values() if "epsilon" in t]
    if not spent:
        return None
    epsilon = privacy.get("target_epsilon") or max(float(t["epsilon"] or 0) for t in spent)
    return float(epsilon), float(privacy.get("delta") or max(float(t["delta"] or 0) for t in spent))


def _train(
    model,
    x: np.ndarray,
    y: np.ndarray,
    result: StudyResult,
    stats: GlobalStats,
    seed: int,
    steps: int,
    budget: tuple[float, float] | None,
) -> dict[str, Any]:
    """Train ``model`` for ``steps`` steps, with DP-SGD at ``budget`` when given; a report."""
    study, schema = result.study, result.schema
    factor = step_lr_factor(  # the federation's train.lr_schedule, round by round
        lr_schedule_of(study["train"]),
        int(study["rounds"]),
        max(result.rounds[-1].server_round, 1),
        steps,
    )
    if budget is None:
        local_training(model, x, y, schema, study, stats, seed=seed, steps=steps, lr_factor=factor)
        return {"steps": steps}
    from medfed.models.privacy import dp_train, noise_for_target, sample_rate, study_dp_settings
    from medfed.models.training import loss_function

    settings = study_dp_settings(study)
    epsilon, delta = budget
    rate = sample_rate(len(y), settings["batch_size"])
    noise = (
        noise_for_target(epsilon, delta, rate, steps, settings["accountant"])
        if math.isfinite(epsilon)
        else 0.0
    )
    _, report = dp_train(
        model,
        x,
        y,
        loss_function(schema, stats),
        noise_multiplier=noise,
        seed=seed,
        history=[],
        steps=steps,
        delta=delta,
        lr_factor=factor,
        **settings,
    )
    return {"steps": steps, "epsilon": report["epsilon"], "delta": delta, "noise_multiplier": noise}


def _pooled(
    result: StudyResult,
    sites: list[SiteData],
    encoders: dict[str, Encoder],
    steps: int,
    budget: tuple[float, float] | None,
) -> dict[str, Any]:
    schema, stats = result.schema, result.statistics
    training = [s for s in sites if s.role == "train"]  # evaluation-only sites never train
    x = np.concatenate([encoders[s.name].transform(s.train) for s in training])
    y = np.concatenate([encode_target(s.train, schema) for s in training])
    seed_torch(int(result.study["seed"]))  # initial weights from the study seed, not from
    model = new_model(schema, stats, x.shape[1])  # what ran before in this process (engines)
    report = _train(model, x, y, result, stats, int(result.study["seed"]), steps, budget)
    return {**report, **_score(model, encoders, stats, sites, result)}


def _local(
    result: StudyResult,
    sites: list[SiteData],
    encoders: dict[str, Encoder],
    steps: dict[str, int],
    budget: tuple[float, float] | None,
    not_run: dict[str, str],
) -> dict[str, Any]:
    local: dict[str, Any] = {"steps": steps, "hospitals": {}}
    for site in sites:
        if site.role != "train":
            local["hospitals"][site.name] = {
                "role": site.role,
                "not_run": "evaluation-only site (role: evaluate): no local model",
            }
            continue
        try:
            local["hospitals"][site.name] = _one_local(result, sites, encoders, steps, budget, site)
        except Exception as exc:  # noqa: BLE001 - reported, the other sites go on
            not_run[f"local {site.name}"] = f"could not run: {_first_line(exc)}"
    trained = [h for h in local["hospitals"].values() if "all_test_rows" in h]
    local["mean"] = _mean([h["all_test_rows"] for h in trained])
    local["own_site_mean"] = _mean([h["own_test_rows"] for h in trained])
    return local


def _one_local(
    result: StudyResult,
    sites: list[SiteData],
    encoders: dict[str, Encoder],
    steps: dict[str, int],
    budget: tuple[float, float] | None,
    site: SiteData,
) -> dict[str, Any]:
    """One training hospital's own model, scored on every site's and on its own test rows."""
    schema, seed = result.schema, int(result.study["seed"])
    encoder = encoders[site.name]
    seed_torch(seed + site_key(site.name) + 1)  # as the node's local-only model (pipeline)
    model = new_model(schema, encoder.stats, encoder.n_inputs)
    _train(
        model,
        encoder.transform(site.train),
        encode_target(site.train, schema),
        result,
        encoder.stats,
        seed + site_key(site.name) + 1,
        max(steps.get(site.name, 0), 1),
        budget,
    )
    scored = _score(model, {s.name: encoder for s in sites}, encoder.stats, sites, result)
    return {"all_test_rows": scored["global"], "own_test_rows": scored["hospitals"][site.name]}


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


def run_baselines(result: StudyResult) -> dict[str, Any]:
    """Train and score the pooled and local-only baselines for a finished federated study.

    Never raises: a baseline that cannot run (for one site, or at all) is listed under
    ``not_run`` with its reason, and an evaluation-only site gets no local model (it never
    trains) but its test rows score every baseline.
    """
    study = result.study
    not_run: dict[str, str] = {}
    sites = _sites(result, not_run)
    steps = _steps_per_hospital(result)
    encoders = _encoders(result, sites)
    budget = _dp_budget(result)
    total = sum(steps.values())
    out: dict[str, Any] = {"pooled": {"global": {}, "hospitals": {}}}
    try:
        out["pooled"] = _pooled(result, sites, encoders, total, budget)
        if budget is not None:
            out["pooled"]["privacy"] = f"DP-SGD at epsilon {budget[0]:g}, delta {budget[1]:g}"
            out["pooled_non_private"] = {
                "privacy": "none (not private)",
                **_pooled(result, sites, encoders, total, None),
            }
    except Exception as exc:  # noqa: BLE001 - reported, the study's results are kept
        not_run["pooled"] = f"could not run: {_first_line(exc)}"
    out["local"] = _local(result, sites, encoders, steps, budget, not_run)
    out["rule"] = "equal SGD steps"
    out["normalisation"] = study["preprocessing"]["normalisation"]
    out["not_run"] = not_run
    return out


def _mean(metrics: list[dict[str, float]]) -> dict[str, float]:
    keys = metrics[0].keys() if metrics else []
    return {k: float(np.nanmean([m.get(k, math.nan) for m in metrics])) for k in keys}
