"""The reply guard: the last check before anything leaves the hospital.

Whatever the handlers compute, a reply may only carry

* model arrays with exactly the names, shapes and dtypes of the global model just received
  (the weights travel packed, one flat vector per dtype -- :mod:`medfed.models.flat` -- so a
  reply with more or fewer values than the model has is refused);
* example counts and the whitelisted additive statistics (:data:`ALLOWED_METRICS`);
* in round 0, the site's name and its feature statistics (counts, sums, sums of squares and
  category counts, small cells suppressed) -- numbers in a fixed structure, never a row.

A SecAgg+ round (``secure_aggregation=true``, :mod:`medfed.client.secagg`) replies in Flower's
record layout instead; each stage reply may carry only what the protocol sends, none of it the
hospital's update in the clear (:data:`SECAGG_REPLIES`): public keys; key shares encrypted for
the hospital meant to hold each one; the masked vector (integer arrays of the model's shapes,
uniformly spread mod the modulus), with the plain array record emptied and the whitelisted
``metrics`` beside it; shares that unmask only the sum.

A ``query.share_local`` reply (cross-site evaluation, sent only when the node's policy says
``share_local_model``) carries the node's local-only model instead: its packed weights and the
statistics that build it, checked by :func:`medfed.client.crosssite_guard.shared_reply_problem`.

Anything else (an extra record, an unknown key, a string where a number belongs, an array of
another shape) is refused *before it is sent*: the guard raises, so the node answers with an
error instead. It is a Flower mod on the ClientApp, so it sees the reply of every handler, and
every exception a handler raises: one whose text quotes a cell of the node's data (see
:mod:`medfed.client.cellguard`) is replaced by :class:`CellsWithheld` with those cells withheld,
so no error reason, server log or ``summary.json`` can carry one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
from flwr.app import Context, Message
from flwr.common import bytes_to_ndarray
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

from medfed.client.cellguard import card_of, vocabulary, withhold_cells
from medfed.client.crosssite_guard import DECLARED, SHARE, shared_reply_problem
from medfed.models.benefit import BENEFIT_KEYS

EVAL_STATISTICS = frozenset(
    {
        "n",
        "tp",
        "fp",
        "tn",
        "fn",
        "hist_pos",
        "hist_neg",
        "loss_sum",
        "brier_sum",  # binary
        "confusion",
        "top2_hits",  # multiclass
        "sum_abs_err",
        "sum_sq_err",
        "sum_y",
        "sum_y2",
        "sum_pred",  # continuous
    }
)
ALLOWED_METRICS = frozenset(
    {
        "num-examples",
        "num-test",
        "train-loss-sum",
        "train-examples",
        "train-steps",
        "epsilon",
        "delta",
        "refused",
        "min-cohort",
        *DECLARED,  # round 0: the cross-site switches, 0 or 1
    }
    | {f"eval-{key}" for key in EVAL_STATISTICS}
    | {f"val-{key}" for key in EVAL_STATISTICS}  # early stopping: validation rows (aggregates)
    | BENEFIT_KEYS
)  # query.personalise: metric values and interval ends only (models.benefit)
_ROUND0_SITE_KEYS = frozenset({"name", "statistics-json", "role"})  # role: train | evaluate
SECAGG_REPLIES: dict[str, dict[str, type]] = {  # stage -> key -> type of the value (or items)
    Stage.SETUP: {Key.PUBLIC_KEY_1: bytes, Key.PUBLIC_KEY_2: bytes},  # public keys
    Stage.SHARE_KEYS: {Key.DESTINATION_LIST: int, Key.CIPHERTEXT_LIST: bytes},  # encrypted
    Stage.COLLECT_MASKED_VECTORS: {Key.MASKED_PARAMETERS: bytes},  # masked integer arrays
    Stage.UNMASK: {Key.NODE_ID_LIST: int, Key.SHARE_LIST: bytes},  # shares unmasking the sum
}


class GuardViolation(RuntimeError):
    """A reply would have carried something other than aggregates; it was not sent."""


def _check_numbers(where: str, value: Any) -> None:
    """Every leaf of the round-0 statistics must be a number (or a category count mapping)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "kind" and isinstance(item, str):
                continue
            _check_numbers(f"{where}.{key}", item)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_numbers(f"{where}[{i}]", item)
    elif not isinstance(value, int | float) or isinstance(value, bool):
        raise GuardViolation(f"round-0 statistic {where} is not a number")


def secagg_stage(msg: Message) -> str | None:
    """The SecAgg+ stage ``msg`` asks for, or None for a medfed message.

    Read it before the handler runs: Flower's ``secaggplus_mod`` pops it from the request.
    """
    if not msg.has_content() or RECORD_KEY_CONFIGS not in msg.content.config_records:
        return None
    return str(msg.content.config_records[RECORD_KEY_CONFIGS].get(Key.STAGE, ""))


def check_reply(request: Message, reply: Message, secagg: str | None = None) -> None:
    """Raise :class:`GuardViolation` unless ``reply`` carries only what may leave the node.

    ``secagg`` is the SecAgg+ stage of ``request`` (:func:`secagg_stage`), None otherwise.
    """
    if reply.has_error():
        return
    if secagg is not None:
        _check_secagg(secagg, request, reply)
        return
    content = reply.content
    if content.config_records and request.metadata.message_type != "query.stats":
        raise GuardViolation("only the round-0 reply may carry a ConfigRecord")
    for name, record in content.config_records.items():
        if name != "site" or set(record) - _ROUND0_SITE_KEYS:
            raise GuardViolation(
                f"config record '{name}' with keys {sorted(record)} may not leave the node"
            )
        if record.get("role", "train") not in ("train", "evaluate"):  # no free text leaves
            raise GuardViolation("the round-0 role must be train or evaluate")
        _check_numbers("statistics", json.loads(str(record["statistics-json"])))
    for metrics in content.metric_records.values():
        unknown = sorted(set(metrics) - ALLOWED_METRICS)
        if unknown:
            raise GuardViolation(f"metric(s) {unknown} are not whitelisted aggregates")
    _check_arrays(request, reply)


def _check_arrays(request: Message, reply: Message) -> None:
    sent = reply.content.array_records
    if not sent:
        return
    if request.metadata.message_type != "train" or list(sent) != ["arrays"]:
        raise GuardViolation("model arrays may only answer a train message, as record 'arrays'")
    received = request.content.array_records["arrays"]
    reply_arrays = sent["arrays"]
    if list(reply_arrays) != list(received):
        raise GuardViolation("the reply's arrays are not the layers of the received model")
    for key in received:
        a, b = received[key], reply_arrays[key]
        if tuple(a.shape) != tuple(b.shape) or a.dtype != b.dtype:
            raise GuardViolation(
                f"array '{key}' has shape {b.shape} {b.dtype}, the model's is {a.shape} {a.dtype}"
            )


def _check_secagg(stage: str, request: Message, reply: Message) -> None:
    content = reply.content
    allowed = SECAGG_REPLIES.get(stage)
    if allowed is None:
        raise GuardViolation(f"unknown SecAgg+ stage {stage!r}")
    collect = stage == Stage.COLLECT_MASKED_VECTORS
    configs = {RECORD_KEY_CONFIGS} | ({"fitres.status", "fitres.metrics"} if collect else set())
    metrics = {"fitres.num_examples", "metrics"} if collect else set()
    arrays = {"fitres.parameters"} if collect else set()
    if (set(content.config_records), set(content.metric_records), set(content.array_records)) != (
        configs,
        metrics,
        arrays,
    ):
        raise GuardViolation(
            f"a SecAgg+ {stage} reply may carry only the records {sorted(configs)}"
            f" {sorted(metrics)} {sorted(arrays)}"
        )
    record = content.config_records[RECORD_KEY_CONFIGS]
    for key, value in record.items():
        items = value if isinstance(value, list) else [value]
        if key not in allowed or not all(isinstance(v, allowed[key]) for v in items):
            raise GuardViolation(f"SecAgg+ {stage} reply key '{key}' may not leave the node")
    if collect:
        _check_masked_reply(request, reply)


def _check_masked_reply(request: Message, reply: Message) -> None:
    """The collect-stage reply: masked integer arrays of the model's shapes, no plain weights."""
    content = reply.content
    status = dict(content.config_records["fitres.status"])
    if (
        len(content.array_records["fitres.parameters"])
        or content.config_records["fitres.metrics"]
        or status != {"code": 0, "message": ""}
        or set(content.metric_records["fitres.num_examples"]) != {"num_examples"}
    ):
        raise GuardViolation("a SecAgg+ masked-vector reply may not carry plain arrays or metrics")
    unknown = sorted(set(content.metric_records["metrics"]) - ALLOWED_METRICS)
    if unknown:
        raise GuardViolation(f"metric(s) {unknown} are not whitelisted aggregates")
    model = request.content.array_records["fitins.parameters"].to_numpy_ndarrays()
    vectors = content.config_records[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS]
    if not isinstance(vectors, list):
        raise GuardViolation("the masked vector is not a list of arrays")
    masked = [bytes_to_ndarray(b) for b in vectors if isinstance(b, bytes)]  # all are (checked)
    shapes = [(1,)] + [a.shape for a in model]  # the weight factor, then the layers
    if [a.shape for a in masked] != shapes or not all(
        np.issubdtype(a.dtype, np.integer) for a in masked
    ):
        raise GuardViolation("the masked vector is not integer arrays of the model's shapes")


class CellsWithheld(RuntimeError):
    """A handler's exception whose text quoted cells of the node's data, with them withheld."""


def _study_json(msg: Message, context: Context) -> str | None:
    for records in (
        msg.content.config_records if msg.has_content() else {},
        context.state.config_records,
    ):
        for name in ("study", "medfed-study"):
            if name in records and "config-json" in records[name]:
                return str(records[name]["config-json"])
    return None


def screen_exception(exc: Exception, msg: Message, context: Context) -> Exception | None:
    """A stand-in for ``exc`` when its text quotes a cell of the node's data, else None.

    The stand-in keeps the exception's type name and its text with each cell replaced (see
    :mod:`medfed.client.cellguard`). When the check itself fails, the whole text is withheld.
    """
    text = str(exc)
    try:
        card = card_of(_study_json(msg, context), context.node_config)
        cells = vocabulary(card) if card else None
        if cells is None:
            return None
        clean, count = withhold_cells(text, cells)
    except Exception:  # noqa: BLE001 - fail closed: nothing unchecked leaves the node
        return CellsWithheld(
            f"{type(exc).__name__}: the node's error text was withheld (it "
            "could not be checked for cell contents); see the node's log"
        )
    if not count:
        return None
    return CellsWithheld(
        f"{type(exc).__name__}: {clean} ({count} cell value(s) withheld by the node's guard)"
    )


def reply_guard(
    msg: Message, context: Context, call_next: Callable[[Message, Context], Message]
) -> Message:
    """Flower mod: run the handler, then refuse its reply if it carries more than aggregates;
    an exception whose text quotes a cell of the node's data goes on with the cells withheld."""
    stage = secagg_stage(msg)
    try:
        reply = call_next(msg, context)
    except Exception as exc:
        stand_in = screen_exception(exc, msg, context)
        if stand_in is None:
            raise
        raise stand_in from None
    if msg.metadata.message_type == SHARE and not reply.has_error():  # cross-site evaluation
        if problem := shared_reply_problem(reply, _study_json(msg, context)):
            raise GuardViolation(problem)
        return reply
    check_reply(msg, reply, stage)
    return reply
