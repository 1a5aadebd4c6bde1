"""The node's view of a study: its own rows, loaded once per run and encoded once per study.

A study reaches a node in three kinds of message (see :mod:`medfed.client.app`): ``query.stats``
(round 0: the configuration; the node answers with additive statistics of its training split,
never a row), ``query.prepare`` (the merged global statistics) and ``train``/``evaluate`` (the
global weights). The memoised loaders below are keyed by the study's JSON, so every message of a
run reuses the same encoded arrays and a new study never sees a previous one's.

In deployment the node's own configuration (``flower-supernode --node-config``, written by
``medfed node start``) names its ``dataset`` card, ``policy`` file and ``ledger-dir``;
:func:`local_study` puts them into the study before anything reads it, so the data, policy and
ledger never come from the server.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from medfed.client.ledger import ledger_path
from medfed.client.ledger_binding import binding_path
from medfed.client.policy import load_policy
from medfed.models.encoding import GlobalStats, site_statistics, suppress_small_cells
from medfed.models.imputation import wants_histograms
from medfed.models.ingest.sources import SiteData, load_site
from medfed.models.pipeline import PreparedSite, prepare_site, study_schema
from medfed.models.schema import TaskSchema

STUDY_STATE = "medfed-study"
"""The ``context.state`` ConfigRecord holding what the node received in round 0."""


def received_study(context: Any) -> tuple[str, str]:
    """The configuration and statistics JSON this node received in round 0 (kept in the run's
    ``context.state``)."""
    if STUDY_STATE not in context.state.config_records:
        raise RuntimeError(
            "this node has no study configuration for the run: the server must "
            "send round 0 (query.stats and query.prepare) before training"
        )
    record = context.state.config_records[STUDY_STATE]
    return str(record["config-json"]), str(record.get("statistics-json", ""))


def site_index(node_config: Mapping[str, Any]) -> int:
    """The hospital's position in the study's federation: Flower's ``partition-id`` in
    simulation, 0 on a deployed node (its study lists only its own card). It picks the rows to
    load, never a seed: seeds come from the site's name
    (:func:`medfed.models.pipeline.site_key`), the same on every engine."""
    return 0 if node_config.get("dataset") else int(node_config.get("partition-id", 0))


def local_study(config_json: str, node_config: Mapping[str, Any]) -> str:
    """The study as this node runs it (JSON); unchanged unless ``node_config`` has ``dataset``.

    A deployed node replaces what the server sent with its own settings: its dataset card (as a
    one-site ``sites`` federation), its policy file (``policy``, else the shipped default
    policy), its ledger (``<ledger-dir>/<site>.ledger.jsonl``, else ``<card>.ledger.jsonl`` where
    ``medfed node ledger --dataset CARD`` reads it) and DP noise drawn from the OS
    (``secure_rng``), so a coordinator can neither redirect the node's data and ledger, nor
    loosen its policy, nor predict its noise.
    """
    dataset = node_config.get("dataset")
    if not dataset:
        return config_json
    policy = Path(str(node_config.get("policy") or files("medfed.conf") / "policy/default.yaml"))
    load_policy(policy)  # a malformed policy stops the node with the file's name
    ledger_dir = node_config.get("ledger-dir")
    study = json.loads(config_json)
    study["federation"] = {"name": "sites", "cards": [str(dataset)], "min_cohort": None}
    study["policy"] = yaml.safe_load(policy.read_text()) or {}
    study["policy"].setdefault("require_approval", True)  # a deployed node approves its studies
    study["privacy"].update(
        secure_rng=True,
        ledger_dir=str(ledger_dir) if ledger_dir else None,
        ledger_file=None if ledger_dir else str(ledger_path(str(dataset))),
        ledger_binding=str(binding_path(str(dataset))),
    )
    return json.dumps(study)


@lru_cache(maxsize=16)
def _site(config_json: str, index: int) -> SiteData:
    study = json.loads(config_json)
    return load_site(study_schema(study), study["federation"], index, int(study["seed"]))


def site_summary(config_json: str, index: int) -> tuple[str, int, int, dict[str, Any]]:
    """Round 0: name, train and test sizes, and the additive statistics of the training split
    (with histograms when the study imputes medians, :mod:`medfed.models.imputation`).

    Category cells below the study's ``preprocessing.min_cell`` are suppressed here, on the node,
    before anything is sent.
    """
    study = json.loads(config_json)
    site = _site(config_json, index)
    stats = suppress_small_cells(
        site_statistics(site.train, study_schema(study), histograms=wants_histograms(study)),
        int(study["preprocessing"]["min_cell"]),
    )
    return site.name, len(site.train), len(site.test), stats


def site_role(config_json: str, index: int) -> str:
    """``train``, or ``evaluate`` for an evaluation-only site (its card's ``role``)."""
    return _site(config_json, index).role


def declared_min_cohort(config_json: str, site_name: str) -> int:
    """The ``min_cohort`` of this hospital's policy, sent in round 0 so the coordinator skips
    rounds with fewer accepted updates (:mod:`medfed.strategies.cohort_gate`)."""
    from medfed.client.policy import policy_for_site

    return policy_for_site(json.loads(config_json).get("policy"), site_name).min_cohort


@lru_cache(maxsize=16)
def study_parts(
    config_json: str, statistics_json: str
) -> tuple[dict[str, Any], TaskSchema, GlobalStats]:
    """The parsed study, its schema and the global statistics (parsed once per run, not per
    message; callers must not modify the returned study)."""
    study = json.loads(config_json)
    return study, study_schema(study), GlobalStats.from_dict(json.loads(statistics_json))


@lru_cache(maxsize=16)
def prepared_site(config_json: str, statistics_json: str, index: int) -> PreparedSite:
    """The node's rows encoded with the study's statistics."""
    study, schema, stats = study_parts(config_json, statistics_json)
    site = _site(config_json, index)
    return prepare_site(site.name, site.train, site.test, schema, stats, study)
