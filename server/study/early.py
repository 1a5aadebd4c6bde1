"""Early stopping at the server: the federation's validation metric per round from the nodes'
``val-`` statistics, the best round's weights, and the last look at the final weights
(:mod:`medfed.models.holdout` has the rules)."""

from __future__ import annotations

import json
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from medfed.infra.polling import send_and_receive
from medfed.models.calibration import validation_threshold
from medfed.models.holdout import BestRound, settings
from medfed.models.metrics import metrics_from_statistics
from medfed.models.schema import TaskSchema
from medfed.strategies.statistics import add_into


class EarlyStopping:
    """Tracks the best round and keeps its weights (only when ``early_stopping.patience``)."""

    def __init__(self, study: dict[str, Any], schema: TaskSchema) -> None:
        patience, metric, _ = settings(study)
        self.schema = schema
        self.best = BestRound(metric or schema.primary_metric, int(patience or 1))
        self.arrays: ArrayRecord | None = None
        self.statistics: dict[str, Any] = {}  # the best round's summed val- statistics

    def observe(self, server_round: int, arrays: ArrayRecord, replies: list[Message]) -> None:
        """The validation metric of ``arrays`` (the model after ``server_round``) from the
        replies' summed ``val-`` statistics; keep ``arrays`` when it is the best so far."""
        total: dict[str, Any] = {}
        for reply in replies:
            if reply.has_error():
                continue
            metrics: MetricRecord = next(
                iter(reply.content.metric_records.values()), MetricRecord()
            )
            val = {k[4:]: v for k, v in metrics.items() if k.startswith("val-")}
            if val:
                add_into(total, MetricRecord(val))
        if not total:
            return
        value = metrics_from_statistics(self.schema, total)[self.best.metric]
        if self.best.observe(server_round, value):
            self.arrays, self.statistics = arrays, total

    def summary(self) -> dict[str, Any]:
        """What ``summary.json`` records under ``early_stopping``: the best round and, for a
        yes/no target, the decision ``threshold`` chosen on the validation split of the best
        round's model (:func:`~medfed.models.calibration.validation_threshold`; the model bundle
        makes it ``medfed predict``'s default)."""
        out = self.best.summary()
        if self.schema.target.kind == "binary":
            out["threshold"] = validation_threshold(self.statistics)
        return out

    def state_dict(self) -> dict[str, Any]:
        """What a resumed study needs to choose the same best round: the validation history, the
        best round and value, the best round's weights and its summed validation statistics
        (the decision threshold is chosen from them; for ``checkpoint.pt``)."""
        return {
            "statistics": json.dumps(self.statistics),
            "history": json.dumps(self.best.history),
            "best_round": -1 if self.best.best_round is None else self.best.best_round,
            "best_value": json.dumps(self.best.best_value),
            "arrays": {} if self.arrays is None else self.arrays.to_torch_state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Put :meth:`state_dict`'s output back (the patience counter follows from the history)."""
        self.best.history = [(int(r), float(v)) for r, v in json.loads(state["history"])]
        best = int(state["best_round"])
        self.best.best_round = None if best < 0 else best
        self.best.best_value = float(json.loads(state["best_value"]))
        self.arrays = ArrayRecord(dict(state["arrays"])) if state["arrays"] else None
        self.statistics = json.loads(state.get("statistics", "{}"))

    def last_look(
        self,
        grid: Grid,
        arrays: ArrayRecord,
        server_round: int,
        node_ids: list[int],
        timeout: float,
    ) -> None:
        """Validate the final weights too (they were never sent in a train message)."""
        messages = [
            Message(
                RecordDict(
                    {
                        "arrays": arrays,
                        "config": ConfigRecord(
                            {"server-round": server_round, "validation-only": 1}
                        ),
                    }
                ),
                dst_node_id=node_id,
                message_type="evaluate",
                group_id=f"{server_round}-validation",
            )
            for node_id in node_ids
        ]
        self.observe(server_round, arrays, send_and_receive(grid, messages, timeout))


def tracker(
    study: dict[str, Any], schema: TaskSchema, saved: dict[str, Any] | None = None
) -> EarlyStopping | None:
    """An :class:`EarlyStopping` when the study sets ``early_stopping.patience``; with ``saved``
    (a resumed study's checkpoint) it continues from the checkpointed state."""
    if settings(study)[0] is None:
        return None
    stopping = EarlyStopping(study, schema)
    if saved is not None:
        if "early_stopping" not in saved:
            from medfed.server.study.checkpoint import CheckpointError

            raise CheckpointError(
                f"the checkpoint in {study['resume']} holds no early-stopping state (written "
                "by an older medfed): the best round cannot be continued; start the study anew"
            )
        stopping.load_state_dict(saved["early_stopping"])
    return stopping
