"""The hospital node's Flower ClientApp: a thin adapter between Messages and :mod:`.node`.

Message types and records (every engine, every task):

=================  ===========================================  ==================================
message            content from the server                      reply
=================  ===========================================  ==================================
``query.stats``    ConfigRecord ``study``: ``config-json``      ConfigRecord ``site`` (name,
                                                                statistics-json), MetricRecord
                                                                ``counts`` (num-examples, num-test)
``query.prepare``  ConfigRecord ``study``: ``statistics-json``  MetricRecord ``counts``
``train``          ArrayRecord ``arrays``, ConfigRecord         ArrayRecord ``arrays``,
                   ``config`` (server-round, proximal-mu)       MetricRecord ``metrics``
``evaluate``       ArrayRecord ``arrays``, ConfigRecord         MetricRecord ``metrics``
=================  ===========================================  ==================================

The weights travel packed (:mod:`medfed.models.flat`): the ArrayRecord holds one flat vector per
dtype (e.g. ``float32``), the model's state_dict concatenated in order; both ends know the layout
from the model they build.
"""

from __future__ import annotations

import json

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from medfed.client import node, privacy_round
from medfed.client.central_dp import central_clipping_mod
from medfed.client.governance import governance_mod
from medfed.client.guard import reply_guard
from medfed.client.secagg import secure_aggregation_mod
from medfed.models import pipeline
from medfed.models.flat import pack, unpack

app = ClientApp(mods=[reply_guard, governance_mod])  # governance: approval, audit, disclosure

_STATE = "medfed-study"


def _index(context: Context) -> int:
    """The hospital's position in the study's federation (see :func:`node.site_index`)."""
    return node.site_index(context.node_config)


def _study(context: Context) -> tuple[str, str]:
    """The configuration and statistics JSON this node received in round 0."""
    if _STATE not in context.state.config_records:
        raise RuntimeError("this node has no study configuration for the run: the server must "
                           "send round 0 (query.stats and query.prepare) before training")
    record = context.state.config_records[_STATE]
    return str(record["config-json"]), str(record.get("statistics-json", ""))


@app.query("stats")
def stats(msg: Message, context: Context) -> Message:
    """Round 0: keep the study configuration; reply with this site's additive statistics."""
    config_json = node.local_study(str(msg.content.config_records["study"]["config-json"]),
                                   context.node_config)
    torch.set_num_threads(int(json.loads(config_json).get("threads", 1)))
    name, n_train, n_test, statistics = node.site_summary(config_json, _index(context))
    context.state.config_records[_STATE] = ConfigRecord({"config-json": config_json})
    return Message(RecordDict({
        "site": ConfigRecord({"name": name, "statistics-json": json.dumps(statistics)}),
        "counts": MetricRecord({"num-examples": n_train, "num-test": n_test}),
    }), reply_to=msg)


@app.query("prepare")
def prepare(msg: Message, context: Context) -> Message:
    """Round 0: keep the global statistics the server merged from every site."""
    config_json, _ = _study(context)
    statistics_json = str(msg.content.config_records["study"]["statistics-json"])
    context.state.config_records[_STATE] = ConfigRecord(
        {"config-json": config_json, "statistics-json": statistics_json})
    site = node.prepared_site(config_json, statistics_json, _index(context))
    return Message(RecordDict({"counts": MetricRecord(
        {"num-examples": len(site.y_train), "num-test": len(site.y_test)})}), reply_to=msg)


def _received_model(msg: Message, context: Context):
    """The study, the encoded site, the schema, and a model holding the received weights."""
    config_json, statistics_json = _study(context)
    study, schema, stats = node.study_parts(config_json, statistics_json)
    site = node.prepared_site(config_json, statistics_json, _index(context))
    model = pipeline.new_model(schema, stats, site.x_train.shape[1])
    received = msg.content.array_records["arrays"].to_torch_state_dict()
    model.load_state_dict(unpack(received, model.state_dict()))
    return study, schema, site, stats, model


def _evaluation(model, site, schema, study, stats) -> dict:
    """Test statistics of the received model, keys prefixed ``eval-``."""
    test = pipeline.test_statistics(model, site.x_test, site.y_test, schema, stats,
                                    int(study["evaluate"]["auroc_bins"]))
    return {f"eval-{key}": value for key, value in test.items()}


@app.train(mods=[secure_aggregation_mod, central_clipping_mod])  # each acts only when on
def train(msg: Message, context: Context) -> Message:
    """Evaluate the received global model (when due), train locally, reply with the weights."""
    study, schema, site, stats, model = _received_model(msg, context)
    config = msg.content.config_records["config"]
    server_round = int(config["server-round"])
    metrics: dict = {"num-examples": len(site.y_train)}
    if (server_round - 1) % int(study["evaluate"]["every"]) == 0:
        metrics.update(_evaluation(model, site, schema, study, stats))
    seed = pipeline.round_seed(int(study["seed"]), _index(context), server_round)
    metrics.update(privacy_round.train_round(
        model, site, schema, study, stats, seed=seed, server_round=server_round,
        proximal_mu=float(config.get("proximal-mu", 0.0)),
        cohort_size=int(config.get("cohort-size", 0)), delta=float(config.get("dp-delta", 0.0))))
    return Message(RecordDict({"arrays": ArrayRecord(pack(model.state_dict())),
                               "metrics": MetricRecord(metrics)}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the received global model on this site's test split."""
    study, schema, site, stats, model = _received_model(msg, context)
    metrics: dict = {"num-examples": len(site.y_test)}
    metrics.update(_evaluation(model, site, schema, study, stats))
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
