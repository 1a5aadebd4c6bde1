"""The reply guard: the last check before anything leaves the hospital.

Whatever the handlers compute, a reply may only carry

* model arrays with exactly the names, shapes and dtypes of the global model just received;
* example counts and the whitelisted additive statistics (:data:`ALLOWED_METRICS`);
* in round 0, the site's name and its feature statistics (counts, sums, sums of squares and
  category counts, small cells suppressed) -- numbers in a fixed structure, never a row.

Anything else (an extra record, an unknown key, a string where a number belongs, an array of
another shape) is refused *before it is sent*: the guard raises, so the node answers with an
error instead. It is a Flower mod on the ClientApp, so it sees the reply of every handler.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from flwr.app import Context, Message

EVAL_STATISTICS = frozenset({
    "n", "tp", "fp", "tn", "fn", "hist_pos", "hist_neg", "loss_sum",  # binary
    "confusion", "top2_hits",  # multiclass
    "sum_abs_err", "sum_sq_err", "sum_y", "sum_y2", "sum_pred",  # continuous
})
ALLOWED_METRICS = frozenset(
    {"num-examples", "num-test", "train-loss-sum", "train-examples", "train-steps",
     "epsilon", "delta", "refused"}
    | {f"eval-{key}" for key in EVAL_STATISTICS})
_ROUND0_SITE_KEYS = frozenset({"name", "statistics-json"})


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


def check_reply(request: Message, reply: Message) -> None:
    """Raise :class:`GuardViolation` unless ``reply`` carries only what may leave the node."""
    if reply.has_error():
        return
    content = reply.content
    if content.config_records and request.metadata.message_type != "query.stats":
        raise GuardViolation("only the round-0 reply may carry a ConfigRecord")
    for name, record in content.config_records.items():
        if name != "site" or set(record) - _ROUND0_SITE_KEYS:
            raise GuardViolation(f"config record '{name}' with keys {sorted(record)} may not "
                                 "leave the node")
        _check_numbers("statistics", json.loads(str(record["statistics-json"])))
    for record in content.metric_records.values():
        unknown = sorted(set(record) - ALLOWED_METRICS)
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
            raise GuardViolation(f"array '{key}' has shape {b.shape} {b.dtype}, the model's is "
                                 f"{a.shape} {a.dtype}")


def reply_guard(msg: Message, context: Context,
                call_next: Callable[[Message, Context], Message]) -> Message:
    """Flower mod: run the handler, then refuse its reply if it carries more than aggregates."""
    reply = call_next(msg, context)
    check_reply(msg, reply)
    return reply
