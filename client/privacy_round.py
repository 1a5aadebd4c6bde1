"""The node in charge of its privacy: policy check, ledger reservation, DP-SGD, commit.

Before a round the node projects the epsilon this round would bring its dataset to (the ledger's
whole history plus this round, composed by the accountant) and checks the study's settings and
that projection against its policy. A round that would pass a limit is *refused*: the handler
raises :class:`NodeRefusal`, the node answers with an error whose reason starts with
``refused by the node's policy``, and the server counts it as a dropout. Otherwise the spend is
reserved in the ledger before the first step (a round that crashes after training therefore
still counts as spent), DP-SGD runs with the accountant restored from the ledger, and the
reservation is committed with the epsilon reached.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from medfed.client.ledger import Ledger, LedgerTampered, spent_epsilon
from medfed.client.ledger_binding import mark_spent
from medfed.client.policy import check_round, policy_for_site
from medfed.models.encoding import GlobalStats
from medfed.models.pipeline import PreparedSite, local_training
from medfed.models.schema import TaskSchema
from medfed.models.settings import privacy_errors
from medfed.models.training import loss_function

REFUSED = "refused by the node's policy"


class NodeRefusal(RuntimeError):
    """The node's policy refuses this round; the message is the one-sentence reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"{REFUSED}: {reason}")


def ledger_for(study: dict[str, Any], site_name: str) -> Ledger:
    """The privacy ledger of this hospital's dataset (``<ledger_dir>/<site>.ledger.jsonl``, or
    ``privacy.ledger_file``, which a deployed node sets itself: :func:`node.local_study`)."""
    if study["privacy"].get("ledger_file"):
        return Ledger(study["privacy"]["ledger_file"])
    folder = study["privacy"].get("ledger_dir") or Path(study["output_dir"]) / "ledgers"
    Path(folder).mkdir(parents=True, exist_ok=True)
    return Ledger(Path(folder) / f"{site_name}.ledger.jsonl")


def _mechanism(study: dict[str, Any], n: int, delta: float) -> tuple[float, float, int]:
    """Noise multiplier, sample rate and steps of one round at this hospital."""
    from medfed.models.privacy import dp_steps, noise_for_target, sample_rate

    cfg, priv = study["train"], study["privacy"]
    rate = sample_rate(n, int(cfg["batch_size"]))
    local = cfg.get("local_steps")
    steps = dp_steps(
        n,
        int(cfg["batch_size"]),
        steps=None if local is None else int(local),
        epochs=None if local is not None else int(cfg["local_epochs"]),
    )
    if priv.get("target_epsilon") is not None:
        noise = noise_for_target(
            float(priv["target_epsilon"]),
            delta,
            rate,
            steps * int(study["rounds"]),
            str(priv["accountant"]),
        )
    else:
        noise = float(priv["noise_multiplier"])
    return noise, rate, steps


def _projected(
    ledger: Ledger, study_id: str, step: tuple[float, float, int], delta: float, accountant: str
) -> tuple[float, float]:
    """Epsilon after this round, in total and for this study: :func:`spent_epsilon` (what
    ``medfed node ledger`` prints) of the ledger's history plus this round."""
    total = spent_epsilon([*ledger.history(), step], delta, accountant)
    own = spent_epsilon([*ledger.history(study_id), step], delta, accountant)
    return total, own


def train_round(
    model: torch.nn.Module,
    site: PreparedSite,
    schema: TaskSchema,
    study: dict[str, Any],
    stats: GlobalStats,
    *,
    seed: int,
    server_round: int,
    proximal_mu: float,
    cohort_size: int,
    delta: float,
    step_hook: Callable[[], None] | None = None,
) -> dict[str, float]:
    """One round of local training under the node's policy; additive train statistics.

    ``step_hook`` runs before every optimiser step (SCAFFOLD's correction; privacy=none only).

    Raises
    ------
    NodeRefusal
        When the policy refuses the round (the reason names the limit) or the ledger is tampered.
    """
    priv = study["privacy"]
    dp = priv["name"] == "dpsgd"
    if error := privacy_errors(priv):  # the coordinator's own check, in case it was skipped
        raise NodeRefusal(f"settings: {error}")
    policy = policy_for_site(study.get("policy"), site.name)
    common = {
        "task": schema.name,
        "dp": dp,
        "cohort_size": cohort_size,
        "secure_aggregation": bool(study.get("secure_aggregation", False)),
    }
    if not dp:
        refusal = check_round(policy, **common)
        if refusal is not None:
            raise NodeRefusal(str(refusal))
        return local_training(
            model,
            site.x_train,
            site.y_train,
            schema,
            study,
            stats,
            seed=seed,
            proximal_mu=proximal_mu,
            step_hook=step_hook,
        )
    ledger = ledger_for(study, site.name)
    noise, rate, steps = _mechanism(study, len(site.y_train), delta)
    with ledger.locked():  # projection, check and reservation as one step: no double spending
        try:
            history = ledger.history()
        except LedgerTampered as exc:
            raise NodeRefusal(f"ledger: {exc}") from None
        total, own = _projected(
            ledger, study["study_id"], (noise, rate, steps), delta, str(priv["accountant"])
        )
        refusal = check_round(
            policy,
            **common,
            noise_multiplier=noise,
            max_grad_norm=float(priv["max_grad_norm"]),
            delta=delta,
            projected_epsilon_total=total,
            projected_epsilon_study=own,
            n_examples=len(site.y_train),
        )
        if refusal is not None:
            raise NodeRefusal(str(refusal))
        entry = ledger.reserve(
            study["study_id"],
            schema.name,
            server_round,
            noise,
            rate,
            steps,
            delta,
            total,
            accountant=str(priv["accountant"]),
        )
        mark_spent(priv.get("ledger_binding"))  # a deployed node: its data has now spent
    return _dp_train(
        model,
        site,
        schema,
        study,
        stats,
        ledger,
        entry,
        history,
        seed=seed,
        noise=noise,
        steps=steps,
        delta=delta,
        proximal_mu=proximal_mu,
    )


def _dp_train(
    model: torch.nn.Module,
    site: PreparedSite,
    schema: TaskSchema,
    study: dict[str, Any],
    stats: GlobalStats,
    ledger: Ledger,
    entry: int,
    history: list,
    *,
    seed: int,
    noise: float,
    steps: int,
    delta: float,
    proximal_mu: float,
) -> dict[str, float]:
    from medfed.models.privacy import dp_train, study_dp_settings

    weights, report = dp_train(
        model,
        site.x_train,
        site.y_train,
        loss_function(schema, stats),
        noise_multiplier=noise,
        seed=seed,
        history=history,
        steps=steps,
        secure_rng=bool(study["privacy"]["secure_rng"]),
        proximal_mu=proximal_mu,
        delta=delta,
        **study_dp_settings(study),
    )
    ledger.commit(entry, float(report["epsilon"]))
    model.load_state_dict(weights)
    examples = float(report["examples"])
    # Mean loss over the round's sampled rows: an aggregate, like the test metrics (not in epsilon).
    return {
        "train-loss-sum": float(report["loss"]) * examples if examples else 0.0,
        "train-examples": examples,
        "train-steps": float(report["steps"]),
        "epsilon": float(report["epsilon"]),
        "delta": delta,
    }
