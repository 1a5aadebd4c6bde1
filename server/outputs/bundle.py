"""The coordinator's half of the model bundle: ``<run dir>/model/`` written at the end of a study.

:func:`write_model_bundle` gathers from the study's result what scoring needs (weights, schema,
statistics, threshold) and the model card, and signs the bundle
(:func:`medfed.models.bundle.write_bundle`). The key: the coordinator's ``signing.key`` when the
environment names one in :data:`SIGNING_KEY_ENV` (``medfed coordinator start`` sets it for the
SuperLink, so every deployed study is signed by the coordinator), otherwise a key pair created for
this run whose private half is dropped once the bundle is signed (a simulated study).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

from medfed.infra.files import json_safe
from medfed.models.calibration import brier_score, f1_optimal_threshold
from medfed.models.encoding import Encoder, merge_statistics
from medfed.models.release.bundle import CARD_JSON, CARD_MD, PREPROCESSING, WEIGHTS, write_bundle
from medfed.models.release.model_card import (
    OUT_OF_SCOPE,
    card_markdown,
    class_balance,
    privacy_guarantee,
)
from medfed.models.release.signing import SIGNING_KEY_ENV, load_private, new_key
from medfed.server.study.loop import GLOBAL, StudyResult

BUNDLE_DIR = "model"
DEFAULT_THRESHOLD = 0.5
NO_VALIDATION = (
    "0.5 by default: the study had no validation split to choose one on "
    "(early_stopping.patience sets one aside)"
)
VALIDATION = (
    "F1-optimal on the validation split: F1 {f1:.3f} over {rows} held-out training rows of "
    "the sites, scored with the model of round {best} and counted from the score histograms "
    "the sites summed, small cells coarsened at each node: no row's score left its node"
)


def _versions() -> dict[str, str]:
    out = {}
    for package in ("medfed", "torch", "flwr", "opacus"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "not installed"
    return out


def source_id() -> str:
    """The git commit of medfed's source (``+dirty`` with local changes), else a hash of its
    installed Python files (``package sha256:...``)."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "*.py"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return f"git commit {commit}{'+dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        digest = hashlib.sha256()
        for path in sorted(root.rglob("*.py")):
            digest.update(path.relative_to(root).as_posix().encode() + path.read_bytes())
        return f"package sha256:{digest.hexdigest()}"


def _site_statistics(result: StudyResult) -> dict[str, Any]:
    """Each site's own statistics (per-site normalisation), from its round-0 summary: the same
    values its node encoded with (``own_statistics`` of its training split)."""
    min_cell = int(result.study["preprocessing"]["min_cell"])
    return {
        h["name"]: merge_statistics([h["statistics"]], min_cell=min_cell).to_dict()
        for h in result.hospitals.values()
        if "statistics" in h
    }


def _threshold(result: StudyResult) -> dict[str, Any]:
    """The decision threshold and how it was chosen: F1-optimal on the federation's validation
    split when the study had one (early stopping), else 0.5, saying why."""
    if not result.early_stopping:
        return {"threshold": DEFAULT_THRESHOLD, "threshold_source": NO_VALIDATION}
    chosen = result.early_stopping.get("threshold") or {}
    if chosen.get("value") is None:
        reason = chosen.get("reason", "no site sent validation statistics")
        return {
            "threshold": DEFAULT_THRESHOLD,
            "threshold_source": f"0.5 by default: the validation split could not choose one: "
            f"{reason}",
            "validation": chosen,
        }
    source = VALIDATION.format(
        f1=chosen["f1"],
        rows=int(chosen["rows"]),
        best=result.early_stopping.get("best_round"),
    )
    return {"threshold": chosen["value"], "threshold_source": source, "validation": chosen}


def _decision(result: StudyResult) -> dict[str, Any]:
    """The stored threshold (:func:`_threshold`) and, as information, the F1-optimal one on
    the test rows, plus the Brier score."""
    if result.schema.target.kind != "binary":
        return {}
    decision: dict[str, Any] = _threshold(result)
    stats = result.final.statistics.get(GLOBAL)
    if stats:
        threshold, f1 = f1_optimal_threshold(stats["hist_pos"], stats["hist_neg"])
        decision["f1_optimal_on_test"] = {"threshold": threshold, "f1": f1}
        decision["brier"] = brier_score(stats)
    return decision


def preprocessing(result: StudyResult) -> dict[str, Any]:
    """The content of ``preprocessing.json``: everything to encode a raw row as in training."""
    study, stats = result.study, result.statistics
    indicators = bool(study["preprocessing"]["missing_indicators"])
    site = study["preprocessing"]["normalisation"] == "site"
    decision = _decision(result)
    return {
        "task": study["task"],
        "normalisation": study["preprocessing"]["normalisation"],
        "missing_indicators": indicators,
        "statistics": None if site else stats.to_dict(),
        "site_statistics": _site_statistics(result) if site else {},
        "columns": list(Encoder(result.schema, stats, missing_indicators=indicators).column_names),
        "threshold": {
            "value": decision.get("threshold", DEFAULT_THRESHOLD),
            "source": decision.get("threshold_source", "not used by this task"),
        },
    }


def _benefit(result: StudyResult, summary: dict[str, Any]) -> list[dict[str, Any]]:
    local = (result.baselines or {}).get("local", {}).get("hospitals", {})
    primary = result.schema.primary_metric
    rows = []
    for site in summary["hospitals"]:
        if "own_test_rows" in local.get(site["name"], {}):  # evaluation-only sites train none
            fed = (site.get("metrics") or {}).get(primary)
            own = local[site["name"]]["own_test_rows"].get(primary)
            rows.append(
                {
                    "name": site["name"],
                    "federated": fed,
                    "local": own,
                    "benefit": None if fed is None or own is None else fed - own,
                }
            )
    return rows


def _sites(result: StudyResult, summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Each site's counts, class balance (small cells suppressed), metrics and privacy."""
    study, schema = result.study, result.schema
    min_cell = int(study["preprocessing"]["min_cell"])
    by_name = {h["name"]: h for h in result.hospitals.values()}
    central = {"central_epsilon": (result.central_dp or {}).get("epsilon")}
    secure = bool(study.get("secure_aggregation"))
    sites = []
    for site in summary["hospitals"]:
        train = by_name.get(site["name"], {}).get("statistics", {}).get("target")
        test = result.final.statistics.get(site["name"])
        sites.append({"name": site["name"], "n_train": site["n_train"], "n_test": site["n_test"],
                      "balance": class_balance(schema, train, test, min_cell),
                      "metrics": site["metrics"],
                      "privacy": privacy_guarantee(study["privacy"], {**site, **central},
                                                   secure)})  # fmt: skip
    return sites


TRAINING_KEYS = ("strategy", "rounds", "seed", "engine", "normalisation", "privacy", "study_id")


def model_card(result: StudyResult, summary: dict[str, Any], calibration: str) -> dict[str, Any]:
    """The model card (JSON form; :func:`card_markdown` renders it)."""
    schema = result.schema
    decision = _decision(result)
    if calibration:
        decision["calibration"] = calibration
    metrics = {"names": list(schema.metrics), "primary": schema.primary_metric,
               "global": summary["global"]}  # fmt: skip
    return {"task": {"name": schema.name, "target": schema.target.name,
                     "kind": schema.target.kind},
            "intended_use": schema.description or f"Predicts {schema.target.name}.",
            "out_of_scope": OUT_OF_SCOPE, "sites": _sites(result, summary), "metrics": metrics,
            "benefit": _benefit(result, summary), "decision": decision,
            "training": {k: summary[k] for k in TRAINING_KEYS}, "config": result.study,
            "versions": _versions(), "source": source_id()}  # fmt: skip


def _signing_key() -> tuple[Any, str]:
    path = os.environ.get(SIGNING_KEY_ENV)
    if path:
        return load_private(Path(path)), "coordinator"
    return new_key(), "run"


def write_model_bundle(
    result: StudyResult, summary: dict[str, Any], out: Path, calibration: str = ""
) -> Path:
    """Write and sign ``out/model/`` (see the module docstring); return its path."""
    buffer = io.BytesIO()
    torch.save({"state_dict": result.final_state}, buffer)
    card = model_card(result, summary, calibration)
    files = {
        WEIGHTS: buffer.getvalue(),
        PREPROCESSING: json.dumps(preprocessing(result), indent=2).encode(),
        CARD_JSON: json.dumps(json_safe(card), indent=2).encode(),
        CARD_MD: card_markdown(card).encode(),
    }
    key, kind = _signing_key()
    return write_bundle(out / BUNDLE_DIR, files, key, kind)
