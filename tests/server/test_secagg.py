"""Secure aggregation (SecAgg+): same model as FedAvg up to quantisation, the server only ever
holds masked vectors and their unmasked sum, dropouts recovered, DP-SGD composes, config refused
for aggregators that need each update, and the Ray engine runs it too."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.common import bytes_to_ndarray
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

import medfed.client.secagg as client_secagg
from medfed.client.guard import ALLOWED_METRICS
from medfed.models.flat import pack
from medfed.server.simulation.engine import InProcessGrid
from medfed.server.study.config import ConfigError, compose_study
from medfed.server.study.loop import run_study

FOUR = ["federation.hospitals=4", "federation.min_size=60", "federation.max_size=120"]
SECURE = "secure_aggregation=true"


def _bound(study: dict, hospitals: dict) -> tuple[float, np.ndarray]:
    """The per-round error bound 2 c K / sum q_k (server/secagg.py) and the weights q_k."""
    cfg = study["secagg"]
    n = np.array([h["n_train"] for h in hospitals.values()], dtype=float)
    q = np.round(n / n.max() * cfg["quantization_range"])
    return 2 * cfg["clipping_range"] * len(n) / q.sum(), q


@pytest.fixture(scope="module")
def pair(small_study, run_inprocess):
    """The same 4-hospital, 4-round study with and without SecAgg+."""
    rounds = "rounds=4"
    return (
        run_inprocess(small_study(*FOUR, rounds, SECURE)),
        run_inprocess(small_study(*FOUR, rounds)),
    )


def test_secure_study_reaches_the_fedavg_weights_within_quantisation(pair):
    secure, plain = pair
    bound, _ = _bound(secure.study, secure.hospitals)
    # Each round's aggregate is within `bound` of FedAvg's (stochastic rounding, < 1 level per
    # hospital); the local SGD of the next round maps nearby weights to nearby weights, so 4
    # rounds stay within a few times 4 * bound (~1e-4 here). Observed: about one `bound`.
    tolerance = 10 * 4 * bound
    assert 1e-6 < bound < 1e-4
    for key in plain.final_state:
        diff = (secure.final_state[key] - plain.final_state[key]).abs().max().item()
        assert diff <= tolerance, (key, diff, tolerance)
    assert secure.total_train_steps == plain.total_train_steps
    assert secure.final.global_metrics["accuracy"] == pytest.approx(
        plain.final.global_metrics["accuracy"], abs=0.01
    )
    assert not any(r.failures or r.refusals for r in secure.rounds)


class CapturingGrid(InProcessGrid):
    """Keeps every message the server sends and every reply it receives."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list = []
        self.received: list = []

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        self.sent += messages
        replies = list(super().send_and_receive(messages, timeout=timeout))
        self.received += replies
        return replies


@pytest.fixture(scope="module")
def observed(small_study):
    """A secure study on a capturing grid, plus each hospital's plain weights seen *on the node*
    (the test is the omniscient observer; the server never sees them)."""
    from medfed.client.app import app

    study = small_study(*FOUR, "rounds=2", SECURE)
    plain: dict[tuple[int, int], tuple[np.ndarray, int]] = {}
    original = client_secagg.check_reply

    def spy(request, reply):
        config = request.content.config_records["config"]
        weights = reply.content.array_records["arrays"].to_numpy_ndarrays()
        plain[(int(config["server-round"]), request.metadata.dst_node_id)] = (
            np.concatenate([w.ravel() for w in weights]),
            int(reply.content.metric_records["metrics"]["num-examples"]),
        )
        original(request, reply)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(client_secagg, "check_reply", spy)
        grid = CapturingGrid(
            app, [{"partition-id": i, "num-partitions": 4} for i in range(4)], run_config={}
        )
        result = run_study(grid, study)
    return result, grid, plain


def test_no_reply_carries_a_hospitals_weights(observed):
    result, grid, plain = observed
    train_replies = [r for r in grid.received if r.metadata.message_type == "train"]
    assert len(train_replies) == 2 * 4 * 4  # 2 rounds x 4 stages x 4 hospitals
    for reply in train_replies:
        assert not reply.has_error()
        assert all(len(record) == 0 for record in reply.content.array_records.values())
        for record in reply.content.metric_records.values():
            assert set(record) <= ALLOWED_METRICS | {"num_examples"}
    cfg = result.study["secagg"]
    masked_values = []
    for reply in train_replies:
        record = reply.content.config_records[RECORD_KEY_CONFIGS]
        if Key.MASKED_PARAMETERS not in record:
            continue
        vector = np.concatenate(
            [bytes_to_ndarray(b).ravel() for b in record[Key.MASKED_PARAMETERS]][1:]
        )
        weights, _ = plain[(int(reply.metadata.group_id), reply.metadata.src_node_id)]
        assert vector.shape == weights.shape
        # Unmasked, every entry would be a quantisation level in [0, T]: a 1/1024 slice of the
        # modulus. Masked, entries are uniform mod M: hardly any fall in that slice.
        in_levels = np.mean((vector >= 0) & (vector <= cfg["quantization_range"]))
        assert in_levels < 0.2, in_levels
        masked_values.append(vector / cfg["modulus_range"])
    assert len(masked_values) == 2 * 4
    spread = np.concatenate(masked_values)
    assert abs(spread.mean() - 0.5) < 0.1 and spread.min() >= 0 and spread.max() < 1


def test_the_unmasked_sum_is_the_weighted_average_within_quantisation(observed):
    result, grid, plain = observed
    bound, _ = _bound(result.study, result.hospitals)
    largest = max(h["n_train"] for h in result.hospitals.values())
    T = result.study["secagg"]["quantization_range"]
    # the aggregate of round 1 is what round 2's collect stage sends; round 2's is the final model
    sent = [
        m
        for m in grid.sent
        if m.metadata.message_type == "train"
        and "fitins.parameters" in m.content.array_records
        and m.metadata.group_id == "2"
    ]
    aggregates = {
        1: np.concatenate(
            [
                a.ravel()
                for a in sent[0].content.array_records["fitins.parameters"].to_numpy_ndarrays()
            ]
        ),
        2: np.concatenate([v.numpy().ravel() for v in pack(result.final_state).values()]),
    }
    for server_round, aggregate in aggregates.items():
        updates = [plain[(server_round, node)] for node in result.hospitals]
        q = np.array([round(n / largest * T) for _, n in updates], dtype=float)
        expected = sum(qk * w.astype(float) for qk, (w, _) in zip(q, updates, strict=True))
        expected /= q.sum()
        error = np.abs(aggregate - expected).max()
        assert error <= 2 * result.study["secagg"]["clipping_range"] * 4 / q.sum() + 1e-6
        assert error <= bound + 1e-6
        # and it is the *sum*: far from any single hospital's weights
        assert all(np.abs(aggregate - w).max() > 10 * bound for w, _ in updates)


@pytest.mark.parametrize("strategy", ["krum", "fedmedian", "trimmedmean"])
def test_aggregators_that_need_each_update_are_refused(strategy):
    with pytest.raises(ConfigError, match=f"strategy={strategy} needs each hospital's own update"):
        compose_study([SECURE, f"strategy={strategy}"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("secagg.clipping_range=0", "secagg.clipping_range must be a positive number"),
        ("secagg.modulus_range=1000", "modulus_range must be an integer and greater"),
        ("secagg.reconstruction_threshold=1.5", "reconstruction_threshold"),
    ],
)
def test_bad_secagg_settings_are_one_sentence(override, message):
    with pytest.raises(ConfigError, match=message) as info:
        compose_study([SECURE, override])
    assert "\n" not in str(info.value)


def test_fedadam_applies_its_server_optimiser_to_the_secure_average(small_study, run_inprocess):
    secure = run_inprocess(small_study(*FOUR, "rounds=2", SECURE, "strategy=fedadam"))
    plain = run_inprocess(small_study(*FOUR, "rounds=2", "strategy=fedadam"))
    bound, _ = _bound(secure.study, secure.hospitals)
    for key in plain.final_state:
        # Adam divides by sqrt(v) + tau: a quantisation error is scaled by up to eta / tau
        diff = (secure.final_state[key] - plain.final_state[key]).abs().max().item()
        assert diff <= 0.02, (key, diff, bound)


def test_a_refusing_hospital_is_a_dropout_secagg_recovers(small_study, run_inprocess):
    refuse = "policy.hospitals={hospital-1: {allowed_tasks: [pricing]}}"
    secure = run_inprocess(small_study(*FOUR, "rounds=2", SECURE, refuse))
    plain = run_inprocess(small_study(*FOUR, "rounds=2", refuse))
    assert all("hospital-1" in r.refusals and len(r.train) == 3 for r in secure.rounds[1:])
    bound, _ = _bound(secure.study, secure.hospitals)
    for key in plain.final_state:
        diff = (secure.final_state[key] - plain.final_state[key]).abs().max().item()
        assert diff <= 10 * 2 * bound, (key, diff)


def test_too_many_dropouts_halt_the_round_and_keep_the_model(small_study, run_inprocess):
    refuse = (
        "policy.hospitals={hospital-1: {allowed_tasks: [pricing]}, "
        "hospital-2: {allowed_tasks: [pricing]}}"
    )
    result = run_inprocess(small_study(*FOUR, "rounds=2", SECURE, refuse))
    first = result.rounds[1]
    assert set(first.refusals) == {"hospital-1", "hospital-2"}
    assert set(first.failures) == {"hospital-0", "hospital-3"}
    assert all("secure aggregation halted" in r for r in first.failures.values())
    assert "no hospital trained" in result.stopped


def test_a_weight_beyond_the_clipping_range_is_refused_not_clipped(small_study, run_inprocess):
    result = run_inprocess(small_study(*FOUR, "rounds=1", SECURE, "secagg.clipping_range=0.01"))
    failures = result.rounds[1].failures
    assert len(failures) == 4 and "no hospital trained" in result.stopped
    assert all("raise secagg.clipping_range" in reason for reason in failures.values())


def test_dpsgd_composes_with_secure_aggregation(small_study, run_inprocess, tmp_path):
    result = run_inprocess(
        small_study("rounds=2", SECURE, "privacy=dpsgd", f"privacy.ledger_dir={tmp_path}")
    )
    assert not result.stopped
    for record in result.rounds[1:]:
        assert len(record.train) == 3 and not record.failures
        assert all(0 < t["epsilon"] < 10 for t in record.train.values())
    second = result.rounds[2].train
    assert all(second[h]["epsilon"] > result.rounds[1].train[h]["epsilon"] for h in second)
    assert len(list(tmp_path.glob("*.ledger.jsonl"))) == 3


@pytest.mark.slow
def test_ray_engine_runs_secure_aggregation(launch, load_model, small_study, run_inprocess):
    args = ["simulate", "rounds=2", "quiet=true", *FOUR, "output_dir={cwd}/run", SECURE]
    on_ray = launch(*args, "engine=ray")
    plain = run_inprocess(small_study(*FOUR, "rounds=2"))
    done = on_ray.wait(timeout=150)
    assert done.returncode == 0, done.stderr[-2000:]
    run = Path(on_ray.cwd) / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["engine"] == "ray" and summary["total_train_steps"] == plain.total_train_steps
    state = load_model(run)
    for key in plain.final_state:
        assert torch.allclose(state[key], plain.final_state[key], atol=1e-3), key
