"""Disclosure control on what a node sends: small cells never leave it exactly.

The node policy's ``min_cell_count`` (default 5) applies to

* round 0: category counts and training class counts below it are sent as 0, and a binary
  feature with fewer ones (or zeros) than that as if it had none (or only ones) -- whatever
  ``preprocessing.min_cell`` the coordinator asked for: the stricter of the two wins;
* test-set evaluation statistics: when a class of the node's test split (positives or negatives
  of a binary target, a row of a multiclass confusion matrix, or the rows of a continuous one)
  holds between 1 and ``min_cell_count - 1`` cases, *every* ``eval-*`` statistic of the reply
  is sent as 0. Sensitivity, specificity, the AUROC histograms and the calibration sums of such
  a split would single out those few patients (3 positives give a sensitivity of 0, 1/3, 2/3 or
  1, and the histograms place each of them). The coordinator then reports that site's metrics
  as suppressed and leaves it out of the global metrics; the keys stay, so aggregation works;
* validation statistics (``val-*``, early stopping's split of the training rows, from which
  the decision threshold is chosen): the same rule, on the validation split's classes; the
  coordinator then validates without this site.

:func:`sent_summary` describes a reply for the audit log without any value but counts and
epsilon: record names, array names, shapes, dtypes and bytes, metric keys.
"""

from __future__ import annotations

import json
import math
from typing import Any

from flwr.app import Message, MetricRecord, RecordDict

from medfed.infra.records import scalar
from medfed.models.encoding import suppress_small_cells

COUNTS = ("num-examples", "num-test", "train-examples", "train-steps", "epsilon", "delta")


def _cell(count: float, min_cell: int) -> bool:
    return 0 < count < min_cell


def suppress_counts(stats: dict[str, Any], min_cell: int) -> dict[str, Any]:
    """Round-0 statistics with every small cell coarsened: category counts and training class
    counts below ``min_cell`` become 0, a binary feature with fewer than ``min_cell`` ones
    (or zeros) is sent as if it had none (or only ones), and a feature missing in fewer than
    ``min_cell`` rows is sent as complete (its mean and spread come from the rows present)."""
    stats = suppress_small_cells(stats, min_cell)
    target = stats.get("target") or {}
    if "classes" in target:
        target["classes"] = [0 if _cell(n, min_cell) else n for n in target["classes"]]
    for feature in (stats.get("binary") or {}).values():
        ones, count = feature["sum"], feature["count"]
        if _cell(ones, min_cell):
            feature["sum"] = feature["sumsq"] = 0.0
        elif _cell(count - ones, min_cell):
            feature["sum"] = feature["sumsq"] = float(count)
    for group in ("numeric", "binary", "categorical"):
        for feature in (stats.get(group) or {}).values():
            if _cell(feature.get("missing", 0), min_cell):
                feature["missing"] = 0
    return stats


def protect_statistics(reply: Message, min_cell: int) -> Message:
    """The round-0 reply with its small cells coarsened (:func:`suppress_counts`)."""
    site = reply.content.config_records.get("site")
    if site is None:
        return reply
    stats = suppress_counts(json.loads(str(site["statistics-json"])), min_cell)
    site["statistics-json"] = json.dumps(stats)
    return reply


def class_counts(metrics: MetricRecord, prefix: str = "eval-") -> list[float]:
    """The cases per class behind a reply's ``eval-*`` statistics (test split), or those of
    another ``prefix`` (``val-``: the validation split); empty when none are sent."""
    if f"{prefix}tp" in metrics:
        return [
            float(scalar(metrics[f"{prefix}tp"])) + float(scalar(metrics[f"{prefix}fn"])),
            float(scalar(metrics[f"{prefix}tn"])) + float(scalar(metrics[f"{prefix}fp"])),
        ]
    if f"{prefix}confusion" in metrics:
        cells = [float(v) for v in metrics[f"{prefix}confusion"]]  # type: ignore[union-attr]
        k = math.isqrt(len(cells))
        return [sum(cells[i * k : (i + 1) * k]) for i in range(k)]
    if f"{prefix}n" in metrics:
        return [float(metrics[f"{prefix}n"])]  # type: ignore[arg-type]
    return []


def small(counts: list[float], min_cell: int) -> bool:
    """True when some class holds between 1 and ``min_cell - 1`` cases."""
    return any(0 < count < min_cell for count in counts)


def _zeroed(metrics: MetricRecord, prefix: str = "eval-") -> MetricRecord:
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        if key.startswith(prefix):
            value = [0 * v for v in value] if isinstance(value, list) else 0 * value
        out[key] = value
    return MetricRecord(out)


def coarsen_histograms(
    pos: list[float], neg: list[float], min_cell: int
) -> tuple[list[float], list[float]]:
    """The score histograms behind AUROC and calibration with no bin of 1 to ``min_cell - 1``
    cases: adjacent bins merge, left to right, until each group's positives and negatives are
    each 0 or at least ``min_cell``; a group's cases go to its middle bin, the rest of the group
    is 0 (a short small tail joins the group before it). Both histograms share the groups, so
    AUROC stays a valid (coarser) rank statistic: pairs within a group count half."""
    groups: list[tuple[int, int]] = []
    start = 0
    for end in range(len(pos)):
        group_pos, group_neg = sum(pos[start : end + 1]), sum(neg[start : end + 1])
        if not (_cell(group_pos, min_cell) or _cell(group_neg, min_cell)):
            groups.append((start, end))
            start = end + 1
    if start < len(pos):  # a tail with small cells joins the groups before it until it is not
        groups.append((start, len(pos) - 1))
        while len(groups) > 1 and _small_group(pos, neg, groups[-1], min_cell):
            groups[-2:] = [(groups[-2][0], groups[-1][1])]
    out_pos, out_neg = [0.0] * len(pos), [0.0] * len(neg)
    for first, last in groups:
        middle = (first + last) // 2
        out_pos[middle] = float(sum(pos[first : last + 1]))
        out_neg[middle] = float(sum(neg[first : last + 1]))
    return out_pos, out_neg


def _small_group(pos: list[float], neg: list[float], group: tuple[int, int], min_cell: int) -> bool:
    first, last = group
    positives, negatives = sum(pos[first : last + 1]), sum(neg[first : last + 1])
    return _cell(positives, min_cell) or _cell(negatives, min_cell)


def _coarsened(metrics: MetricRecord, min_cell: int, prefix: str = "eval-") -> MetricRecord:
    out = dict(metrics)
    if f"{prefix}hist_pos" in out and f"{prefix}hist_neg" in out:
        pos = [float(v) for v in out[f"{prefix}hist_pos"]]  # type: ignore[union-attr]
        neg = [float(v) for v in out[f"{prefix}hist_neg"]]  # type: ignore[union-attr]
        out[f"{prefix}hist_pos"], out[f"{prefix}hist_neg"] = coarsen_histograms(pos, neg, min_cell)
    return MetricRecord(out)


def protect_evaluation(reply: Message, min_cell: int) -> tuple[Message, bool]:
    """The reply with its test statistics (``eval-``) zeroed when a test class is a small cell,
    and otherwise their score histograms coarsened (:func:`coarsen_histograms`); the same for
    the validation statistics of early stopping (``val-``, which the decision threshold is
    chosen from). Returns the reply and whether its test statistics were zeroed."""
    suppressed = False
    for name, metrics in list(reply.content.metric_records.items()):
        for prefix in ("eval-", "val-"):
            if small(class_counts(metrics, prefix), min_cell):
                metrics = _zeroed(metrics, prefix)
                suppressed = suppressed or prefix == "eval-"
            else:
                metrics = _coarsened(metrics, min_cell, prefix)
        reply.content.metric_records[name] = metrics
    return reply, suppressed


def _json_number(value: Any) -> Any:
    """A value the audit chain can hash: a non-finite float becomes its string (``inf``)."""
    return str(value) if isinstance(value, float) and not math.isfinite(value) else value


def sent_summary(reply: Message) -> dict[str, Any]:
    """What ``reply`` carries, for the audit log: structure, counts and epsilon, no cell value."""
    content: RecordDict = reply.content
    arrays: dict[str, dict[str, dict[str, Any]]] = {
        name: {
            key: {"shape": list(array.shape), "dtype": str(array.dtype), "bytes": len(array.data)}
            for key, array in record.items()
        }
        for name, record in content.array_records.items()
    }
    metrics = {
        name: {
            "keys": sorted(record),
            **{key: _json_number(record[key]) for key in COUNTS if key in record},
        }
        for name, record in content.metric_records.items()
    }
    configs = {name: sorted(record) for name, record in content.config_records.items()}
    total = sum(int(a["bytes"]) for record in arrays.values() for a in record.values())
    return {"arrays": arrays, "array_bytes": total, "metrics": metrics, "configs": configs}
