"""The study loop the ServerApp runs on any Grid (in-process, Ray, or real hospitals).

Round 0 builds the global preprocessing statistics from the nodes' additive summaries; each round
then asks the strategy which hospitals train, sends the global weights, records what every
hospital reported and lets the strategy aggregate; a last ``evaluate`` message scores the final
model at every hospital. The loop is written once and knows nothing about the engine.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from dataclasses import dataclass, field
from logging import WARNING
from pathlib import Path
from typing import Any, Protocol

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from medfed.infra.polling import send_and_receive
from medfed.infra.records import scalar
from medfed.models.dp_plan import planned_lr, planned_noise
from medfed.models.encoding import GlobalStats, merge_statistics
from medfed.models.flat import pack, unpack
from medfed.models.imputation import statistics_options
from medfed.models.ingest.sources import federation_size
from medfed.models.metrics import metrics_from_statistics
from medfed.models.pipeline import n_inputs, new_model, study_schema
from medfed.models.schema import TaskSchema
from medfed.server.monitor.status import StatusTracker, fail_study
from medfed.server.study import approvals, early, personalise, resume, roles
from medfed.server.study.cohort import Cohort, by_site, query, site_of
from medfed.strategies.central_dp import central_dp_report, wrap_central_dp
from medfed.strategies.cohort_gate import CohortGate
from medfed.strategies.registry import build_strategy
from medfed.strategies.screening import ScreeningConfig, screen_replies
from medfed.strategies.statistics import add_into

GLOBAL = "all hospitals"
REFUSED = "refused by the node's policy"  # how medfed.client.privacy_round words a refusal


class StudyError(RuntimeError):
    """The study cannot go on (e.g. too few hospitals answered); the message says why."""


class Observer(Protocol):
    """Receives progress events (the terminal progress bar implements it)."""

    def on_start(self, study: dict[str, Any], hospitals: list[str]) -> None: ...

    def on_round(self, server_round: int, record: RoundRecord) -> None: ...


@dataclass
class RoundRecord:
    """What the study learnt in one round."""

    server_round: int
    hospital_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    global_metrics: dict[str, float] = field(default_factory=dict)
    train: dict[str, dict[str, float | None]] = field(default_factory=dict)  # loss: None (DP)
    failures: dict[str, str] = field(default_factory=dict)
    refusals: dict[str, str] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    wire_bytes: int | None = None
    statistics: dict[str, dict[str, Any]] = field(default_factory=dict)  # summed, per hospital
    skipped: str = ""  # why the round was not aggregated (medfed.strategies.cohort_gate)


@dataclass
class StudyResult:
    """Everything a run directory is written from."""

    study: dict[str, Any]
    schema: TaskSchema
    hospitals: dict[int, dict[str, Any]]
    statistics: GlobalStats
    rounds: list[RoundRecord]
    final_state: dict[str, torch.Tensor]
    wall_seconds: float
    wire_bytes: dict[str, int] = field(default_factory=dict)
    baselines: dict[str, Any] = field(default_factory=dict)
    central_dp: dict[str, Any] = field(default_factory=dict)  # client-level DP (summary.json)
    personalised: dict[str, Any] = field(default_factory=dict)  # benefit table (personalise.*)
    cross_site: dict[str, Any] = field(default_factory=dict)  # every model x site (simulation)
    early_stopping: dict[str, Any] = field(default_factory=dict)  # best round by validation
    stopped: str = ""

    @property
    def final(self) -> RoundRecord:
        return self.rounds[-1]

    @property
    def total_train_steps(self) -> int:
        return int(sum(t.get("steps") or 0 for r in self.rounds for t in r.train.values()))


def _wait_for_nodes(grid: Grid, needed: int, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while len(node_ids := sorted(grid.get_node_ids())) < needed:
        if time.monotonic() > deadline:
            raise StudyError(
                f"only {len(node_ids)} of the {needed} hospitals needed connected "
                f"within {timeout:.0f} s"
            )
        time.sleep(0.5)
    return node_ids


def federated_statistics(
    grid: Grid,
    study: dict[str, Any],
    node_ids: list[int],
    failures: dict[str, str],
    fixed: GlobalStats | None = None,
) -> tuple[dict[int, dict[str, Any]], GlobalStats]:
    """Round 0: collect each node's additive statistics and send back the merged ones.

    A node that fails here is left out (and listed in ``failures``); the study goes on when at
    least ``strategy.min_nodes`` hospitals are ready. A resumed study passes its checkpointed
    statistics as ``fixed``: the nodes prepare their data exactly as before the interruption.
    """
    timeout = float(study["timeout"])
    record = ConfigRecord({"config-json": json.dumps(study)})
    hospitals: dict[int, dict[str, Any]] = {}
    summaries: dict[int, dict[str, Any]] = {}
    for reply in sorted(
        approvals.stats_with_approvals(grid, study, node_ids, record, timeout),
        key=lambda reply: reply.metadata.src_node_id,
    ):
        if reply.has_error():
            failures[f"node-{reply.metadata.src_node_id}"] = approvals.reason(
                reply.error.reason or ""
            )
            continue
        entry, summary = site_of(reply)
        twin = next((nid for nid, h in hospitals.items() if h["name"] == entry["name"]), None)
        if twin is not None:  # two nodes serving one dataset would count its rows twice
            failures[f"node-{reply.metadata.src_node_id}"] = (
                f"claims to be {entry['name']} like node {twin}; left out"
            )
            continue
        hospitals[reply.metadata.src_node_id] = entry
        summaries[reply.metadata.src_node_id] = summary
    _enough(study, hospitals, failures, "sent its statistics")
    if (problem := roles.training_problem(study, hospitals, failures)) is not None:
        raise StudyError(f"the study cannot start: {problem}")
    hospitals = dict(sorted(hospitals.items(), key=lambda item: item[1]["name"]))
    if study["preprocessing"]["normalisation"] == "site":  # each site's own, for model.pt
        for node_id, entry in hospitals.items():
            entry["site_statistics"] = merge_statistics(
                [summaries[node_id]], **statistics_options(study)
            ).to_dict()
    stats = fixed or merge_statistics(
        [summaries[nid] for nid in roles.trainers(hospitals)], **statistics_options(study)
    )
    prepared = query(
        grid,
        hospitals,
        "prepare",
        ConfigRecord({"statistics-json": json.dumps(stats.to_dict())}),
        timeout,
    )
    answered = set()
    for reply in prepared:
        if not reply.has_error():
            answered.add(reply.metadata.src_node_id)
            continue
        failures[hospitals[reply.metadata.src_node_id]["name"]] = (
            f"could not prepare its data: {reply.error.reason}"
        )
    hospitals = {nid: h for nid, h in hospitals.items() if nid in answered}
    _enough(study, hospitals, failures, "prepared its data")
    return hospitals, stats


def _enough(
    study: dict[str, Any], hospitals: dict[int, Any], failures: dict[str, str], what: str
) -> None:
    needed = int(study["strategy"]["min_nodes"])
    if len(hospitals) < needed:
        detail = "; ".join(f"{name}: {reason}" for name, reason in failures.items())
        raise StudyError(
            f"only {len(hospitals)} hospital(s) {what} in round 0, "
            f"strategy.min_nodes={needed}" + (f" ({detail})" if detail else "")
        )


def _hospital(hospitals: dict[int, dict[str, Any]], reply: Message) -> str:
    node_id = reply.metadata.src_node_id
    return str(hospitals.get(node_id, {}).get("name", f"node-{node_id}"))


def record_evaluation(
    record: RoundRecord,
    replies: list[Message],
    schema: TaskSchema,
    hospitals: dict[int, dict[str, Any]],
) -> None:
    """Per-hospital and global test metrics of ``record``'s model from the replies' statistics.

    The global metrics are computed from the *summed* statistics: they are the metrics over all
    hospitals' test rows together, not an average of per-site values.
    """
    total: dict[str, Any] = {}
    for reply in replies:
        if reply.has_error():
            continue
        metrics = next(iter(reply.content.metric_records.values()))
        evaluation = {k[5:]: v for k, v in metrics.items() if k.startswith("eval-")}
        if evaluation:
            record.hospital_metrics[_hospital(hospitals, reply)] = metrics_from_statistics(
                schema, evaluation
            )
            record.statistics[_hospital(hospitals, reply)] = dict(evaluation)
            add_into(total, MetricRecord(evaluation))
    if total:
        record.global_metrics = metrics_from_statistics(schema, total)
        record.statistics[GLOBAL] = dict(total)


def record_training(
    record: RoundRecord, replies: list[Message], hospitals: dict[int, dict[str, Any]]
) -> None:
    """Per-hospital training loss and steps of one round, and the hospitals that failed."""
    for reply in replies:
        name = _hospital(hospitals, reply)
        if reply.has_error():
            reason = reply.error.reason or ""
            refused = REFUSED in reason
            (record.refusals if refused else record.failures)[name] = (
                reason[reason.index(REFUSED) :] if refused else reason
            )
            continue
        metrics = next(iter(reply.content.metric_records.values()))
        examples = max(float(scalar(metrics["train-examples"])), 1.0)
        loss = float(scalar(metrics["train-loss-sum"])) / examples
        record.train[name] = {"loss": loss, "steps": float(scalar(metrics["train-steps"]))}
        for key in ("epsilon", "delta"):
            if key in metrics:
                record.train[name][key] = float(scalar(metrics[key]))


def run_study(grid: Grid, study: dict[str, Any], observer: Observer | None = None) -> StudyResult:
    """Run a whole study on ``grid`` and return what happened (see the module docstring).

    With ``study["resume"]`` set, the study continues from that run directory's checkpoint.
    """
    started = time.perf_counter()
    try:
        run = StudyRun(grid, study, observer)
    except BaseException as error:
        fail_study(study, [], error)  # status.json: round 0 failed
        raise
    try:
        for server_round in range(run.first_round, int(study["rounds"]) + 1):
            if not run.train_round(server_round):
                break
    except BaseException as error:
        fail_study(study, run.rounds, error)  # status.json: failed (or stopped on Ctrl-C)
        raise
    finally:
        run.flush()  # the last checkpoint reaches the disk even when a round failed
    return run.finish(time.perf_counter() - started)


class StudyRun:
    """The state the rounds of one study share: strategy, hospitals, weights, records.

    Built by round 0 (or from a checkpoint); :meth:`train_round` runs one round and
    :meth:`finish` the final evaluation.
    """

    def __init__(self, grid: Grid, study: dict[str, Any], observer: Observer | None) -> None:
        from medfed.server.study import checkpoint as ckpt

        self.grid, self.study, self.observer = grid, study, observer
        _quiet_flower(study)
        self._key = ckpt.read_key((study.get("checkpoint") or {}).get("key_file"))
        self._writer = ckpt.Writer(self._key)
        saved = (
            ckpt.load(Path(study["resume"]) / ckpt.FILENAME, self._key)
            if study.get("resume")
            else None
        )
        if saved is not None:
            study["study_id"] = _check_resumable(study, json.loads(saved["study"]))
        study.setdefault("study_id", f"{study['task']['name']}-{uuid.uuid4().hex[:12]}")
        self.status = StatusTracker(study, grid)  # status.json, alerts, Prometheus exporter
        random.seed(int(study["seed"]))
        torch.manual_seed(int(study["seed"]))
        self.schema = study_schema(study)
        n_nodes = federation_size(study["federation"])
        self.strategy = wrap_central_dp(build_strategy(study["strategy"], n_nodes), study, n_nodes)
        node_ids = _wait_for_nodes(
            grid, int(study["strategy"]["min_nodes"]), float(study["timeout"])
        )
        self.rounds = [RoundRecord(0)]
        fixed = (
            GlobalStats.from_dict(json.loads(saved["statistics"])) if saved is not None else None
        )
        approvals.begin(
            study
        )  # the manifest hash every node checks (medfed.server.study.approvals)
        try:
            self.hospitals, self.stats = federated_statistics(
                grid, study, node_ids, self.rounds[0].failures, fixed
            )
        except StudyError as exc:
            approvals.finish(study, {}, self.rounds[0].failures, "study-end", str(exc))
            raise
        approvals.finish(study, self.hospitals, self.rounds[0].failures, "study-started")
        self.cohort = Cohort(
            grid, study, self.hospitals, json.dumps(self.stats.to_dict()), self._restore_joined
        )
        self.layout = new_model(
            self.schema, self.stats, n_inputs(self.schema, self.stats, study), study
        ).state_dict()
        initial = pack(self.layout)  # the weights travel as one flat vector per dtype
        self.dtypes = {key: tensor.dtype for key, tensor in initial.items()}
        self.arrays = ArrayRecord(initial)
        self.first_round = 1
        if saved is not None:
            self._restore(saved)
        sizes = {h["name"]: int(h["n_train"]) for h in self.hospitals.values()}
        noise = planned_noise(study, sizes)
        study["privacy"]["planned_noise_multiplier"] = noise  # config.yaml records it
        study["privacy"]["planned_lr"] = planned_lr(study, sizes, noise)
        ckpt.write_config(study)
        if observer:
            observer.on_start(study, [h["name"] for h in self.hospitals.values()])
        self.train_config = round_config(study, self.hospitals)
        self.gate = cohort_gate(study, self.hospitals, self.rounds)
        self.screening = ScreeningConfig.from_study(study)
        self.secure = bool(study.get("secure_aggregation"))
        self.view: Any = None
        self.ready: list[int] = []
        self.stopped = ""
        self.early = early.tracker(study, self.schema, saved)  # best round: from the checkpoint

    def _restore(self, saved: dict[str, Any]) -> None:
        """Weights, records, strategy and random state of the checkpoint (see checkpoint.py)."""
        from medfed.server.study import checkpoint as ckpt

        failures = self.rounds[0].failures
        self.arrays = ArrayRecord(dict(saved["state"]))
        self.rounds = [RoundRecord(**r) for r in json.loads(saved["rounds"])]
        self.rounds[0].failures.update(failures)
        ckpt.load_strategy_state(self.strategy, saved["strategy"])
        ckpt.restore_random(saved)
        self.first_round = int(saved["server_round"]) + 1
        resume.restore_nodes(  # heads, norms, SCAFFOLD's c_i: each node reloads its own
            self.grid, self.study, self.hospitals, self.rounds, self.first_round - 1
        )

    def _restore_joined(self, joined: dict[int, dict[str, Any]]) -> dict[int, str]:
        """Nodes that (re)joined mid-study get back the state they kept (a restarted node)."""
        done = self.rounds[-1].server_round - 1  # called as round ``done + 1`` starts
        return resume.ask_nodes(self.grid, self.study, joined, self.rounds, done)

    def train_round(self, server_round: int) -> bool:
        """Run round ``server_round``; ``False`` when the study has to stop (``self.stopped``)."""
        grid, study, rounds, hospitals = self.grid, self.study, self.rounds, self.hospitals
        t0, bytes0 = time.perf_counter(), _wire_total(grid)
        rounds.append(RoundRecord(server_round))
        self.view, reason = self.cohort.ready(rounds[-1].failures)
        self.view, self.ready, reason = roles.training_view(
            grid, study, hospitals, self.view, reason
        )
        if self.view is None:
            self.stopped = f"round {server_round}: {reason}; the study stopped there"
            rounds.pop()  # the round that could not start is not part of the study
            return False
        messages = list(
            self.strategy.configure_train(server_round, self.arrays, self.train_config, self.view)
        )
        aggregated = None
        if self.secure:  # SecAgg+: the server only ever holds the masked sum (nothing to screen)
            from medfed.strategies.secagg import secure_train_round

            replies, aggregated = secure_train_round(
                grid, self.strategy, messages, server_round, study, hospitals
            )
        else:
            replies = send_and_receive(grid, messages, float(study["timeout"]))
        replies = by_site(replies, hospitals)  # sums in one order on every engine
        evaluating, evaluated = roles.evaluate_only(
            grid,
            self.arrays,
            roles.evaluators({n: hospitals[n] for n in self.ready}),
            server_round,
            study,
        )
        self.cohort.missing(messages + evaluating, replies + evaluated, rounds[-1].failures)
        self.cohort.lost_state(replies + evaluated)
        record_evaluation(rounds[-2], replies + evaluated, self.schema, hospitals)
        if self.early is not None:  # the sent model (after the previous round) on validation
            self.early.observe(server_round - 1, self.arrays, replies + evaluated)
        rounds[-1].failures.update(
            {_hospital(hospitals, r): r.error.reason or "" for r in evaluated if r.has_error()}
        )
        record_training(rounds[-1], replies, hospitals)
        if not self.secure:
            replies = getattr(self.strategy, "take_controls", list)(replies)  # SCAFFOLD's
            declared = {node_id: int(h["n_train"]) for node_id, h in hospitals.items()}
            replies, rounds[-1].rejected = screen_replies(
                replies,
                self.arrays,
                declared,
                self.screening,
                lambda reply: _hospital(hospitals, reply),
            )
            for name in rounds[-1].rejected:
                rounds[-1].train.pop(name, None)
        rounds[-1].skipped = self.gate.admit(server_round, replies)
        if not self.secure and not rounds[-1].skipped:
            aggregated, _ = self.strategy.aggregate_train(server_round, replies)
        if aggregated is not None and not rounds[-1].skipped:
            self.arrays = keep_dtypes(aggregated, self.dtypes)
        rounds[-1].seconds = time.perf_counter() - t0
        if bytes0 is not None and (bytes1 := _wire_total(grid)) is not None:
            rounds[-1].wire_bytes = bytes1 - bytes0
        if not rounds[-1].train:
            last = rounds[-1]
            self.stopped = (
                f"round {server_round}: no hospital trained ({len(last.refusals)} "
                f"refused, {len(last.failures)} failed, {len(last.rejected)} "
                "rejected); the study stopped there"
            )
        elif rounds[-1].skipped:
            self.stopped = self.gate.stop_reason(rounds[-1].skipped)
        self._checkpoint(server_round)
        self.status.update(rounds, "stopped" if self.stopped else "running", self.stopped)
        if self.observer:
            self.observer.on_round(server_round - 1, rounds[-2])
        early_stop = self.early is not None and self.early.best.should_stop()
        return not self.stopped and not early_stop

    def _checkpoint(self, server_round: int) -> None:
        from medfed.server.study import checkpoint as ckpt

        every = int((self.study.get("checkpoint") or {}).get("every", 1) or 0)
        last = server_round == int(self.study["rounds"])
        if every and self.study.get("output_dir") and (server_round % every == 0 or last):
            data = ckpt.payload(
                self.study,
                server_round,
                self.arrays.to_torch_state_dict(),
                self.rounds,
                self.stats.to_dict(),
                self.strategy,
            )
            if self.early is not None:  # the best round so far and its weights
                data["early_stopping"] = self.early.state_dict()
            self._writer.submit(Path(self.study["output_dir"]) / ckpt.FILENAME, data)

    def flush(self) -> None:
        """Wait until the checkpoint of the last finished round is on disk."""
        self._writer.close()

    def finish(self, wall_seconds: float) -> StudyResult:
        """Score the final model everywhere (under early stopping: the best round's, the test
        split once) and return the result."""
        if self.early is not None and not self.stopped:
            self.early.last_look(
                self.grid,
                self.arrays,
                self.rounds[-1].server_round,
                sorted(set(self.grid.get_node_ids()) & set(self.hospitals)),
                float(self.study["timeout"]),
            )
            self.arrays = self.early.arrays or self.arrays
        _final_evaluation(
            self.grid, self.arrays, self.rounds[-1], self.schema, self.hospitals, self.study
        )
        if self.observer:
            self.observer.on_round(self.rounds[-1].server_round, self.rounds[-1])
        personalised: dict[str, Any] = {}
        if not self.stopped and personalise.wanted(self.study):
            personalised = personalise.personalise_hospitals(
                self.grid, self.arrays, self.hospitals, self.rounds, self.study, self.schema
            )
        approvals.end(self.study, self.stopped)
        wire = getattr(self.grid, "wire", None)
        return StudyResult(
            study=self.study,
            schema=self.schema,
            hospitals=self.hospitals,
            statistics=self.stats,
            rounds=self.rounds,
            final_state=unpack(self.arrays.to_torch_state_dict(), self.layout),
            wall_seconds=wall_seconds,
            wire_bytes={"sent": wire.sent, "received": wire.received} if wire else {},
            stopped=self.stopped,
            central_dp=central_dp_report(self.strategy),
            personalised=personalised,
            early_stopping=self.early.summary() if self.early is not None else {},
        )


def _check_resumable(study: dict[str, Any], saved: dict[str, Any]) -> str:
    """The checkpointed study's id, after checking it is the study being resumed."""
    from medfed.server.study.checkpoint import CheckpointError

    for key in ("task", "strategy", "federation", "seed", "train", "privacy", "preprocessing"):
        if saved.get(key) != study.get(key):
            raise CheckpointError(
                f"the checkpoint in {study['resume']} belongs to a study with "
                f"another {key} setting; resume it with its own config.yaml"
            )
    return str(saved["study_id"])


def _final_evaluation(
    grid: Grid,
    arrays: ArrayRecord,
    record: RoundRecord,
    schema: TaskSchema,
    hospitals: dict[int, dict[str, Any]],
    study: dict[str, Any],
) -> None:
    """Score the final model at every connected hospital.

    The messages are built here rather than by the strategy: evaluation is not bound by
    ``min_nodes`` (Flower's sampling would wait for that many nodes without a timeout).
    """
    messages = [
        Message(
            RecordDict(
                {"arrays": arrays, "config": ConfigRecord({"server-round": record.server_round})}
            ),
            dst_node_id=node_id,
            message_type="evaluate",
            group_id=str(record.server_round),
        )
        for node_id in sorted(set(grid.get_node_ids()) & set(hospitals))
    ]
    record_evaluation(
        record, send_and_receive(grid, messages, float(study["timeout"])), schema, hospitals
    )


def keep_dtypes(arrays: ArrayRecord, dtypes: dict[str, torch.dtype]) -> ArrayRecord:
    """The aggregate in the model's own dtypes (FedAdam and friends return float64 arrays)."""
    state = arrays.to_torch_state_dict()
    if all(state[key].dtype == dtype for key, dtype in dtypes.items()):
        return arrays
    return ArrayRecord({key: state[key].to(dtype) for key, dtype in dtypes.items()})


def cohort_gate(
    study: dict[str, Any], hospitals: dict[int, dict[str, Any]], rounds: list[RoundRecord]
) -> CohortGate:
    """The study's cohort gate: ``strategy.min_nodes``, the largest ``min_cohort`` the hospitals
    declared in round 0, and the skipped rounds a resumed study ended with."""
    in_a_row = 0
    for record in reversed(rounds[1:]):
        if not record.skipped:
            break
        in_a_row += 1
    return CohortGate(
        int(study["strategy"]["min_nodes"]),
        max((int(h.get("min_cohort", 1)) for h in hospitals.values()), default=1),
        int(study.get("stop_after_skipped", 3)),
        in_a_row,
    )


def round_config(study: dict[str, Any], hospitals: dict[int, dict[str, Any]]) -> ConfigRecord:
    """What every train message carries besides the weights: the expected cohort size (for the
    nodes' ``min_cohort`` policy) and the DP delta, below 1/n of the smallest site by default."""
    from medfed.models.privacy import default_delta

    fraction = float(study["strategy"].get("fraction_train", 1.0))
    training = [hospitals[node_id] for node_id in roles.trainers(hospitals)]
    cohort = max(int(len(training) * fraction), int(study["strategy"]["min_nodes"]))
    delta = study["privacy"].get("delta")
    if delta is None:
        delta = default_delta(min(h["n_train"] for h in training))
    return ConfigRecord({"cohort-size": cohort, "dp-delta": float(delta)})


def _wire_total(grid: Grid) -> int | None:
    """Bytes the grid has carried so far, when it counts them (the in-process engine does)."""
    wire = getattr(grid, "wire", None)
    return None if wire is None else int(wire.total)


def _quiet_flower(study: dict[str, Any]) -> None:
    """Silence Flower's per-round INFO lines unless the study asks for them (``verbose``)."""
    if not study.get("verbose"):
        from flwr.common.logger import FLOWER_LOGGER

        FLOWER_LOGGER.setLevel(WARNING)
