"""Malicious hospitals for robustness studies (simulation only).

``attack.hospitals=[1] attack.kind=sign_flip`` makes the hospital at position 1 of a simulated
federation answer every train message with a poisoned update. The attack wraps medfed's
ClientApp from the outside, exactly as a compromised node would behave: the honest node code has
no attack path, and a real node can never be told to attack.

Kinds, with ``w`` the global weights received and ``w_k`` the honest local result:

``sign_flip``  ``w - scale * (w_k - w)``  (gradient ascent)
``scale``      ``w + scale * (w_k - w)``  (a boosted update, e.g. ``scale=100``)
``nan``        every weight NaN
``noise``      ``w + N(0, scale^2)`` per weight (seeded by the study seed and round)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message

from medfed.infra.records import scalar

KINDS = ("sign_flip", "scale", "nan", "noise")


class AttackConfigError(ValueError):
    """The ``attack`` section is invalid; the message says which setting."""


def attack_targets(study: Mapping[str, Any], n_hospitals: int) -> tuple[set[int], str, float]:
    """The attacking hospitals' positions, the kind and the scale (validated)."""
    section = study.get("attack") or {}
    raw = section.get("hospitals") or []
    kind = str(section.get("kind", "sign_flip"))
    if kind not in KINDS:
        raise AttackConfigError(f"attack.kind={kind!r} is unknown; choose one of {list(KINDS)}")
    targets = set()
    for item in raw:
        if isinstance(item, bool) or not isinstance(item, int) or not 0 <= item < n_hospitals:
            raise AttackConfigError(
                f"attack.hospitals lists {item!r}; give hospital positions 0..{n_hospitals - 1}"
            )
        targets.add(item)
    return targets, kind, float(section.get("scale", 1.0))


def poison(
    received: Mapping[str, np.ndarray],
    honest: Mapping[str, np.ndarray],
    kind: str,
    scale: float,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """The poisoned version of ``honest`` given the global ``received`` weights."""
    out = {}
    for key, w in received.items():
        update = honest[key] - w
        if kind == "sign_flip":
            value = w - scale * update
        elif kind == "scale":
            value = w + scale * update
        elif kind == "nan":
            value = np.full_like(w, np.nan)
        else:
            value = w + rng.normal(0.0, scale, size=w.shape)
        out[key] = np.asarray(value, dtype=w.dtype)
    return out


class MaliciousClientApp:
    """A ClientApp wrapper whose hospitals in ``targets`` poison their train replies."""

    def __init__(
        self, client_app: Any, targets: set[int], kind: str, scale: float, seed: int
    ) -> None:
        self._app, self._targets = client_app, targets
        self._kind, self._scale, self._seed = kind, scale, seed

    def __call__(self, message: Message, context: Context) -> Message:
        reply = self._app(message, context)
        index = int(context.node_config.get("partition-id", -1))
        if (
            message.metadata.message_type != "train"
            or index not in self._targets
            or reply.has_error()
        ):
            return reply
        received = message.content.array_records["arrays"]
        honest = reply.content.array_records["arrays"]
        server_round = int(scalar(message.content.config_records["config"]["server-round"]))
        rng = np.random.default_rng([self._seed, index, server_round])
        poisoned = poison(
            {k: v.numpy() for k, v in received.items()},
            {k: v.numpy() for k, v in honest.items()},
            self._kind,
            self._scale,
            rng,
        )
        reply.content.array_records["arrays"] = ArrayRecord(
            array_dict={key: Array(poisoned[key]) for key in honest}
        )
        return reply
