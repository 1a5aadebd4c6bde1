"""Secure aggregation of one train round with Flower's SecAgg+: the server sees only a masked sum.

Flower 1.41 runs SecAgg+ only on its legacy stack, so this module is the one place that touches
it. :func:`secure_train_round` takes the train messages medfed's strategy configured (the same
hospitals, weights and round config), gives them to Flower's ``SecAggPlusWorkflow`` as FitIns
through a per-round ``LegacyContext`` and a one-round legacy strategy (:class:`_RoundStrategy`),
and keeps what the workflow unmasks. The hospital's side is :mod:`medfed.client.secagg`.

What the server receives from a hospital, stage by stage: two public keys (setup); its shares of
two secrets, each encrypted for the hospital meant to hold it (share keys); the masked vector
(collect): its quantised weighted weights plus a private mask and pairwise masks, mod
``modulus_range``, uniformly spread for anyone who cannot remove the masks; shares of the other
hospitals' secrets, which only unmask the *sum* (unmask). Only that sum is ever decoded.

Aggregation (exact FedAvg up to quantisation). Hospital k uploads ``q_k = round(n_k / W * T)``
(``W`` = the largest training set of the study, ``T`` = ``quantization_range``) and its weights
times ``q_k / T``, clipped to +-``clipping_range`` ``c`` and stochastically rounded to ``T``
levels; the unmasked sum divided by ``sum q_k`` is ``sum n_k w_k / sum n_k``. Each hospital's
rounding moves a weight by less than one level ``2c/T``, so each aggregated weight is within
``2 c K / sum q_k ~= 2 c K W / (T sum n_k)`` of plain FedAvg (K hospitals; ~3e-5 for c=8, T=2^22,
four hospitals of 120-1200 rows). A node refuses rather than letting a weight be clipped. The
average is then handed to medfed's strategy as a single reply of weight ``sum n_k``: FedAvg and
FedProx return it unchanged, FedAdam/FedYogi/FedAdagrad/FedAvgM apply their server optimiser to it,
exactly as they do to the average of separate replies. Robust aggregators (median, trimmed mean,
Krum) need each hospital's update and are refused by :func:`config_error`.

Per-hospital statistics travel in plain next to the masked vector, in the MetricRecord
``metrics`` the node's reply guard whitelists (example count, test statistics of the received
global model, training loss sum and steps, epsilon and delta): additive aggregates, never weights.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.common import FitIns, FitRes, Parameters, Scalar, parameters_to_ndarrays
from flwr.common.constant import ErrorCode
from flwr.compat.common import recorddict_compat as compat
from flwr.server import ClientManager, LegacyContext
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.strategy import Strategy as LegacyStrategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from medfed.infra.records import scalar
from medfed.models.ingest.sources import federation_size

LINEAR_STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad", "fedavgm")
ARRAY_NAMES = "array-names"  # FitIns config key: the model's layer names (legacy Parameters
#                              carry none)


def workflow(cfg: dict[str, Any], max_weight: float, timeout: float | None) -> SecAggPlusWorkflow:
    """Flower's SecAgg+ workflow with the ``secagg`` settings (Flower checks them)."""
    return SecAggPlusWorkflow(
        num_shares=cfg["num_shares"],
        reconstruction_threshold=cfg["reconstruction_threshold"],
        max_weight=float(max_weight),
        clipping_range=float(cfg["clipping_range"]),
        quantization_range=cfg["quantization_range"],
        modulus_range=cfg["modulus_range"],
        timeout=timeout,
    )


def config_error(study: dict[str, Any]) -> str | None:
    """Why the study's secure-aggregation settings cannot run, in one sentence, or None."""
    if not study.get("secure_aggregation"):
        return None
    name = study["strategy"]["name"]
    if name not in LINEAR_STRATEGIES:
        return (
            f"strategy={name} needs each hospital's own update, which "
            f"secure_aggregation=true hides from the server; use one of "
            f"{', '.join(LINEAR_STRATEGIES)} or secure_aggregation=false"
        )
    if federation_size(study["federation"]) < 2:
        return "secure_aggregation=true needs at least 2 hospitals (it hides one among the others)"
    cfg = study.get("secagg")
    keys = (
        "num_shares",
        "reconstruction_threshold",
        "clipping_range",
        "quantization_range",
        "modulus_range",
    )
    if not isinstance(cfg, dict) or any(key not in cfg for key in keys):
        return f"secure_aggregation=true needs a secagg section with {', '.join(keys)}"
    if not isinstance(cfg["clipping_range"], int | float) or not cfg["clipping_range"] > 0:
        return f"secagg.clipping_range must be a positive number, got {cfg['clipping_range']!r}"
    try:
        workflow(cfg, 1.0, None)
    except (TypeError, ValueError) as exc:
        return f"secagg: {str(exc).replace('`', '')}"
    return None


class _RoundStrategy(LegacyStrategy):
    """The legacy strategy of one secure round: medfed's train messages as FitIns; keeps the
    unmasked example-weighted average the workflow passes to ``aggregate_fit``."""

    def __init__(self, messages: list[Message], grid: Grid) -> None:
        self.instructions: list[tuple[ClientProxy, FitIns]] = [
            (GridClientProxy(m.metadata.dst_node_id, grid, grid.run.run_id), _fitins(m))
            for m in messages
        ]
        self.average: Parameters | None = None

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        return self.instructions

    def aggregate_fit(
        self, server_round: int, results: list[tuple[ClientProxy, FitRes]], failures: list[Any]
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        if results:  # every result carries the same unmasked average
            self.average = results[0][1].parameters
        return self.average, {}

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return None

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, Any]]:
        return []

    def aggregate_evaluate(
        self, server_round: int, results: list[Any], failures: list[Any]
    ) -> tuple[float | None, dict[str, Scalar]]:
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters) -> None:
        return None


def _fitins(message: Message) -> FitIns:
    arrays = message.content.array_records["arrays"]
    config = dict(message.content.config_records["config"])
    return FitIns(
        compat.arrayrecord_to_parameters(arrays, keep_input=True),
        {**config, ARRAY_NAMES: list(arrays)},  # type: ignore[dict-item]
    )


class _Recorder:
    """Passes the workflow's messages to the grid and keeps, per hospital, what the study records:
    its first error reply, or the plain ``metrics`` of its masked-vector reply."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid
        self.errors: dict[int, Message] = {}
        self.metrics: dict[int, MetricRecord] = {}

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        from medfed.infra.polling import send_and_receive

        replies = send_and_receive(self.grid, messages, timeout)
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                self.errors.setdefault(node, reply)
            elif "metrics" in reply.content.metric_records:
                self.metrics[node] = reply.content.metric_records["metrics"]
        return replies


def secure_train_round(
    grid: Grid,
    strategy: Strategy,
    messages: list[Message],
    server_round: int,
    study: dict[str, Any],
    hospitals: dict[int, dict[str, Any]],
) -> tuple[list[Message], ArrayRecord | None]:
    """Run one train round under SecAgg+; return a reply per hospital and the aggregate.

    The replies are what the study records: each hospital's plain ``metrics`` (as if it had
    answered the train message) or its error; when the protocol halts (fewer than the
    reconstruction threshold took part in every stage) every hospital without an error of its own
    gets one saying so, and the aggregate is None.
    """
    messages = list(messages)
    if not messages:
        return [], None
    context = LegacyContext(
        Context(
            run_id=grid.run.run_id, node_id=0, node_config={}, state=RecordDict(), run_config={}
        ),
        strategy=_RoundStrategy(messages, grid),
    )
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord(
        {Key.CURRENT_ROUND: server_round}
    )
    context.state.array_records[MAIN_PARAMS_RECORD] = messages[0].content.array_records["arrays"]
    recorder = _Recorder(grid)
    largest = max(h["n_train"] for h in hospitals.values())
    workflow(study["secagg"], largest, float(study["timeout"]))(recorder, context)  # type: ignore
    average = context.strategy.average  # type: ignore[attr-defined]
    replies = _replies(messages, recorder, halted=average is None)
    if average is None:
        return replies, None
    template = messages[0].content.array_records["arrays"]
    arrays = ArrayRecord(
        {
            name: Array(np.asarray(value, dtype=template[name].numpy().dtype))
            for name, value in zip(template, parameters_to_ndarrays(average), strict=True)
        }
    )
    total = sum(float(scalar(m["num-examples"])) for m in recorder.metrics.values())
    single = Message(
        RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": total})}),
        reply_to=messages[0],
    )
    aggregated, _ = strategy.aggregate_train(server_round, [single])
    return replies, aggregated


def _replies(messages: list[Message], recorder: _Recorder, halted: bool) -> list[Message]:
    reason = (
        "secure aggregation halted: fewer hospitals than secagg.reconstruction_threshold "
        "took part in every SecAgg+ stage; the round's updates could not be unmasked"
    )
    replies = []
    for sent in messages:
        node = sent.metadata.dst_node_id
        if node in recorder.metrics and not halted:  # its masked vector is in the sum
            replies.append(Message(RecordDict({"metrics": recorder.metrics[node]}), reply_to=sent))
        elif node in recorder.errors:
            replies.append(recorder.errors[node])
        elif halted:
            replies.append(Message(Error(code=ErrorCode.UNKNOWN, reason=reason), reply_to=sent))
    return replies
