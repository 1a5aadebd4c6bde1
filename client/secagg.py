"""The hospital's side of SecAgg+: the node's weights leave it only masked.

:func:`secure_aggregation_mod` is a mod on the train handler. A plain train message passes
through untouched. A SecAgg+ message (it carries Flower's ``secaggplus_configs`` record) goes
through Flower's ``secaggplus_mod``, which answers the key-exchange stages itself and, in the
collect stage, calls medfed's own train handler through :func:`_train_as_fitres`: the legacy
FitIns records the workflow sends become medfed's ``arrays`` + ``config``, the handler's reply is
checked by the reply guard's usual rules and turned into a FitRes, and Flower's mod then
quantises, weights and masks the weights and empties the plain array record. What leaves the
node is checked again by :mod:`medfed.client.guard` (``check_secagg_reply``). The server side and
the aggregation maths are in :mod:`medfed.strategies.secagg`.
"""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.common import Code, FitRes, Status
from flwr.common.secure_aggregation.secaggplus_constants import (
    RECORD_KEY_CONFIGS,
    RECORD_KEY_STATE,
    Key,
    Stage,
)
from flwr.compat.common import recorddict_compat as compat

from medfed.client.guard import check_reply
from medfed.infra.records import scalar

ARRAY_NAMES = "array-names"  # must match medfed.strategies.secagg.ARRAY_NAMES

Handler = Callable[[Message, Context], Message]


def is_secagg(msg: Message) -> bool:
    """Whether ``msg`` is a SecAgg+ stage message."""
    return msg.has_content() and RECORD_KEY_CONFIGS in msg.content.config_records


def secure_aggregation_mod(msg: Message, context: Context, call_next: Handler) -> Message:
    """Flower mod: run SecAgg+ stage messages through ``secaggplus_mod``, others unchanged.

    A setup whose reconstruction threshold is below 2 (the server alone could rebuild this node's
    private mask from the shares) is refused. A round that fails on this node (a policy refusal,
    a weight out of range) also drops the node's SecAgg+ state, so its next round starts cleanly
    from the setup stage.
    """
    if not is_secagg(msg):
        return call_next(msg, context)
    _check_setup(msg.content.config_records[RECORD_KEY_CONFIGS])
    try:
        return secaggplus_mod(msg, context, lambda m, c: _train_as_fitres(m, c, call_next))
    except Exception:
        context.state.config_records.pop(RECORD_KEY_STATE, None)
        raise


def _check_setup(configs: ConfigRecord) -> None:
    """Refuse a setup whose threshold would let the server alone rebuild this node's mask."""
    if configs.get(Key.STAGE) != Stage.SETUP:
        return
    threshold = int(configs.get(Key.THRESHOLD, 0))  # type: ignore[arg-type]
    shares = int(configs.get(Key.SHARE_NUMBER, 0))  # type: ignore[arg-type]
    if not 2 <= threshold <= shares:
        raise ValueError(
            f"secure aggregation: the server asked for a reconstruction threshold "
            f"of {threshold} among {shares} shares; this node needs "
            "2 <= threshold <= shares"
        )


def _train_as_fitres(msg: Message, context: Context, call_next: Handler) -> Message:
    """Run medfed's train handler on a FitIns message and answer with a FitRes."""
    original = msg.content
    config = dict(original.config_records["fitins.config"])
    names = [str(name) for name in config.pop(ARRAY_NAMES)]  # type: ignore[union-attr]
    values = original.array_records["fitins.parameters"].to_numpy_ndarrays()
    arrays = ArrayRecord({name: Array(v) for name, v in zip(names, values, strict=True)})
    msg.content = RecordDict({"arrays": arrays, "config": ConfigRecord(config)})
    try:
        reply = call_next(msg, context)
        check_reply(msg, reply)
    finally:
        msg.content = original
    if reply.has_error():
        raise RuntimeError(reply.error.reason)
    weights = reply.content.array_records["arrays"]
    metrics = reply.content.metric_records["metrics"]
    n_examples = int(scalar(metrics["num-examples"]))
    _check_range(weights, n_examples, context)
    fitres = FitRes(
        Status(Code.OK, ""),
        compat.arrayrecord_to_parameters(weights, keep_input=True),
        n_examples,
        {},
    )
    content = compat.fitres_to_recorddict(fitres, keep_input=True)
    content.metric_records["metrics"] = metrics
    return Message(content, reply_to=msg)


def _check_range(weights: ArrayRecord, n_examples: int, context: Context) -> None:
    """Refuse to mask weights SecAgg+ would clip: a clipped weight would corrupt the global model.

    The mod clips ``w * n / max_weight`` to +-``clipping_range`` (both from the setup stage).
    """
    state = context.state.config_records[RECORD_KEY_STATE]
    clip, max_weight = float(scalar(state["clipping_range"])), float(scalar(state["max_weight"]))
    if n_examples > max_weight:
        raise ValueError(
            f"secure aggregation: this node's {n_examples} training rows exceed the "
            f"round's max_weight {max_weight:g}; the server must send the largest "
            "training-set size"
        )
    largest = max(float(abs(weights[key].numpy()).max(initial=0.0)) for key in weights)
    if largest * n_examples / max_weight > clip:
        raise ValueError(
            f"secure aggregation: a model weight reaches {largest:.3g}, beyond what "
            f"secagg.clipping_range {clip:g} encodes at this node's weight "
            f"{n_examples}/{max_weight:g}; raise secagg.clipping_range"
        )
