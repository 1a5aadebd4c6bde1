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

Cross-site evaluation in deployment adds ``query.share_local`` (the node's local-only model, if
its policy shares it) and ``query.evaluate_other`` (another hospital's local-only model scored
here, if its policy allows): :mod:`.crosssite`.

The weights travel packed (:mod:`medfed.models.flat`): the ArrayRecord holds one flat vector per
dtype (e.g. ``float32``), the model's state_dict concatenated in order; both ends know the layout
from the model they build.
"""

from __future__ import annotations

import json

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from medfed.client import crosssite, node, node_state, personal, privacy_round, scaffold, validation
from medfed.client.central_dp import central_clipping_mod
from medfed.client.governance import governance_mod
from medfed.client.guard import reply_guard
from medfed.client.secagg import secure_aggregation_mod
from medfed.infra.records import scalar
from medfed.models import pipeline
from medfed.models.flat import pack, unpack

app = ClientApp(mods=[reply_guard, governance_mod])  # governance: approval, audit, disclosure


def _index(context: Context) -> int:
    """The hospital's position in the study's federation (see :func:`node.site_index`)."""
    return node.site_index(context.node_config)


@app.query("stats")
def stats(msg: Message, context: Context) -> Message:
    """Round 0: keep the study configuration; reply with this site's additive statistics."""
    config_json = node.local_study(
        str(msg.content.config_records["study"]["config-json"]), context.node_config
    )
    torch.set_num_threads(int(json.loads(config_json).get("threads", 1)))
    name, n_train, n_test, statistics = node.site_summary(config_json, _index(context))
    context.state.config_records[node.STUDY_STATE] = ConfigRecord({"config-json": config_json})
    role = node.site_role(config_json, _index(context))
    return Message(
        RecordDict(
            {
                "site": ConfigRecord(
                    {"name": name, "statistics-json": json.dumps(statistics), "role": role}
                ),
                "counts": MetricRecord(
                    {
                        "num-examples": n_train,
                        "num-test": n_test,
                        "min-cohort": node.declared_min_cohort(config_json, name),
                        **crosssite.declared(config_json, name, role),  # cross-site switches
                    }
                ),
            }
        ),
        reply_to=msg,
    )


@app.query("prepare")
def prepare(msg: Message, context: Context) -> Message:
    """Round 0: keep the global statistics the server merged from every site."""
    config_json, _ = node.received_study(context)
    statistics_json = str(msg.content.config_records["study"]["statistics-json"])
    context.state.config_records[node.STUDY_STATE] = ConfigRecord(
        {"config-json": config_json, "statistics-json": statistics_json}
    )
    site = node.prepared_site(config_json, statistics_json, _index(context))
    return Message(
        RecordDict(
            {
                "counts": MetricRecord(
                    {"num-examples": len(site.y_train), "num-test": len(site.y_test)}
                )
            }
        ),
        reply_to=msg,
    )


def _received_model(msg: Message, context: Context):
    """The study, the encoded site, the schema, and a model holding the received weights."""
    config_json, statistics_json = node.received_study(context)
    study, schema, stats = node.study_parts(config_json, statistics_json)
    site = validation.split(config_json, statistics_json, _index(context))[0]  # early stopping
    model = pipeline.new_model(schema, stats, site.x_train.shape[1], study)
    received = msg.content.array_records["arrays"].to_torch_state_dict()
    received.pop(scaffold.KEY, None)  # SCAFFOLD's server control travels beside the weights
    model.load_state_dict(unpack(received, model.state_dict()))
    personal.restore_local(model, context, study)  # FedPer heads / FedBN norms stay at the node
    return study, schema, site, stats, model


def _evaluation(model, site, schema, study, stats) -> dict:
    """Test statistics of the received model, keys prefixed ``eval-``."""
    test = pipeline.test_statistics(
        model, site.x_test, site.y_test, schema, stats, int(study["evaluate"]["auroc_bins"])
    )
    return {f"eval-{key}": value for key, value in test.items()}


@app.train(mods=[secure_aggregation_mod, central_clipping_mod])  # each acts only when on
def train(msg: Message, context: Context) -> Message:
    """Evaluate the received global model (when due), train locally, reply with the weights."""
    if node.site_role(node.received_study(context)[0], _index(context)) == "evaluate":
        raise RuntimeError(
            "this site is evaluation-only (role: evaluate in its dataset card): it does not train"
        )
    study, schema, site, stats, model = _received_model(msg, context)
    received = msg.content.array_records["arrays"].to_torch_state_dict()
    received.pop(scaffold.KEY, None)
    received_global = unpack(received, model.state_dict())  # FedPer/FedBN reply with these
    config = msg.content.config_records["config"]
    server_round = int(scalar(config["server-round"]))
    study = pipeline.round_study(study, server_round)  # train.lr of this round (its schedule)
    correction = scaffold.start(msg, context, model, float(study["train"]["lr"]))
    metrics: dict = {"num-examples": len(site.y_train)}
    early = (study.get("early_stopping") or {}).get("patience") is not None
    if (server_round - 1) % int(study["evaluate"]["every"]) == 0 and not early:
        metrics.update(_evaluation(model, site, schema, study, stats))  # test: once if early
    metrics.update(validation.statistics(model, context, _index(context)))
    seed = pipeline.round_seed(int(study["seed"]), pipeline.site_key(site.name), server_round)
    metrics.update(
        privacy_round.train_round(
            model,
            site,
            schema,
            study,
            stats,
            seed=seed,
            server_round=server_round,
            proximal_mu=float(scalar(config.get("proximal-mu", 0.0))),
            cohort_size=int(scalar(config.get("cohort-size", 0))),
            delta=float(scalar(config.get("dp-delta", 0.0))),
            step_hook=correction.pre_step if correction else None,
        )
    )
    control = (
        None
        if correction is None
        else correction.finish(model, int(metrics["train-steps"]), context)
    )
    personal.keep_local(model, context, study, received_global)
    node_state.save(context, study, site.name, server_round)  # for a resumed study
    arrays = pack(model.state_dict())
    if control is not None:
        arrays[scaffold.KEY] = control  # c_i+ - c_i, laid out like the weights
    return Message(
        RecordDict({"arrays": ArrayRecord(arrays), "metrics": MetricRecord(metrics)}), reply_to=msg
    )


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the received global model on this site's test split."""
    study, schema, site, stats, model = _received_model(msg, context)
    metrics: dict = {"num-examples": len(site.y_test)}
    if "validation-only" in msg.content.config_records["config"]:  # early stopping's last look
        metrics.update(validation.statistics(model, context, _index(context)))
        return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
    metrics.update(_evaluation(model, site, schema, study, stats))
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)


@app.query("restore")
def restore(msg: Message, context: Context) -> Message:
    """A resumed study: load the state this node kept between rounds (:mod:`.node_state`)."""
    config_json, statistics_json = node.received_study(context)
    config = msg.content.config_records["config"]
    node_state.restore(
        context,
        json.loads(config_json),
        node.prepared_site(config_json, statistics_json, _index(context)).name,
        int(scalar(config["resume-round"])),
        int(scalar(config["trained-round"])),
    )
    return Message(RecordDict(), reply_to=msg)


@app.query("personalise")
def personalise(msg: Message, context: Context) -> Message:
    """After federation: personalise the final model here; only metric intervals leave."""
    study, schema, site, stats, model = _received_model(msg, context)
    content = personal.personalise(
        model,
        site,
        schema,
        study,
        stats,
        context,
        msg.content.config_records["config"],
        _index(context),
    )
    return Message(content, reply_to=msg)


@app.query("share_local")
def share_local(msg: Message, context: Context) -> Message:
    """Cross-site evaluation: this hospital's local-only model, if its policy lets it travel."""
    return crosssite.share(msg, context)


@app.query("evaluate_other")
def evaluate_other(msg: Message, context: Context) -> Message:
    """Cross-site evaluation: another hospital's local-only model scored on this node's rows."""
    return crosssite.evaluate_other(msg, context)
