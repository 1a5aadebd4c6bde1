"""What a node may send in cross-site evaluation: the names, and the check of the one reply that
carries weights other than the global model's.

Cross-site evaluation in deployment (:mod:`medfed.client.crosssite`) adds two query messages:
:data:`SHARE` asks a node for its local-only model, :data:`EVALUATE` asks a node to score another
hospital's local-only model on its test rows. A :data:`SHARE` reply is the only reply whose
arrays are not the layers of the model just received, so the reply guard
(:mod:`medfed.client.guard`) hands it to :func:`shared_reply_problem`: the reply may carry exactly
the record ``arrays`` (the packed weights, one flat vector per dtype) and the record ``local``
holding ``statistics-json`` -- the statistics the model encodes rows with (means, standard
deviations, rates, modes that are categories of the task schema, fills: numbers in a fixed
structure, never a row; no row count, class priors or missing rates) -- and the arrays must have
exactly the layout of the model those statistics build. Kept free of the node's data code (only
:mod:`medfed.models`) so the guard can use it without importing the node.
"""

from __future__ import annotations

import json
from typing import Any

from flwr.app import Message

from medfed.models.encoding import Encoder, GlobalStats
from medfed.models.flat import pack
from medfed.models.pipeline import new_model, study_schema
from medfed.models.schema import TaskSchema

SHARE = "query.share_local"
EVALUATE = "query.evaluate_other"
EXCHANGES = (SHARE, EVALUATE)
DECLARED = ("share-local-model", "evaluate-other-models")
"""Round-0 ``counts`` keys: the node's two cross-site switches (1 or 0), so the coordinator does
not ask in vain (the node still checks its policy on every request)."""
LOCAL = "local"
_WORDS = {"imputation": ("mean", "median"), "categorical_missing": ("mode", "category")}


def _numbers(where: str, value: Any) -> str | None:
    """The first leaf of ``value`` that is not a number, or None."""
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, item in items:
        if isinstance(item, dict | list):
            if problem := _numbers(f"{where}.{key}", item):
                return problem
        elif not isinstance(item, int | float) or isinstance(item, bool):
            return f"{where}.{key} is not a number"
    return None


def statistics_problem(raw: Any, schema: TaskSchema) -> str | None:
    """Why ``raw`` is not a plain set of model statistics for ``schema``, or None."""
    if not isinstance(raw, dict):
        return "the statistics are not a mapping"
    try:
        GlobalStats.from_dict(raw)
    except (TypeError, ValueError) as exc:
        return f"the statistics do not parse ({exc})"
    if raw.get("target_kind") != schema.target.kind:
        return "the statistics' target_kind is not the task's"
    if raw.get("rows") != 0 or raw.get("class_priors") or raw.get("missing_rates"):
        return "the statistics may not carry the row count, class priors or missing rates"
    for key, allowed in _WORDS.items():
        if raw.get(key) not in allowed:
            return f"the statistics' {key} is not one of {allowed}"
    for feature, mode in dict(raw.get("modes") or {}).items():
        known = feature in schema.feature_names and mode in schema.feature(feature).categories
        if not known:
            return f"the mode of {feature!r} is not a category of the task schema"
    numbers = {k: v for k, v in raw.items() if k not in ("modes", "target_kind", *_WORDS)}
    return _numbers("statistics", numbers)


def shared_reply_problem(reply: Message, config_json: str | None) -> str | None:
    """Why the :data:`SHARE` ``reply`` may not leave the node, or None when it carries only the
    local-only model's packed weights and the statistics that build it (``config_json``: the
    study the node holds)."""
    content = reply.content
    if content.metric_records or set(content.array_records) != {"arrays"}:
        return "a shared local model may carry only the records 'arrays' and 'local'"
    if set(content.config_records) != {LOCAL} or set(content.config_records[LOCAL]) != {
        "statistics-json"
    }:
        return "a shared local model may carry only its statistics beside the weights"
    if config_json is None:
        return "no study on this node to check the shared model against"
    study = json.loads(config_json)
    schema = study_schema(study)
    raw = json.loads(str(content.config_records[LOCAL]["statistics-json"]))
    if problem := statistics_problem(raw, schema):
        return problem
    stats = GlobalStats.from_dict(raw)
    missing = bool(study["preprocessing"]["missing_indicators"])
    width = Encoder(schema, stats, missing_indicators=missing).n_inputs
    layout = pack(new_model(schema, stats, width).state_dict())
    sent = content.array_records["arrays"]
    if list(sent) != list(layout) or any(
        tuple(sent[k].shape) != tuple(layout[k].shape) or sent[k].dtype != k for k in layout
    ):
        return "the shared arrays are not the layout of the local-only model"
    return None
