"""Client-level (central) differential privacy: Flower's fixed-clipping wrappers, RDP accountant.

``privacy=central`` protects the participation of a *whole hospital*, not of one patient: each
sampled hospital's update (its new weights minus the global ones) is clipped to L2 norm
``clipping_norm`` = C, the clipped updates are averaged with *equal* weights over the m hospitals
of the round, and Gaussian noise of std ``noise_multiplier * C / m`` is added to the average
(Flower's ``DifferentialPrivacy{Server,Client}SideFixedClipping``; McMahan et al. 2018). The
clipping happens on the coordinator (``clipping: server``: it sees every raw update) or on each
node before sending (``clipping: client``: Flower's ``fixedclipping_mod``, see
:mod:`medfed.client.central_dp`); the noise is always added by the coordinator, so neither mode
protects a hospital *from* the coordinator: that is what DP-SGD (``privacy=dpsgd``) is for.

Epsilon comes from Flower's ``RdpAccountant`` (``flwr[dp]``): one Gaussian release per aggregated
round, neighbouring federations differ by one hospital (add-or-remove-one), no amplification by
sampling. It is valid only when the aggregate is a plain average of the clipped updates, hence:

- only strategies that aggregate with ``FedAvg.aggregate_train`` (fedavg, fedprox): an adaptive
  server optimiser or a robust aggregator changes the sensitivity the noise is calibrated to;
- equal weights: FedAvg's example weights would let a large hospital move the model by up to
  C * n_k / n and make the sensitivity depend on the (private) counts, so under central DP the
  server sets every reply's weight (``num-examples``) to 1 before aggregating: the global model is
  the *unweighted* mean of the hospitals' clipped updates;
- a round is released only if every sampled hospital's update is in it: when a hospital refused,
  failed or did not answer in time, Flower's wrapper skips the round (the global model stays as it
  was, no privacy is spent) and medfed records why in :attr:`CentralDP.rounds`.

``m`` is the number of hospitals actually sampled in the round (the study's cohort,
``max(int(hospitals * fraction_train), min_nodes)``, fewer when nodes are offline): the noise and
the accountant's event follow it, so epsilon per round does not depend on it.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord
from flwr.serverapp import strategy as fl

from medfed.strategies.registry import STRATEGIES, StrategyConfigError

LOG = logging.getLogger("medfed")
CLIPPING = ("server", "client")
# A client-level delta must be far below 1 / hospitals (a delta of 1/N allows "release one whole
# hospital's update"); 1e-5 is below that for any cross-silo federation up to 10^4 hospitals.
DEFAULT_DELTA = 1e-5
_SEED_STREAM = 0x63656E74  # keeps the noise stream apart from other uses of the study's seed
ACCOUNTING = (
    "Flower RdpAccountant: one Gaussian release per aggregated round, add-or-remove-one "
    "hospital, no sampling amplification"
)


class CentralDPConfigError(StrategyConfigError):
    """The ``privacy`` section of a ``privacy=central`` study has an invalid setting."""


def fedavg_family() -> list[str]:
    """Strategies whose aggregate is FedAvg's plain average: the only ones central DP accounts."""
    plain = fl.FedAvg.aggregate_train
    return sorted(
        name
        for name, cls in STRATEGIES.items()
        if issubclass(cls, fl.FedAvg) and cls.aggregate_train is plain
    )


def _number(priv: Mapping[str, Any], key: str, *, zero: bool = False) -> float:
    value: Any = priv.get(key)
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not zero):
        raise CentralDPConfigError(
            f"privacy.{key} must be a number {'>=' if zero else '>'} 0, got {value!r}"
        )
    return float(value)


def check_central(study: Mapping[str, Any], n_nodes: int) -> None:
    """Raise :class:`CentralDPConfigError` naming the first bad central-DP setting (no-op when the
    study does not use ``privacy=central``)."""
    priv = study["privacy"]
    if priv.get("name") != "central":
        return
    federation = study.get("federation") or {}
    if federation.get("name") == "nodes" and federation.get("hospitals") is None:
        raise CentralDPConfigError(
            "privacy=central calibrates its noise to the number of "
            "hospitals: with federation=nodes set federation.hospitals=N"
        )
    if priv.get("clipping") not in CLIPPING:
        raise CentralDPConfigError(
            f"privacy.clipping must be server or client, got {priv.get('clipping')!r}"
        )
    _number(priv, "clipping_norm")
    _number(priv, "noise_multiplier", zero=True)
    if priv.get("target_epsilon") is not None:
        _number(priv, "target_epsilon")
    delta = _number(priv, "delta")
    if not delta < 1 / n_nodes:
        raise CentralDPConfigError(
            f"privacy.delta={delta:g} must be below 1/hospitals = {1 / n_nodes:.3g} (1e-5 is usual)"
        )
    if not isinstance(priv.get("secure_rng"), bool):
        raise CentralDPConfigError(
            f"privacy.secure_rng must be true or false, got {priv.get('secure_rng')!r}"
        )
    if study["strategy"]["name"] not in fedavg_family():
        raise CentralDPConfigError(
            f"privacy=central needs a strategy that aggregates with FedAvg's plain average "
            f"({', '.join(fedavg_family())}); strategy={study['strategy']['name']} changes the "
            "sensitivity the noise is calibrated to"
        )
    if study.get("secure_aggregation"):
        raise CentralDPConfigError(
            "privacy=central cannot be combined with secure_aggregation="
            "true yet (SecAgg+ runs on Flower's legacy workflow, the DP "
            "wrappers on the Message API); choose one of them"
        )


def rdp_accountant(delta: float, population: int) -> Any:
    """Flower's RDP accountant for client-level DP over ``population`` hospitals."""
    from flwr.serverapp import NeighboringRelation, PrivacyConfig, RdpAccountant, SamplingMethod

    return RdpAccountant(
        PrivacyConfig(
            target_delta=delta,
            population_size=population,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION,
        )
    )


def epsilon_after(noise_multiplier: float, releases: int, delta: float, population: int) -> float:
    """Client-level epsilon of ``releases`` aggregated rounds at ``noise_multiplier``."""
    from flwr.serverapp import GaussianPrivacyEvent

    accountant = rdp_accountant(delta, population)
    accountant.compose(GaussianPrivacyEvent(noise_multiplier, 1, population), releases)
    return accountant.get_epsilon(delta)


def plan_noise(target_epsilon: float, delta: float, rounds: int, population: int) -> float:
    """The smallest noise multiplier (to 1e-4 relative) whose ``rounds`` releases stay within
    ``target_epsilon``: bisection on the accountant's epsilon, which falls as the noise grows."""
    low, high = 0.0, 1.0
    while epsilon_after(high, rounds, delta, population) > target_epsilon:
        low, high = high, 2 * high
    while high - low > 1e-4 * high:
        middle = (low + high) / 2
        if epsilon_after(middle, rounds, delta, population) > target_epsilon:
            low = middle
        else:
            high = middle
    return high


class CentralDP:
    """What medfed adds to Flower's fixed-clipping wrappers (mixed in before them).

    Equal weights, noise from the study's seeded generator (or the OS when ``secure_rng``), the
    sample size of the round actually configured, a refused round instead of an exception, and a
    per-round record: :attr:`rounds` (``round``, ``released``, ``hospitals``, ``epsilon`` after
    the round, ``reason`` when skipped). :meth:`state_dict` / :meth:`load_state_dict` carry the
    accountant, that record and the noise generator across a checkpoint.

    Two of the overrides are hooks private to Flower's base class (``_prepare_accounting``,
    ``_add_noise_to_aggregated_arrays``, as of flwr 1.41, which pyproject pins below 1.42);
    ``tests/strategies/test_central_dp.py`` fails if they stop being called.
    """

    clipping: str  # where updates are clipped: "server" or "client"
    strategy: fl.FedAvg
    accountant: Any
    noise_multiplier: float
    clipping_norm: float
    num_sampled_clients: int

    def __init__(
        self,
        strategy: fl.FedAvg,
        noise_multiplier: float,
        clipping_norm: float,
        num_sampled_clients: int,
        *,
        delta: float,
        population: int,
        seed: int,
        secure_rng: bool = False,
        target_epsilon: float | None = None,
    ) -> None:
        accountant = rdp_accountant(delta, population) if noise_multiplier > 0 else None
        super().__init__(
            strategy,
            noise_multiplier,
            clipping_norm,  # type: ignore[call-arg]
            num_sampled_clients,
            accountant=accountant,
        )
        self.delta, self.target_epsilon, self.secure_rng = delta, target_epsilon, secure_rng
        self.rng = np.random.default_rng(None if secure_rng else [seed, _SEED_STREAM])
        self.rounds: list[dict[str, Any]] = []

    @property
    def epsilon(self) -> float:
        """Client-level epsilon spent so far at :attr:`delta` (inf without noise)."""
        return math.inf if self.accountant is None else self.accountant.get_epsilon(self.delta)

    def _prepare_accounting(
        self, server_round: int, messages: Iterable[Message]
    ) -> Iterable[Message]:
        """Account the cohort actually sampled (fewer when hospitals are offline): Flower would
        raise on any other size than the one the wrapper was built with."""
        messages = list(messages)
        if messages:
            self.num_sampled_clients = len(messages)
        return super()._prepare_accounting(server_round, messages)  # type: ignore[misc]

    def _add_noise_to_aggregated_arrays(self, aggregated_arrays: ArrayRecord) -> ArrayRecord:
        """Flower's noise (std sigma * C / m) drawn from :attr:`rng`, not numpy's global one."""
        std = self.noise_multiplier * self.clipping_norm / self.num_sampled_clients
        return ArrayRecord(
            {
                key: Array(np.asarray(a + self.rng.normal(0.0, std, a.shape).astype(a.dtype)))
                for key, a in zip(
                    aggregated_arrays.keys(), aggregated_arrays.to_numpy_ndarrays(), strict=True
                )
            }
        )

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Flower's clip-average-noise with equal weights; a refused round returns ``None``."""
        replies = list(replies)
        answered = [reply for reply in replies if not reply.has_error()]
        for reply in answered:
            for record in reply.content.metric_records.values():
                record[self.strategy.weighted_by_key] = 1
        reason = ""
        if len(answered) != self.num_sampled_clients:
            reason = (
                f"only {len(answered)} of the {self.num_sampled_clients} sampled hospitals' "
                "updates reached aggregation (the others refused, failed, timed out or were "
                "rejected); central DP releases a round only with all of them"
            )
        try:
            arrays, metrics = super().aggregate_train(server_round, replies)  # type: ignore[misc]
        except (ValueError, ArithmeticError) as exc:  # malformed replies; an all-zero update
            # (Flower's clipping divides by its norm)
            arrays, metrics, reason = None, None, f"the DP wrapper refused the round: {exc}"
        entry: dict[str, Any]  # a str "reason" joins the numbers below
        entry = {
            "round": server_round,
            "released": arrays is not None,
            "hospitals": self.num_sampled_clients,
            "epsilon": self.epsilon,
        }
        if arrays is None:
            entry["reason"] = reason or "the DP wrapper skipped the round"
            LOG.warning("central DP: round %d not released: %s", server_round, entry["reason"])
        self.rounds.append(entry)
        return arrays, metrics

    def report(self) -> dict[str, Any]:
        """The ``central_dp`` section of ``summary.json``."""
        return {
            "epsilon": self.epsilon,
            "delta": self.delta,
            "noise_multiplier": self.noise_multiplier,
            "clipping_norm": self.clipping_norm,
            "clipping": self.clipping,
            "target_epsilon": self.target_epsilon,
            "released_rounds": sum(r["released"] for r in self.rounds),
            "accounting": ACCOUNTING,
            "rounds": list(self.rounds),
        }

    def state_dict(self) -> dict[str, Any]:
        """Plain data to checkpoint: the accountant, the per-round record and the noise generator
        (not when ``secure_rng``: OS-drawn noise must stay unpredictable after a resume)."""
        return {
            "accountant": None if self.accountant is None else self.accountant.state_dict(),
            "rounds": [dict(r) for r in self.rounds],
            "rng": None if self.secure_rng else self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state_dict` of a wrapper built from the same study."""
        if (state["accountant"] is None) != (self.accountant is None):
            raise ValueError("the checkpoint's central-DP state is for a different noise setting")
        if self.accountant is not None:
            self.accountant.load_state_dict(dict(state["accountant"]))
        self.rounds = [dict(r) for r in state["rounds"]]
        if state.get("rng") is not None and not self.secure_rng:
            self.rng.bit_generator.state = dict(state["rng"])


class ServerSideCentralDP(  # type: ignore[misc]  # Flower: .strategy is any Strategy
    CentralDP,
    fl.DifferentialPrivacyServerSideFixedClipping,
):
    """Central DP, the coordinator clips every hospital's update (it sees the raw updates)."""

    clipping = "server"


class ClientSideCentralDP(  # type: ignore[misc]  # Flower: .strategy is any Strategy
    CentralDP,
    fl.DifferentialPrivacyClientSideFixedClipping,
):
    """Central DP, each node clips its own update before sending it (``fixedclipping_mod``)."""

    clipping = "client"


def wrap_central_dp(strategy: fl.Strategy, study: Mapping[str, Any], n_nodes: int) -> fl.Strategy:
    """``strategy`` wrapped for client-level DP when the study asks for ``privacy=central``
    (the noise planned for the whole study when ``privacy.target_epsilon`` is set); otherwise
    ``strategy`` itself."""
    priv = study["privacy"]
    if priv.get("name") != "central":
        return strategy
    check_central(study, n_nodes)
    assert isinstance(strategy, fl.FedAvg)
    delta = float(priv["delta"])
    noise = float(priv["noise_multiplier"])
    if priv.get("target_epsilon") is not None:
        noise = plan_noise(float(priv["target_epsilon"]), delta, int(study["rounds"]), n_nodes)
    elif noise == 0:
        warnings.warn(
            "privacy.noise_multiplier is 0: central DP only clips; epsilon is infinite.",
            RuntimeWarning,
            stacklevel=2,
        )
    cfg = study["strategy"]
    cohort = max(int(n_nodes * float(cfg.get("fraction_train", 1.0))), int(cfg["min_nodes"]))
    wrapper = ClientSideCentralDP if priv["clipping"] == "client" else ServerSideCentralDP
    return wrapper(
        strategy,
        noise,
        float(priv["clipping_norm"]),
        cohort,
        delta=delta,
        population=n_nodes,
        seed=int(study["seed"]),
        secure_rng=bool(priv["secure_rng"]),
        target_epsilon=priv.get("target_epsilon"),
    )


def central_dp_report(strategy: fl.Strategy) -> dict[str, Any]:
    """The ``central_dp`` summary of ``strategy`` ({} when the study has no central DP)."""
    return strategy.report() if isinstance(strategy, CentralDP) else {}
