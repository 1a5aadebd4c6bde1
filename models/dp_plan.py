"""The noise a DP-SGD study plans at each hospital, for the record (``config.yaml``).

Kept apart from :mod:`medfed.models.privacy` (the training and accounting) so the server can
record the plan without a node's code path. No Flower here.
"""

from __future__ import annotations

from typing import Any

from medfed.models.privacy import (
    default_delta,
    dp_steps,
    noise_for_target,
    sample_rate,
    step_noise_lr,
)


def planned_noise(study: dict[str, Any], n_train: dict[str, int]) -> dict[str, float] | None:
    """The noise multiplier each hospital will use, by name, as its node plans it (None: no DP).

    With ``privacy.target_epsilon`` a node plans the whole study at once (``rounds`` x its
    local steps at its own sampling rate ``batch_size / n``, at the study's delta), so the noise
    differs per hospital; otherwise it is ``privacy.noise_multiplier`` everywhere. Recorded in
    ``config.yaml`` so a reader sees the noise a DP study planned without opening the ledgers.
    Same calls as the node (cached), so the values are the ones the nodes use.
    """
    privacy, train = study["privacy"], study["train"]
    if privacy.get("name") != "dpsgd" or not n_train:
        return None
    if privacy.get("target_epsilon") is None:
        return {name: float(privacy["noise_multiplier"]) for name in n_train}
    delta = privacy.get("delta") or default_delta(min(n_train.values()))
    batch, local = int(train["batch_size"]), train.get("local_steps")
    planned = {}
    for name, n in n_train.items():
        steps = dp_steps(
            n,
            batch,
            steps=None if local is None else int(local),
            epochs=None if local is not None else int(train["local_epochs"]),
        )
        planned[name] = round(
            noise_for_target(
                float(privacy["target_epsilon"]),
                float(delta),
                sample_rate(n, batch),
                steps * int(study["rounds"]),
                str(privacy.get("accountant", "rdp")),
            ),
            4,
        )
    return planned


def planned_lr(
    study: dict[str, Any], n_train: dict[str, int], noise: dict[str, float] | None
) -> dict[str, float] | None:
    """The DP-SGD learning rate each hospital will use, by name (None: no DP or no cap).

    ``train.lr`` lowered by ``privacy.max_step_noise`` at the hospital's planned ``noise``
    (:func:`medfed.models.privacy.step_noise_lr`), as its node computes it.
    """
    privacy, train = study["privacy"], study["train"]
    if noise is None or privacy.get("max_step_noise") is None:
        return None
    batch = int(train["batch_size"])
    return {
        name: round(
            step_noise_lr(
                float(train["lr"]),
                float(privacy["max_step_noise"]),
                noise[name],
                float(privacy["max_grad_norm"]),
                sample_rate(n, batch) * n,
            ),
            4,
        )
        for name, n in n_train.items()
    }
