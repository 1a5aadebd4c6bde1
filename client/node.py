"""The node's view of a study: its own rows, loaded once per run and encoded once per study.

A study reaches a node in three kinds of message (see :mod:`medfed.client.app`): ``query.stats``
(round 0: the configuration; the node answers with additive statistics of its training split,
never a row), ``query.prepare`` (the merged global statistics) and ``train``/``evaluate`` (the
global weights). The memoised loaders below are keyed by the study's JSON, so every message of a
run reuses the same encoded arrays and a new study never sees a previous one's.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from medfed.models.data import SiteData, load_site
from medfed.models.encoding import GlobalStats, site_statistics, suppress_small_cells
from medfed.models.pipeline import PreparedSite, prepare_site, study_schema
from medfed.models.schema import TaskSchema


@lru_cache(maxsize=16)
def _site(config_json: str, index: int) -> SiteData:
    study = json.loads(config_json)
    return load_site(study_schema(study), study["federation"], index, int(study["seed"]))


def site_summary(config_json: str, index: int) -> tuple[str, int, int, dict[str, Any]]:
    """Round 0: name, train and test sizes, and the additive statistics of the training split.

    Category cells below the study's ``preprocessing.min_cell`` are suppressed here, on the node,
    before anything is sent.
    """
    study = json.loads(config_json)
    site = _site(config_json, index)
    stats = suppress_small_cells(site_statistics(site.train, study_schema(study)),
                                 int(study["preprocessing"]["min_cell"]))
    return site.name, len(site.train), len(site.test), stats


@lru_cache(maxsize=16)
def study_parts(config_json: str, statistics_json: str) -> tuple[dict[str, Any], TaskSchema,
                                                                 GlobalStats]:
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
