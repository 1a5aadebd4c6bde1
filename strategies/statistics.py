"""Aggregation of the statistics hospitals report.

Every metric a medfed node sends is additive (counts, sums, sums of squares, histograms, loss
sums), so the server combines them by summing and computes each metric once from the totals.
That makes the federation-wide metric exactly the metric over all test rows together (an
average of per-site AUROCs would not be) and keeps the reply format identical for every task.
"""

from __future__ import annotations

from typing import cast

from flwr.app import MetricRecord, RecordDict
from flwr.app.typing import MetricRecordValues


def add_into(total: dict[str, float | list[float]], record: MetricRecord) -> None:
    """Add the values of ``record`` into ``total`` (scalars add, lists add element-wise)."""
    for key, value in record.items():
        if isinstance(value, list):
            if key in total:
                current = total[key]
                if not isinstance(current, list) or len(current) != len(value):
                    raise ValueError(f"metric '{key}' has a different length in two replies")
                total[key] = [a + float(b) for a, b in zip(current, value, strict=True)]
            else:
                total[key] = [float(v) for v in value]
        else:
            previous = total.get(key, 0.0)
            if isinstance(previous, list):
                raise ValueError(f"metric '{key}' is a list in one reply and a number in another")
            total[key] = previous + float(value)


def sum_metric_records(records: list[RecordDict], weighting_key: str) -> MetricRecord:
    """Sum all MetricRecords of the replies, key by key (the Flower aggregation-hook signature).

    ``weighting_key`` (``num-examples``) is summed like the rest: the total is the number of
    examples behind the aggregate.
    """
    del weighting_key
    total: dict[str, float | list[float]] = {}
    for content in records:
        for record in content.metric_records.values():
            add_into(total, record)
    # MetricRecord types its argument as a dict (invariant) of all metric values; it only reads it
    return MetricRecord(cast(dict[str, MetricRecordValues], total))
