"""The node policy: what one hospital lets a study do with its data, checked before every round.

A YAML mapping per node (in simulation the ``policy`` config group, with per-hospital overrides
under ``hospitals: {<hospital name>: {<key>: <value>}}``). Keys, all optional:

=============================  =================================================================
``max_epsilon_total``          epsilon this dataset may ever spend, all studies composed (null:
                               no limit)
``max_epsilon_per_study``      epsilon one study may spend (null: no limit)
``delta``                      the largest delta a study may use (null: below 1/n of the dataset)
``min_noise_multiplier``       smallest DP-SGD noise multiplier accepted
``max_grad_norm_limit``        largest clipping norm accepted (null: no limit)
``allowed_tasks``              task names this node trains (null: any)
``min_cohort``                 fewest hospitals in a round's cohort (a lone update is the model)
``require_dp``                 refuse rounds without sample-level DP (``privacy=dpsgd``).
                               Client-level DP (``privacy=central``) does not satisfy it: the
                               noise is added by the coordinator, which receives this node's
                               update unnoised (raw with ``clipping: server``, clipped but
                               unnoised with ``clipping: client``), so it protects the hospital
                               from the model's users, not its patients from the coordinator
``require_secure_aggregation`` refuse rounds without SecAgg+
``require_approval``           refuse any study whose manifest hash the node has not approved
                               (``medfed node approve``); default false here and in simulation,
                               true for ``medfed node start`` unless its policy file says false
``approvals_dir``              the folder of the audit logs holding the approvals
                               (``<site>.audit.jsonl``; null: beside a deployed node's card, or
                               ``<output_dir>/audit`` in simulation)
``min_cell_count``             smallest count a node discloses exactly (round-0 category counts,
                               per-class test cases behind its metrics; default 5)
``share_local_model``          let this node's local-only model (trained on its rows alone,
                               without DP-SGD) travel, through the coordinator, to hospitals that
                               score it on their test rows (cross-site evaluation; default false;
                               never with ``require_dp``)
``evaluate_other_models``      score other hospitals' local-only models on this node's test rows
                               and disclose the aggregate test statistics, small cells
                               suppressed (default false)
=============================  =================================================================

:func:`check_round` returns the first limit a round would pass as a :class:`Refusal` with one
sentence (``budget: this round would bring epsilon to 1.31 > max_epsilon_total 1.0``), or None;
:func:`check_share` and :func:`check_evaluate_other` do the same for the two cross-site switches.
No Flower here: the ClientApp turns a refusal into a reply the server logs as a dropout. The
keys and their validation live in :mod:`medfed.models.policy_spec` (the coordinator checks a
study's policy with the same functions).
"""

from __future__ import annotations

from dataclasses import dataclass

from medfed.models.policy_spec import (  # noqa: F401  (the policy's names, as the node knows them)
    OVERRIDES,
    Policy,
    PolicyError,
    load_policy,
    policy_for_site,
)


@dataclass(frozen=True)
class Refusal:
    """Why a node refuses a round: the ``limit`` passed and one sentence for the logs."""

    limit: str
    reason: str

    def __str__(self) -> str:
        return self.reason


def _governance(
    policy: Policy, task: str, dp: bool, cohort_size: int | None, secure_aggregation: bool
) -> Refusal | None:
    if policy.allowed_tasks is not None and task not in policy.allowed_tasks:
        return Refusal(
            "task", f"task: '{task}' is not in allowed_tasks {list(policy.allowed_tasks)}"
        )
    if policy.require_dp and not dp:
        return Refusal(
            "dp",
            "dp: this node requires DP-SGD (require_dp) but the study runs "
            "without it; use privacy=dpsgd",
        )
    if policy.require_secure_aggregation and not secure_aggregation:
        return Refusal(
            "secure_aggregation",
            "secure aggregation: this node requires it "
            "(require_secure_aggregation) but the study runs without it",
        )
    if cohort_size is not None and cohort_size < policy.min_cohort:
        return Refusal(
            "cohort",
            f"cohort: {cohort_size} hospital(s) in this round < min_cohort {policy.min_cohort}",
        )
    return None


def _mechanism(
    policy: Policy, noise: float, clip: float, delta: float, n_examples: int | None
) -> Refusal | None:
    if noise < policy.min_noise_multiplier:
        return Refusal(
            "noise",
            f"noise: noise multiplier {noise:.3g} < min_noise_multiplier "
            f"{policy.min_noise_multiplier}",
        )
    if policy.max_grad_norm_limit is not None and clip > policy.max_grad_norm_limit:
        return Refusal(
            "clipping",
            f"clipping: max_grad_norm {clip:g} > max_grad_norm_limit {policy.max_grad_norm_limit}",
        )
    if policy.delta is not None and delta > policy.delta:
        return Refusal(
            "delta", f"delta: the study's delta {delta:g} > the policy's delta {policy.delta:g}"
        )
    if policy.delta is None and n_examples and delta >= 1 / n_examples:
        return Refusal(
            "delta",
            f"delta: the study's delta {delta:g} is not below 1/n = "
            f"{1 / n_examples:.3g} for this dataset's {n_examples} rows",
        )
    return None


def _budget(policy: Policy, total: float | None, study: float | None) -> Refusal | None:
    limits = (
        ("max_epsilon_per_study", policy.max_epsilon_per_study, study, "the study's "),
        ("max_epsilon_total", policy.max_epsilon_total, total, ""),
    )
    for name, limit, projected, whose in limits:
        if limit is None:
            continue
        if projected is None:
            raise ValueError(f"check_round needs the projected epsilon to apply {name}.")
        if projected > limit:
            return Refusal(
                "budget",
                f"budget: this round would bring {whose}epsilon to "
                f"{projected:.2f} > {name} {limit}",
            )
    return None


def check_round(
    policy: Policy,
    *,
    task: str,
    dp: bool,
    noise_multiplier: float | None = None,
    max_grad_norm: float | None = None,
    delta: float | None = None,
    projected_epsilon_total: float | None = None,
    projected_epsilon_study: float | None = None,
    cohort_size: int | None = None,
    secure_aggregation: bool = False,
    n_examples: int | None = None,
) -> Refusal | None:
    """The first limit of ``policy`` this round would pass, or None to go ahead.

    Checked in order: allowed task, required DP, required secure aggregation, cohort size, then
    with DP on the noise multiplier, clipping norm, delta (``n_examples`` is the dataset's row
    count, for the default 1/n rule) and the budgets. Projected epsilons are the ledger's history
    plus this round, composed (total) and for this study alone, at the study's ``delta``.
    """
    refusal = _governance(policy, task, dp, cohort_size, secure_aggregation)
    if refusal is not None or not dp:
        return refusal
    if noise_multiplier is None or max_grad_norm is None or delta is None:
        raise ValueError("check_round needs noise_multiplier, max_grad_norm and delta with DP on.")
    return _mechanism(policy, noise_multiplier, max_grad_norm, delta, n_examples) or _budget(
        policy, projected_epsilon_total, projected_epsilon_study
    )


def check_share(policy: Policy, *, role: str = "train") -> Refusal | None:
    """Why this node does not send its local-only model to other hospitals, or None to send it.

    The local-only model is trained on this hospital's rows alone and without DP-SGD (in every
    study), so its weights say more about those rows than the federated average: only
    ``share_local_model: true`` lets them go, and never under ``require_dp``.
    """
    if not policy.share_local_model:
        return Refusal(
            "share_local_model",
            "share_local_model: this node does not let its local-only model leave it "
            "(share_local_model: false in its policy)",
        )
    if policy.require_dp:
        return Refusal(
            "share_local_model",
            "share_local_model: the local-only model is trained without DP-SGD and this node "
            "requires DP (require_dp)",
        )
    if role != "train":
        return Refusal(
            "share_local_model", "share_local_model: this site is evaluation-only; it has no model"
        )
    return None


def check_evaluate_other(policy: Policy, *, own: str, owner: str) -> Refusal | None:
    """Why this node does not score hospital ``owner``'s local-only model on its test rows
    (this node is hospital ``own``), or None to score it."""
    if not policy.evaluate_other_models:
        return Refusal(
            "evaluate_other_models",
            "evaluate_other_models: this node does not score other hospitals' models "
            "(evaluate_other_models: false in its policy)",
        )
    if owner == own:
        return Refusal(
            "evaluate_other_models",
            f"evaluate_other_models: the model sent is this hospital's own ({own})",
        )
    return None
