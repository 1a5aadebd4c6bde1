"""Disclosure control on replies: small test classes withhold every evaluation statistic, round-0
cells below min_cell_count are zero, and the audit summary holds no cell value."""

from __future__ import annotations

import json

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from hypothesis import given
from hypothesis import strategies as st

from medfed.client.disclosure import (
    class_counts,
    coarsen_histograms,
    protect_evaluation,
    protect_statistics,
    sent_summary,
    small,
    suppress_counts,
)


def _binary(tp: int, fn: int, tn: int, fp: int) -> MetricRecord:
    return MetricRecord(
        {
            "num-examples": 40,
            "eval-n": float(tp + fn + tn + fp),
            "eval-tp": float(tp),
            "eval-fn": float(fn),
            "eval-tn": float(tn),
            "eval-fp": float(fp),
            "eval-hist_pos": [0.0, 2.0, 1.0],
            "eval-hist_neg": [10.0, 6.0, 4.0],
            "eval-loss_sum": 7.5,
        }
    )


def _reply(task_identity, records: RecordDict) -> Message:
    request = Message(RecordDict(), dst_node_id=1, message_type="train")
    return Message(records, reply_to=request)


def test_class_counts_by_kind():
    assert class_counts(_binary(2, 1, 15, 5)) == [3.0, 20.0]
    confusion = MetricRecord({"eval-confusion": [1, 2, 0, 3, 4, 0, 0, 0, 9], "eval-n": 19.0})
    assert class_counts(confusion) == [3.0, 7.0, 9.0]
    assert class_counts(MetricRecord({"eval-n": 4.0, "eval-sum_y": 10.0})) == [4.0]
    assert class_counts(MetricRecord({"num-examples": 3})) == []


def test_small_means_one_to_k_minus_one_cases():
    assert small([3, 20], 5) and small([4], 5)
    assert not small([5, 20], 5) and not small([0, 20], 5)


def test_three_positives_withhold_every_evaluation_statistic(task_identity):
    reply = _reply(task_identity, RecordDict({"metrics": _binary(2, 1, 15, 5)}))
    reply, suppressed = protect_evaluation(reply, 5)
    metrics = reply.content.metric_records["metrics"]
    assert suppressed
    assert all(
        v == 0 for k, v in metrics.items() if k.startswith("eval-") and not isinstance(v, list)
    )
    assert metrics["eval-hist_pos"] == [0.0, 0.0, 0.0] and metrics["num-examples"] == 40
    assert sorted(metrics) == sorted(_binary(2, 1, 15, 5))  # same keys: aggregation still works


def test_five_positives_are_sent_as_they_are(task_identity):
    reply = _reply(task_identity, RecordDict({"metrics": _binary(4, 1, 15, 5)}))
    reply, suppressed = protect_evaluation(reply, 5)
    assert not suppressed and reply.content.metric_records["metrics"]["eval-tp"] == 4.0


def _validation(tp: int, fn: int, tn: int, fp: int) -> dict[str, float | list[float]]:
    binary = _binary(tp, fn, tn, fp)
    return {f"val-{k[5:]}": v for k, v in binary.items() if k.startswith("eval-")}


def test_a_small_validation_class_withholds_the_validation_statistics_only(task_identity):
    """Early stopping's validation split (from which the threshold is chosen) follows the same
    rule as the test split; the test statistics beside it are left alone."""
    metrics = MetricRecord({**_binary(4, 1, 15, 5), **_validation(1, 2, 9, 1)})  # 3 positives
    reply, suppressed = protect_evaluation(_reply(task_identity, RecordDict({"m": metrics})), 5)
    sent = reply.content.metric_records["m"]
    assert not suppressed and sent["eval-tp"] == 4.0
    assert sent["val-tp"] == sent["val-fn"] == sent["val-n"] == 0.0
    assert sent["val-hist_pos"] == [0.0, 0.0, 0.0] and sorted(sent) == sorted(metrics)
    assert class_counts(metrics, "val-") == [3.0, 10.0]


def test_validation_histograms_are_coarsened_like_the_test_ones(task_identity):
    metrics = MetricRecord(_validation(5, 5, 10, 10))  # classes of 10 and 20: sent
    reply, _ = protect_evaluation(_reply(task_identity, RecordDict({"m": metrics})), 5)
    sent = reply.content.metric_records["m"]
    assert sent["val-tp"] == 5.0
    assert (sent["val-hist_pos"], sent["val-hist_neg"]) == coarsen_histograms(
        [0.0, 2.0, 1.0], [10.0, 6.0, 4.0], 5
    )


def test_round0_small_classes_and_binary_cells_are_coarsened():
    stats = {
        "categorical": {},
        "target": {"kind": "binary", "classes": [40, 3]},
        "binary": {
            "smoker": {"count": 43, "sum": 2.0, "sumsq": 2.0, "missing": 0},
            "male": {"count": 43, "sum": 41.0, "sumsq": 41.0, "missing": 0},
            "fbs": {"count": 43, "sum": 10.0, "sumsq": 10.0, "missing": 0},
        },
    }
    out = suppress_counts(stats, 5)
    assert out["target"]["classes"] == [40, 0]
    assert (out["binary"]["smoker"]["sum"], out["binary"]["male"]["sum"]) == (0.0, 43.0)
    assert out["binary"]["fbs"]["sum"] == 10.0


def test_round0_small_missing_counts_are_sent_as_complete():
    stats = {
        "categorical": {"thal": {"categories": {"normal": 30}, "missing": 2}},
        "numeric": {
            "chol": {"count": 41, "sum": 9000.0, "sumsq": 2e6, "missing": 2},
            "age": {"count": 30, "sum": 1500.0, "sumsq": 8e4, "missing": 13},
        },
        "target": {"kind": "binary", "classes": [20, 23]},
    }
    out = suppress_counts(stats, 5)
    assert out["numeric"]["chol"]["missing"] == 0 and out["numeric"]["age"]["missing"] == 13
    assert out["categorical"]["thal"]["missing"] == 0


def test_round0_cells_below_min_cell_count_are_zero(task_identity):
    stats = {"numeric": {}, "categorical": {"thal": {"categories": {"normal": 30, "fixed": 3}}}}
    reply = _reply(
        task_identity,
        RecordDict({"site": ConfigRecord({"name": "h", "statistics-json": json.dumps(stats)})}),
    )
    sent = json.loads(
        str(protect_statistics(reply, 5).content.config_records["site"]["statistics-json"])
    )
    assert sent["categorical"]["thal"]["categories"] == {"normal": 30, "fixed": 0}


def test_the_audit_summary_holds_structure_and_counts_only(task_identity):
    arrays = ArrayRecord({"float32": Array(np.arange(6, dtype=np.float32))})
    reply = _reply(
        task_identity,
        RecordDict(
            {
                "arrays": arrays,
                "metrics": MetricRecord({"num-examples": 40, "eval-tp": 3.0, "epsilon": 1.25}),
            }
        ),
    )
    summary = sent_summary(reply)
    assert summary["arrays"]["arrays"]["float32"]["shape"] == [6]
    assert summary["array_bytes"] == summary["arrays"]["arrays"]["float32"]["bytes"] > 24
    assert summary["metrics"]["metrics"] == {
        "keys": ["epsilon", "eval-tp", "num-examples"],
        "num-examples": 40,
        "epsilon": 1.25,
    }


def test_a_non_finite_epsilon_is_recorded_as_text(task_identity):
    reply = _reply(
        task_identity,
        RecordDict({"metrics": MetricRecord({"num-examples": 4, "epsilon": float("inf")})}),
    )
    assert sent_summary(reply)["metrics"]["metrics"]["epsilon"] == "inf"


def test_score_histograms_merge_adjacent_bins_until_no_small_cell_is_left():
    """Hand-computed with min_cell 5: bins 0-2 hold 6 positives and 6 negatives (bin 0's single
    positive is a small cell), bins 3-5 hold 8 and 6; each group's cases go to its middle bin."""
    pos, neg = coarsen_histograms([1, 0, 5, 2, 0, 6], [6, 0, 0, 3, 3, 0], 5)
    assert pos == [0, 6, 0, 0, 8, 0] and neg == [0, 6, 0, 0, 6, 0]


def test_a_small_tail_joins_the_groups_before_it():
    """The tail (2 positives) first joins bin 1 (no positives: still small), then bin 0."""
    pos, neg = coarsen_histograms([5, 0, 2], [5, 5, 0], 5)
    assert pos == [0, 7, 0] and neg == [0, 10, 0]


@given(
    st.lists(st.tuples(st.integers(0, 9), st.integers(0, 9)), min_size=1, max_size=40),
    st.integers(1, 8),
)
def test_coarsened_histograms_keep_every_case_and_leave_no_small_cell(bins, min_cell):
    pos, neg = [float(p) for p, _ in bins], [float(n) for _, n in bins]
    out_pos, out_neg = coarsen_histograms(pos, neg, min_cell)
    assert sum(out_pos) == sum(pos) and sum(out_neg) == sum(neg)
    if sum(pos) >= min_cell and sum(neg) >= min_cell:  # else the whole reply is zeroed anyway
        assert not [c for c in out_pos + out_neg if 0 < c < min_cell]
