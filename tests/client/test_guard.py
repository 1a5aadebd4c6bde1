"""Nothing but aggregates leaves a node: a recorded study, and the guard refusing bad replies."""

from __future__ import annotations

import json

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from medfed.client.app import app as client_app
from medfed.client.guard import ALLOWED_METRICS, GuardViolation, check_reply
from medfed.models.flat import pack
from medfed.server.simulation.engine import InProcessGrid, _use_identity
from medfed.server.study.config import compose_study
from medfed.server.study.loop import run_study


class RecordingApp:
    """Wraps the real ClientApp and keeps every (request, reply) pair a node produced."""

    def __init__(self) -> None:
        self.exchanges: list[tuple[Message, Message]] = []

    def __call__(self, message: Message, context: Context) -> Message:
        reply = client_app(message, context)
        self.exchanges.append((message, reply))
        return reply


def _numbers_only(value: object) -> bool:
    if isinstance(value, dict):
        return all(_numbers_only(v) for k, v in value.items() if k != "kind")
    if isinstance(value, list):
        return all(_numbers_only(v) for v in value)
    return isinstance(value, int | float) and not isinstance(value, bool)


@pytest.mark.parametrize("task", ["diagnosis", "treatment", "pricing"])
def test_a_study_sends_only_aggregates(task: str, tmp_path) -> None:
    study = compose_study(
        [
            f"task={task}",
            "rounds=2",
            "federation.hospitals=3",
            "federation.min_size=60",
            "federation.max_size=120",
            f"output_dir={tmp_path}",
        ]
    )
    recorder = RecordingApp()
    grid = InProcessGrid(
        recorder, [{"partition-id": i, "num-partitions": 3} for i in range(3)], run_config={}
    )
    result = run_study(grid, study)
    shapes = {k: tuple(v.shape) for k, v in pack(result.final_state).items()}
    kinds = {"query.stats", "query.prepare", "train", "evaluate"}
    assert {request.metadata.message_type for request, _ in recorder.exchanges} == kinds
    for request, reply in recorder.exchanges:
        assert not reply.has_error(), reply.error.reason
        content = reply.content
        for record in content.metric_records.values():
            assert set(record) <= ALLOWED_METRICS
        for name, arrays in content.array_records.items():
            assert request.metadata.message_type == "train" and name == "arrays"
            assert {k: tuple(a.shape) for k, a in arrays.items()} == shapes
        for name, record in content.config_records.items():
            assert request.metadata.message_type == "query.stats" and name == "site"
            assert set(record) == {"name", "statistics-json", "role"}
            stats = json.loads(str(record["statistics-json"]))
            assert _numbers_only(stats)
            for feature in stats["categorical"].values():
                assert all(n == 0 or n >= 5 for n in feature["categories"].values())


def _train_request() -> Message:
    _use_identity(1, 1)
    arrays = ArrayRecord(pack({"w": torch.zeros(2, 3), "b": torch.zeros(3)}))  # 9 float32
    return Message(
        RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": 1})}),
        dst_node_id=5,
        message_type="train",
        group_id="1",
    )


def _reply(request: Message, records: dict) -> Message:
    _use_identity(1, 5)
    return Message(RecordDict(records), reply_to=request)


def test_guard_accepts_a_proper_train_reply() -> None:
    request = _train_request()
    reply = _reply(
        request,
        {
            "arrays": ArrayRecord({"float32": torch.ones(9)}),
            "metrics": MetricRecord({"num-examples": 10, "train-steps": 3}),
        },
    )
    check_reply(request, reply)


@pytest.mark.parametrize(
    ("records", "phrase"),
    [
        ({"arrays": ArrayRecord({"float32": torch.ones(10)})}, "shape"),  # one value too many
        ({"arrays": ArrayRecord({"float32": torch.ones(8)})}, "shape"),
        ({"arrays": ArrayRecord({"float32": torch.ones(3, 3)})}, "shape"),  # right size, not flat
        ({"arrays": ArrayRecord({"float64": torch.ones(9, dtype=torch.float64)})}, "layers"),
        ({"arrays": ArrayRecord({"float32": torch.ones(9, dtype=torch.float64)})}, "float64"),
        ({"arrays": ArrayRecord({"w": torch.ones(2, 3), "b": torch.ones(3)})}, "layers"),
        ({"metrics": MetricRecord({"num-examples": 1, "patient-age": 63.0})}, "not whitelisted"),
        ({"leak": ConfigRecord({"row": "63,male,..."})}, "round-0"),
    ],
)
def test_guard_refuses_anything_else(records: dict, phrase: str) -> None:
    request = _train_request()
    with pytest.raises(GuardViolation, match=phrase):
        check_reply(request, _reply(request, records))
