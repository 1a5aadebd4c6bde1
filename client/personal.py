"""The node's side of personalisation: local layers kept between rounds, and the final
``query.personalise`` step (fine-tune, score, bootstrap, store; only intervals leave).

Under ``fedper``/``fedbn`` (:mod:`medfed.models.personal`) the node keeps its local weights in the
run's ``context.state`` (ArrayRecord ``medfed-local``): :func:`restore_local` puts them into every
received model, :func:`keep_local` saves them after training and puts the *received* values back
before the reply, so the server only ever sees (and averages) the shared weights. The node also
writes them to its disk after every round, for a resumed study (:mod:`medfed.client.node_state`).

The personalised model is written at the node: in simulation into the run directory
(``personalised/<site>.pt``), on a deployed node next to its dataset card
(``personalised/<study_id>.pt``); it is never sent. The file holds the statistics the site's rows
were encoded with, so whatever scores rows with it uses the right ones.
"""

from __future__ import annotations

import copy
import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord, RecordDict

from medfed.client import node
from medfed.infra.records import scalar
from medfed.models.benefit import PAIRS, paired_intervals
from medfed.models.encoding import GlobalStats, encoder_state
from medfed.models.nets import predict_output
from medfed.models.personal import fine_tune, local_keys, settings
from medfed.models.pipeline import (
    PreparedSite,
    local_only_model,
    own_statistics,
    site_key,
)
from medfed.models.schema import TaskSchema

LOCAL_STATE = "medfed-local"


def restore_local(model: torch.nn.Module, context: Context, study: dict[str, Any]) -> None:
    """Put this node's local layers (kept from its last round) into ``model``, if it has any."""
    keys = local_keys(model, settings(study)[0])
    if not keys or LOCAL_STATE not in context.state.array_records:
        return
    kept = context.state.array_records[LOCAL_STATE].to_torch_state_dict()
    state = model.state_dict()
    state.update({key: kept[key] for key in keys if key in kept})
    model.load_state_dict(state)


def keep_local(
    model: torch.nn.Module,
    context: Context,
    study: dict[str, Any],
    received: dict[str, torch.Tensor],
) -> None:
    """Save the local layers of the trained ``model`` at the node; reset them in ``model`` to the
    received global values, so the reply carries none of them."""
    keys = local_keys(model, settings(study)[0])
    if not keys:
        return
    state = model.state_dict()
    context.state.array_records[LOCAL_STATE] = ArrayRecord(
        {key: state[key].detach().clone() for key in keys}
    )
    state.update({key: received[key] for key in keys})
    model.load_state_dict(state)


def _output(model: torch.nn.Module, schema: TaskSchema, x: np.ndarray) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return predict_output(schema, model(torch.from_numpy(x))).numpy()


def _local_only(
    site_index: int, schema: TaskSchema, study: dict[str, Any], config_json: str, steps: int
) -> tuple[np.ndarray, GlobalStats]:
    """Predictions on the test rows of a model trained on this site alone (its own statistics,
    the steps it took in the federation: the equal-work rule of the baselines)."""
    raw = node._site(config_json, site_index)
    model, own, encoder = local_only_model(raw.train, schema, study, site_key(raw.name), steps)
    return _output(model, schema, encoder.transform(raw.test)), own


def _site_statistics(
    site_index: int, schema: TaskSchema, study: dict[str, Any], config_json: str, stats: GlobalStats
) -> GlobalStats:
    """The statistics this site's rows were encoded with (its own under per-site
    normalisation, else the global ones)."""
    if study["preprocessing"]["normalisation"] != "site":
        return stats
    raw = node._site(config_json, site_index)
    return own_statistics(raw.train, schema, int(study["preprocessing"]["min_cell"]), study)


def model_path(study: dict[str, Any], context: Context, site_name: str) -> Path:
    """Where the personalised model is stored: the run directory in simulation, next to the
    dataset card on a deployed node (it never leaves the hospital)."""
    dataset = context.node_config.get("dataset")
    if dataset:
        return Path(str(dataset)).resolve().parent / "personalised" / f"{study['study_id']}.pt"
    if not study.get("output_dir"):
        raise RuntimeError("no place to store the personalised model: output_dir is not set")
    return Path(study["output_dir"]) / "personalised" / f"{site_name}.pt"


def _save(
    path: Path, model: torch.nn.Module, site: str, study: dict[str, Any], stats: GlobalStats
) -> None:
    """Write the model atomically (a half-written file never carries the final name)."""
    buffer = io.BytesIO()
    torch.save(
        {
            "state_dict": model.state_dict(),
            "task": study["task"]["name"],
            "site": site,
            "method": settings(study)[0],
            "statistics": stats.to_dict(),
            "normalisation": study["preprocessing"]["normalisation"],
            "encoder": encoder_state(stats, study["preprocessing"]["missing_indicators"]),
        },
        buffer,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".pt.partial")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, path)


def personalise(
    model: torch.nn.Module,
    site: PreparedSite,
    schema: TaskSchema,
    study: dict[str, Any],
    stats: GlobalStats,
    context: Context,
    config: ConfigRecord,
    site_index: int,
) -> RecordDict:
    """Fine-tune, score federated / personalised / local-only on this site's test rows with
    paired bootstrap intervals, store the personalised model here; reply with intervals only."""
    _, epochs = settings(study)
    config_json, _ = node.received_study(context)
    federated = _output(model, schema, site.x_test)
    personal_model = copy.deepcopy(model)
    tuned = fine_tune(
        personal_model,
        site.x_train,
        site.y_train,
        schema,
        study,
        stats,
        epochs=epochs,
        seed=int(study["seed"]) + 7919 * (site_key(site.name) + 1),
    )
    outputs = {"federated": federated, "personalised": _output(personal_model, schema, site.x_test)}
    steps = int(scalar(config.get("local-steps", 1)))
    outputs["local"], _ = _local_only(site_index, schema, study, config_json, steps)
    intervals = paired_intervals(
        schema,
        site.y_test,
        outputs,
        PAIRS,
        seed=int(study["seed"]) + site_key(site.name),
        resamples=int(scalar(config.get("resamples", 200))),
        loss_scale=stats.loss_scale,
        bins=int(study["evaluate"]["auroc_bins"]),
    )
    _save(
        model_path(study, context, site.name),
        personal_model,
        site.name,
        study,
        _site_statistics(site_index, schema, study, config_json, stats),
    )
    metrics: dict[str, int | float | list[int] | list[float]] = {
        "n-test": float(len(site.y_test)),
        "epochs": float(tuned["epochs"]),
    }
    for name, (point, low, high) in intervals.items():
        metrics.update({name: point, f"{name}-low": low, f"{name}-high": high})
    return RecordDict({"metrics": MetricRecord(metrics)})
