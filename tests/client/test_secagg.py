"""The node's side of SecAgg+: the reply guard's rules for each stage, the mod's dispatch and
clean restart, and the node policy's ``require_secure_aggregation`` end to end."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.common import Code, FitRes, Status, ndarray_to_bytes, ndarrays_to_parameters
from flwr.common.secure_aggregation.secaggplus_constants import (
    RECORD_KEY_CONFIGS,
    RECORD_KEY_STATE,
    Key,
    Stage,
)
from flwr.compat.common import recorddict_compat as compat

from medfed.client.guard import GuardViolation, check_reply, reply_guard, secagg_stage
from medfed.client.secagg import secure_aggregation_mod

MODEL = [np.zeros(5, dtype=np.float32), np.zeros((2, 3), dtype=np.float32)]


def _request(stage: str, **configs) -> Message:
    content = RecordDict({RECORD_KEY_CONFIGS: ConfigRecord({Key.STAGE: stage, **configs})})
    if stage == Stage.COLLECT_MASKED_VECTORS:
        content.array_records["fitins.parameters"] = compat.parameters_to_arrayrecord(
            ndarrays_to_parameters(MODEL), keep_input=True
        )
        content.config_records["fitins.config"] = ConfigRecord({"server-round": 1})
    return Message(content, dst_node_id=7, message_type="train")


def _masked_reply(
    request: Message,
    masked: list[np.ndarray] | None = None,
    metrics: dict | None = None,
    plain: bool = False,
) -> Message:
    """A collect-stage reply as Flower's secaggplus_mod leaves it (plain arrays emptied)."""
    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(MODEL if plain else []), 80, {})
    content = compat.fitres_to_recorddict(fitres, keep_input=True)
    if not plain:
        content.array_records["fitres.parameters"].clear()
    content.metric_records["metrics"] = MetricRecord(
        metrics or {"num-examples": 80, "train-steps": 3.0}
    )
    if masked is None:
        masked = [np.array([9], dtype=np.int64)] + [
            np.random.default_rng(0).integers(0, 2**32, a.shape) for a in MODEL
        ]
    content.config_records[RECORD_KEY_CONFIGS] = ConfigRecord(
        {Key.MASKED_PARAMETERS: [ndarray_to_bytes(a) for a in masked]}
    )
    return Message(content, reply_to=request)


@pytest.mark.parametrize(
    "stage, reply",
    [
        (Stage.SETUP, {Key.PUBLIC_KEY_1: b"pk1", Key.PUBLIC_KEY_2: b"pk2"}),
        (Stage.SHARE_KEYS, {Key.DESTINATION_LIST: [8, 9], Key.CIPHERTEXT_LIST: [b"c8", b"c9"]}),
        (Stage.UNMASK, {Key.NODE_ID_LIST: [7, 8], Key.SHARE_LIST: [b"s7", b"s8"]}),
    ],
)
def test_key_stage_replies_pass_and_anything_more_is_refused(task_identity, stage, reply):
    request = _request(stage)
    ok = Message(RecordDict({RECORD_KEY_CONFIGS: ConfigRecord(reply)}), reply_to=request)
    check_reply(request, ok, stage)
    extra = Message(
        RecordDict({RECORD_KEY_CONFIGS: ConfigRecord({**reply, "weights": [b"plain"]})}),
        reply_to=request,
    )
    with pytest.raises(GuardViolation, match="'weights' may not leave"):
        check_reply(request, extra, stage)
    with_metrics = Message(
        RecordDict(
            {RECORD_KEY_CONFIGS: ConfigRecord(reply), "metrics": MetricRecord({"num-examples": 3})}
        ),
        reply_to=request,
    )
    with pytest.raises(GuardViolation, match="may carry only the records"):
        check_reply(request, with_metrics, stage)


def test_a_wrongly_typed_stage_value_is_refused(task_identity):
    request = _request(Stage.SHARE_KEYS)
    reply = Message(
        RecordDict(
            {
                RECORD_KEY_CONFIGS: ConfigRecord(
                    {Key.DESTINATION_LIST: [8], Key.CIPHERTEXT_LIST: ["plain text"]}
                )
            }
        ),
        reply_to=request,
    )
    with pytest.raises(GuardViolation, match="ctxts"):
        check_reply(request, reply, Stage.SHARE_KEYS)


def test_the_masked_vector_reply_passes(task_identity):
    request = _request(Stage.COLLECT_MASKED_VECTORS)
    check_reply(request, _masked_reply(request), Stage.COLLECT_MASKED_VECTORS)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"plain": True}, "may not carry plain arrays"),
        ({"masked": [np.array([9])] + [a.astype(np.float64) for a in MODEL]}, "integer arrays"),
        ({"masked": [np.array([9])] + [np.zeros(6, dtype=np.int64)] * 2}, "model's shapes"),
        ({"metrics": {"num-examples": 80, "row-17-age": 63.0}}, "not whitelisted"),
    ],
)
def test_a_masked_vector_reply_that_leaks_is_refused(task_identity, change, match):
    request = _request(Stage.COLLECT_MASKED_VECTORS)
    with pytest.raises(GuardViolation, match=match):
        check_reply(request, _masked_reply(request, **change), Stage.COLLECT_MASKED_VECTORS)


def test_the_guard_reads_the_stage_before_the_mod_pops_it(task_identity):
    request = _request(Stage.SETUP)
    assert secagg_stage(request) == Stage.SETUP
    assert secagg_stage(Message(RecordDict(), dst_node_id=7, message_type="train")) is None

    def mod_like(msg, context):  # secaggplus_mod pops the stage, then answers
        msg.content.config_records[RECORD_KEY_CONFIGS].pop(Key.STAGE)
        return Message(
            RecordDict(
                {
                    RECORD_KEY_CONFIGS: ConfigRecord(
                        {Key.PUBLIC_KEY_1: b"a", Key.PUBLIC_KEY_2: b"b", "extra": b"c"}
                    )
                }
            ),
            reply_to=msg,
        )

    with pytest.raises(GuardViolation, match="'extra' may not leave"):
        reply_guard(request, None, mod_like)


def _context() -> Context:
    return Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})


def test_plain_train_messages_pass_the_mod_untouched(task_identity):
    msg = Message(
        RecordDict({"config": ConfigRecord({"server-round": 1})}),
        dst_node_id=7,
        message_type="train",
    )
    seen = []
    secure_aggregation_mod(msg, _context(), lambda m, c: seen.append(m) or "reply")
    assert seen == [msg]


def test_a_failed_secure_round_drops_the_nodes_secagg_state(task_identity):
    context = _context()
    context.state.config_records[RECORD_KEY_STATE] = ConfigRecord({"current_stage": Stage.SETUP})
    out_of_order = _request(
        Stage.COLLECT_MASKED_VECTORS, **{Key.CIPHERTEXT_LIST: [], Key.SOURCE_LIST: []}
    )
    with pytest.raises(ValueError, match="Abort secure aggregation"):
        secure_aggregation_mod(out_of_order, context, lambda m, c: pytest.fail("not reached"))
    assert RECORD_KEY_STATE not in context.state.config_records


@pytest.mark.parametrize("secure", [True, False])
def test_a_node_requiring_secure_aggregation(small_study, run_inprocess, secure):
    require = "policy.hospitals={hospital-0: {require_secure_aggregation: true}}"
    result = run_inprocess(
        small_study("rounds=1", require, f"secure_aggregation={str(secure).lower()}")
    )
    first = result.rounds[1]
    if secure:
        assert not first.refusals and "hospital-0" in first.train
    else:
        assert set(first.refusals) == {"hospital-0"} and "hospital-0" not in first.train
        assert "require_secure_aggregation" in first.refusals["hospital-0"]
        assert len(first.train) == 2


@pytest.mark.parametrize("threshold, shares", [(1, 3), (0, 3), (4, 3)])
def test_a_setup_the_server_alone_could_unmask_is_refused(task_identity, threshold, shares):
    setup = _request(
        Stage.SETUP, **{Key.THRESHOLD: threshold, Key.SHARE_NUMBER: shares, Key.SAMPLE_NUMBER: 3}
    )
    with pytest.raises(ValueError, match="this node needs 2 <= threshold <= shares"):
        secure_aggregation_mod(setup, _context(), lambda m, c: pytest.fail("not reached"))
