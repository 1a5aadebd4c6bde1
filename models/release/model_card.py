"""The model card of a bundle: what the model is for, what it was trained on, how well, and under
which privacy guarantee, as JSON (for machines) and Markdown (for people).

Everything in it is an aggregate the coordinator already holds: per-site row counts, class
counts from the round-0 summaries and the final evaluation's sums, metrics and privacy spend.
Class counts below the study's ``preprocessing.min_cell`` are shown as ``<5`` (as in round 0).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from medfed.models.schema import TaskSchema

OUT_OF_SCOPE = (
    "Not for populations, sites or data exports unlike the participating sites "
    "below; not a substitute for clinical judgement; not validated as a medical "
    "device. Rows outside the schema's valid ranges are refused, not scored."
)


def suppressed(count: float, min_cell: int) -> int | str:
    """``count`` as an int, or ``"<min_cell"`` when it is a small cell (but not zero)."""
    return f"<{min_cell}" if 0 < count < min_cell else int(count)


def class_balance(
    schema: TaskSchema,
    train: Mapping[str, Any] | None,
    test: Mapping[str, Any] | None,
    min_cell: int,
) -> dict[str, Any]:
    """Train and test counts per class (small cells suppressed), or the mean target value."""
    target = schema.target
    labels = list(target.classes) or ["0", "1"]
    out: dict[str, Any] = {}
    if target.kind == "continuous":
        if train and train.get("count"):
            out["train_mean"] = float(train["sum_y"]) / float(train["count"])
        if test and test.get("n"):
            out["test_mean"] = float(test["sum_y"]) / float(test["n"])
        return out
    if train and "classes" in train:
        out["train"] = {
            c: suppressed(n, min_cell) for c, n in zip(labels, train["classes"], strict=False)
        }
    if test and target.kind == "binary" and "tp" in test:
        counts = [test["tn"] + test["fp"], test["tp"] + test["fn"]]
        out["test"] = {c: suppressed(n, min_cell) for c, n in zip(labels, counts, strict=True)}
    elif test and "confusion" in test:
        rows = np.asarray(test["confusion"], np.float64).reshape(len(labels), -1).sum(axis=1)
        out["test"] = {c: suppressed(n, min_cell) for c, n in zip(labels, rows, strict=True)}
    return out


def privacy_guarantee(
    privacy: Mapping[str, Any], spent: Mapping[str, Any], secure_aggregation: bool
) -> dict[str, Any]:
    """One site's guarantee: mechanism and its parameters, or ``no differential privacy``."""
    name = privacy.get("name", "none")
    if name == "dpsgd":
        noise = privacy.get("noise_multiplier")
        if privacy.get("target_epsilon") is not None:
            noise = f"planned for target epsilon {privacy['target_epsilon']}"
        out = {
            "mechanism": "sample-level DP-SGD (Opacus) at the site",
            "epsilon": spent.get("epsilon"),
            "delta": spent.get("delta"),
            "accountant": privacy.get("accountant"),
            "clip_norm": privacy.get("max_grad_norm"),
            "noise_multiplier": noise,
        }
    elif name == "central":
        out = {
            "mechanism": "client-level DP at the coordinator (whole-hospital guarantee)",
            "epsilon": spent.get("central_epsilon"),
            "delta": privacy.get("delta"),
            "accountant": "rdp (Flower)",
            "clip_norm": privacy.get("clipping_norm"),
            "noise_multiplier": privacy.get("noise_multiplier"),
        }
    else:
        out = {"mechanism": "no differential privacy"}
    out["secure_aggregation"] = bool(secure_aggregation)
    return out


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows),
        "",
    ]


def _balance_text(balance: Mapping[str, Any]) -> str:
    parts = [
        f"{part}: " + ", ".join(f"{k} {v}" for k, v in balance[part].items())
        for part in ("train", "test")
        if part in balance
    ]
    parts += [
        f"{part.replace('_', ' ')} {_fmt(balance[part])}"
        for part in ("train_mean", "test_mean")
        if part in balance
    ]
    return "; ".join(parts) or "n/a"


def _privacy_text(guarantee: Mapping[str, Any]) -> str:
    if guarantee["mechanism"] == "no differential privacy":
        text = "no differential privacy: the weights carry no formal privacy guarantee"
    else:
        text = (
            f"{guarantee['mechanism']}: epsilon {_fmt(guarantee['epsilon'])} at delta "
            f"{_fmt(guarantee['delta'])} ({guarantee['accountant']} accountant), clip norm "
            f"{_fmt(guarantee['clip_norm'])}, noise multiplier "
            f"{_fmt(guarantee['noise_multiplier'])}"
        )
    return text + ("; secure aggregation" if guarantee.get("secure_aggregation") else "")


def card_markdown(card: Mapping[str, Any]) -> str:
    """The Markdown model card of :func:`medfed.server.bundle.model_card` output."""
    head = [f"# Model card: {card['task']['name']}", "", "## Intended use", "",
            card["intended_use"], "", "## Out of scope", "", card["out_of_scope"], ""]  # fmt: skip
    parts = [head, _site_lines(card), _metric_lines(card), _decision_lines(card),
             _training_lines(card)]  # fmt: skip
    return "\n".join(line for part in parts for line in part)


def _site_lines(card: Mapping[str, Any]) -> list[str]:
    rows = [[s["name"], s["n_train"], s["n_test"], _balance_text(s["balance"]),
             _privacy_text(s["privacy"])] for s in card["sites"]]  # fmt: skip
    header = ["site", "train rows", "test rows", "class balance or target mean", "privacy"]
    return ["## Participating sites", "", *_table(header, rows)]


def _metric_lines(card: Mapping[str, Any]) -> list[str]:
    metrics = list(card["metrics"]["names"])
    rows = [["all test rows together"] + [card["metrics"]["global"].get(m) for m in metrics]]
    rows += [[s["name"]] + [s["metrics"].get(m) for m in metrics] for s in card["sites"]]
    lines = ["## Metrics of the final model", "", *_table(["evaluated on", *metrics], rows)]
    if card.get("benefit"):
        primary = card["metrics"]["primary"]
        rows = [[b["name"], b["federated"], b["local"], b["benefit"]] for b in card["benefit"]]
        lines += [f"## Benefit per hospital ({primary} on its own test rows)", "",
                  *_table(["site", "federated", "local only", "benefit"], rows)]  # fmt: skip
    return lines


def _training_lines(card: Mapping[str, Any]) -> list[str]:
    training = card["training"]
    versions = ", ".join(f"{k} {v}" for k, v in card["versions"].items())
    return ["## Training", "",
            f"Strategy {training['strategy']}, {training['rounds']} rounds, seed "
            f"{training['seed']}, {training['normalisation']} normalisation, engine "
            f"{training['engine']}. The resolved configuration is in model_card.json (`config`).",
            "", f"Versions: {versions}.", "", f"Source: {card['source']}.", "",
            "Every file of this bundle is listed with its SHA-256 in manifest.json, signed with "
            "Ed25519 (manifest.sig); check it with `medfed model verify`.", ""]  # fmt: skip


def _decision_lines(card: Mapping[str, Any]) -> list[str]:
    decision = card.get("decision")
    if not decision:
        return []
    lines = [
        "## Decision threshold and calibration",
        "",
        f"`medfed predict` labels a row positive from probability {decision['threshold']:g} "
        f"up ({decision['threshold_source']}).",
    ]
    if decision.get("f1_optimal_on_test") is not None:
        best = decision["f1_optimal_on_test"]
        lines.append(
            f"On the test rows F1 would peak at threshold {best['threshold']:g} (F1 "
            f"{best['f1']:.3f}); that choice was made on test data, so it is not the "
            "default: pass `--threshold` to use it."
        )
    if decision.get("calibration"):
        lines.append(decision["calibration"])
    return [*lines, ""]
