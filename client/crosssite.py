"""The node's side of cross-site evaluation in deployment: its local-only model for others, and
others' local-only models scored on its own test rows -- each only when its own policy says so.

Two switches of the node policy (:mod:`medfed.client.policy`, both false by default):

* ``share_local_model``: a :data:`~.crosssite_guard.SHARE` request is answered with the weights of
  this hospital's local-only model (the very model of its benefit table:
  :func:`medfed.models.pipeline.local_only_model`, the same seed and steps) and the statistics it
  encodes rows with. Trained on one hospital's rows alone and without DP-SGD, those weights say
  more about the rows than the federated average does, hence the default and the refusal under
  ``require_dp``.
* ``evaluate_other_models``: an :data:`~.crosssite_guard.EVALUATE` request (another hospital's
  local-only model and its statistics) is answered with the additive test statistics of that
  model on this node's test rows; the governance mod withholds them when a test class is a small
  cell (:func:`medfed.client.disclosure.protect_evaluation`), as for every evaluation.

The node checks its *own* policy on every request: in deployment the study's ``policy`` is the
node's file (:func:`medfed.client.node.local_study`), so the coordinator cannot turn a switch on.
A refused request raises :class:`~medfed.client.privacy_round.NodeRefusal` before any model is
built: the error reply carries no weights and no metric. The round-0 reply declares both
switches (:func:`declared`) so the coordinator does not ask in vain. Every request is written to
the node's audit log by the governance mod (``cross-site`` entries; ``refusal`` with the reason).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from medfed.client import node
from medfed.client.crosssite_guard import DECLARED, EVALUATE, LOCAL, SHARE
from medfed.client.policy import check_evaluate_other, check_share, policy_for_site
from medfed.client.privacy_round import NodeRefusal
from medfed.infra.records import scalar
from medfed.models.encoding import Encoder, GlobalStats
from medfed.models.flat import pack, unpack
from medfed.models.pipeline import local_only_model, new_model, rows_test_statistics, site_key


def declared(config_json: str, site_name: str, role: str) -> dict[str, int]:
    """The round-0 declaration of the two switches (1: the node would answer such requests)."""
    policy = policy_for_site(json.loads(config_json).get("policy"), site_name)
    share = check_share(policy, role=role) is None
    evaluate = policy.evaluate_other_models
    return dict(zip(DECLARED, (int(share), int(evaluate)), strict=True))


def exchange_details(msg: Message) -> dict[str, Any]:
    """What a cross-site request is, for the node's audit log (empty for any other message)."""
    kind = msg.metadata.message_type
    if kind not in (SHARE, EVALUATE):
        return {}
    details: dict[str, Any] = {"exchange": kind.removeprefix("query.")}
    if kind == EVALUATE:
        details["model_site"] = str(msg.content.config_records["config"]["model-site"])
    return details


def for_scoring(own: GlobalStats, min_cell: int) -> GlobalStats:
    """The statistics a local-only model travels with: what scoring rows needs, no count.

    Row count, class priors and missing rates are left out (scoring does not use them), and a
    binary feature whose ones (or zeros) at this site are a small cell (1 to ``min_cell - 1``
    rows) travels with the rate 0 (or 1), as round 0 sends it
    (:func:`medfed.client.disclosure.suppress_counts`): the rate only fills a missing value at
    the scoring site, and no exact count of those few patients can be read from it.
    """
    rates = {}
    for name, rate in own.rates.items():
        present = round(own.rows * (1.0 - own.missing_rates.get(name, 0.0)))
        ones = round(rate * present)
        small_ones, small_zeros = 0 < ones < min_cell, 0 < present - ones < min_cell
        rates[name] = 0.0 if small_ones else 1.0 if small_zeros else rate
    return dataclasses.replace(own, rows=0, class_priors=(), missing_rates={}, rates=rates)


def share(msg: Message, context: Context) -> Message:
    """Reply with this hospital's local-only model and its statistics, if the policy allows."""
    config_json, statistics_json = node.received_study(context)
    study, schema, _ = node.study_parts(config_json, statistics_json)
    index = node.site_index(context.node_config)
    site = node._site(config_json, index)
    policy = policy_for_site(study.get("policy"), site.name)
    refusal = check_share(policy, role=site.role)
    if refusal is not None:
        raise NodeRefusal(refusal.reason)
    steps = int(scalar(msg.content.config_records["config"].get("local-steps", 1)))
    model, own, _ = local_only_model(site.train, schema, study, site_key(site.name), steps)
    stats = for_scoring(own, policy.min_cell_count)
    return Message(
        RecordDict(
            {
                "arrays": ArrayRecord(pack(model.state_dict())),
                LOCAL: ConfigRecord({"statistics-json": json.dumps(stats.to_dict())}),
            }
        ),
        reply_to=msg,
    )


def evaluate_other(msg: Message, context: Context) -> Message:
    """Score another hospital's local-only model on this node's test rows, if the policy allows;
    reply with the additive test statistics (``eval-*``)."""
    config_json, statistics_json = node.received_study(context)
    study, schema, _ = node.study_parts(config_json, statistics_json)
    site = node._site(config_json, node.site_index(context.node_config))
    config = msg.content.config_records["config"]
    refusal = check_evaluate_other(
        policy_for_site(study.get("policy"), site.name),
        own=site.name,
        owner=str(config["model-site"]),
    )
    if refusal is not None:
        raise NodeRefusal(refusal.reason)
    stats = GlobalStats.from_dict(json.loads(str(config["statistics-json"])))
    missing = bool(study["preprocessing"]["missing_indicators"])
    model = new_model(schema, stats, Encoder(schema, stats, missing_indicators=missing).n_inputs)
    received = msg.content.array_records["arrays"].to_torch_state_dict()
    model.load_state_dict(unpack(received, model.state_dict()))
    sums = rows_test_statistics(model, site.test, schema, stats, study)
    metrics: dict[str, int | float | list[int] | list[float]] = {"num-examples": len(site.test)}
    metrics.update({f"eval-{key}": value for key, value in sums.items()})
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
