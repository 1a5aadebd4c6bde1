"""The study's last step when it personalises: one ``query.personalise`` per training hospital.

Each node fine-tunes the final model on its own rows (``personalise.epochs``), scores the
federated, personalised and local-only models on its own test rows and computes paired 95%
bootstrap intervals there (:mod:`medfed.client.personal`); the server receives only the point
values and interval ends, and turns them into the per-hospital benefit table of ``summary.json``
and ``report.md``. The personalised models stay at the nodes.
"""

from __future__ import annotations

import math
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from medfed.infra.polling import send_and_receive
from medfed.infra.records import scalar
from medfed.models.benefit import MODELS, PAIRS, benefit_sentence
from medfed.models.personal import settings
from medfed.models.schema import TaskSchema
from medfed.server.study import roles

NAMES = (*MODELS, *PAIRS)


def wanted(study: dict[str, Any]) -> bool:
    """Whether the study personalises (``personalise.method`` other than ``none``)."""
    return settings(study)[0] != "none"


def _steps(rounds: list[Any]) -> dict[str, int]:
    steps: dict[str, int] = {}
    for record in rounds:
        for name, train in record.train.items():
            steps[name] = steps.get(name, 0) + int(train.get("steps") or 0)
    return steps


def _interval(metrics: Any, name: str) -> list[float]:
    return [
        float(scalar(metrics[key])) if key in metrics else math.nan
        for key in (name, f"{name}-low", f"{name}-high")
    ]


def personalise_hospitals(
    grid: Grid,
    arrays: ArrayRecord,
    hospitals: dict[int, dict[str, Any]],
    rounds: list[Any],
    study: dict[str, Any],
    schema: TaskSchema,
) -> dict[str, Any]:
    """Ask every connected training hospital to personalise; the benefit table (per hospital:
    ``[point, low, high]`` of each model and difference, and one sentence) and any failures."""
    steps = _steps(rounds)
    connected = set(grid.get_node_ids())
    messages = [
        Message(
            RecordDict(
                {
                    "arrays": arrays,
                    "config": ConfigRecord({"local-steps": steps.get(hospitals[nid]["name"], 1)}),
                }
            ),
            dst_node_id=nid,
            message_type="query.personalise",
            group_id="personalise",
        )
        for nid in roles.trainers(hospitals)
        if nid in connected
    ]
    table: dict[str, Any] = {}
    failures: dict[str, str] = {}
    for reply in send_and_receive(grid, messages, float(study["timeout"])):
        name = str(hospitals[reply.metadata.src_node_id]["name"])
        if reply.has_error():
            failures[name] = reply.error.reason or "failed"
            continue
        metrics = reply.content.metric_records["metrics"]
        row: dict[str, Any] = {key: _interval(metrics, key) for key in NAMES}
        row["n_test"] = int(scalar(metrics["n-test"]))
        row["sentence"] = benefit_sentence(
            name,
            schema.primary_metric,
            schema.higher_is_better,
            tuple(row["personalised-minus-local"]),
        )
        table[name] = row
    method, epochs = settings(study)
    return {
        "method": method,
        "epochs": epochs,
        "metric": schema.primary_metric,
        "level": 0.95,
        "hospitals": dict(sorted(table.items())),
        "failures": failures,
        "fairness": fairness(table, schema.higher_is_better),
    }


def fairness(table: dict[str, Any], higher_is_better: bool) -> dict[str, Any]:
    """Worst hospital and max-minus-min spread of each model's metric over the hospitals."""
    view: dict[str, Any] = {}
    for model in ("federated", "personalised", "local"):
        values = {
            name: row[model][0] for name, row in table.items() if math.isfinite(row[model][0])
        }
        if not values:
            continue
        pick = min if higher_is_better else max
        worst = pick(values, key=lambda name: values[name])
        view[model] = {
            "worst_hospital": worst,
            "worst": values[worst],
            "spread": max(values.values()) - min(values.values()),
        }
    return view
