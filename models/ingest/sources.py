"""Where a hospital's rows come from: one entry point for every engine and every baseline.

:func:`load_site` returns one hospital's train and test frames (schema columns + target) from
the study configuration and the hospital's position in the federation. The built-in
``synthetic`` federation generates the site locally from the seed, so a node only ever produces
its own rows; the pooled and local-only baselines call the same function for every site.
The ``sites`` federation reads real exports instead: hospital ``i`` is the dataset card
``federation.cards[i]`` (see :mod:`medfed.models.ingest.cards`), split as its card says. The
``nodes``
federation of a deployed study has no rows here: each node replaces it with its own card.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from medfed.models.ingest.cards import CardError, check_task, load_card, read_card_data
from medfed.models.ingest.synthetic import SkewConfig, generate_site, site_sizes
from medfed.models.schema import TaskSchema


class DataConfigError(ValueError):
    """The ``federation`` section cannot produce a hospital's data; the message says why."""


@dataclass
class SiteData:
    """One hospital's rows: its name, training and test frames (schema columns + target)."""

    name: str
    train: pd.DataFrame
    test: pd.DataFrame
    test_oracle: np.ndarray | None = None
    role: str = "train"  # or "evaluate": a card's evaluation-only site (never trains)


MAX_NODES = 10_000
"""Hospitals a ``nodes`` federation may have when it does not say how many: the cross-silo scale
medfed's defaults (e.g. the DP delta) assume."""


def federation_size(federation: Mapping[str, Any]) -> int:
    """Number of hospitals the ``federation`` section describes.

    For ``nodes`` (a deployed study: the hospitals are whatever nodes connect) that is
    ``federation.hospitals`` when given, else the upper bound :data:`MAX_NODES`: the callers use
    the size to bound ``strategy.min_nodes`` and to size the central-DP population, which asks
    for ``federation.hospitals`` (:func:`medfed.strategies.central_dp.check_central`).
    """
    if federation.get("name") == "nodes":
        n = federation.get("hospitals")
        if n is None:
            return MAX_NODES
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise DataConfigError(
                f"federation.hospitals must be a positive number of hospitals or null, got {n!r}"
            )
        return n
    if federation.get("name") == "synthetic":
        n = int(federation.get("hospitals", 0))
        if n < 1:
            raise DataConfigError(f"federation.hospitals must be at least 1, got {n}")
        sizes = federation.get("sizes")
        if sizes is not None and len(sizes) != n:
            raise DataConfigError(f"federation.sizes lists {len(sizes)} sizes for {n} hospitals")
        return n
    if federation.get("name") == "sites":
        cards = federation.get("cards")
        if isinstance(cards, str) or not cards:
            raise DataConfigError(
                "federation=sites needs a list of dataset cards, e.g. "
                "federation.cards=[a.yaml,b.yaml]"
            )
        return len(cards)
    raise DataConfigError(
        f"federation={federation.get('name')!r} is unknown; use synthetic, sites or nodes"
    )


def _card_site(schema: TaskSchema, federation: Mapping[str, Any], index: int) -> SiteData:
    """Hospital ``index`` of a ``sites`` federation: the rows its dataset card describes."""
    path = str(federation["cards"][index])
    min_cohort = federation.get("min_cohort")
    try:
        card = load_card(path)
        check_task(card, schema)
        data = read_card_data(
            card, schema, min_cohort=None if min_cohort is None else int(min_cohort)
        )
    except CardError as exc:
        raise DataConfigError(str(exc)) from None
    if not data.report.usable:
        more = len(data.report.errors) - 1
        extra = f" (and {more} more problem(s))" if more else ""
        raise DataConfigError(
            f"{data.report.errors[0]}{extra}; run `medfed node check "
            f"--dataset {path}` for the full report"
        )
    return SiteData(data.name, data.train, data.test, role=card.role)


def load_site(schema: TaskSchema, federation: Mapping[str, Any], index: int, seed: int) -> SiteData:
    """Load hospital ``index`` of the federation (its rows only).

    Parameters
    ----------
    schema
        The task the rows must follow.
    federation
        The study's ``federation`` config section.
    index
        The hospital's position, 0-based (Flower's ``partition-id``).
    seed
        The study seed; the synthetic generator derives the site's randomness from it (a card's
        split has its own seed, so a hospital's test rows do not change with the study).
    """
    if federation.get("name") == "nodes":
        raise DataConfigError(
            "federation=nodes has no rows of its own: each deployed node "
            "reads its dataset card (medfed node start --dataset CARD)"
        )
    n = federation_size(federation)
    if not 0 <= index < n:
        raise DataConfigError(f"hospital index {index} is outside the federation of {n}")
    if federation.get("name") == "sites":
        return _card_site(schema, federation, index)
    sizes = site_sizes(
        n,
        min_size=int(federation["min_size"]),
        max_size=int(federation["max_size"]),
        seed=seed,
        sizes=federation.get("sizes"),
    )
    skew = SkewConfig(**dict(federation.get("skew") or {}))
    site = generate_site(
        schema,
        index,
        n,
        n_rows=sizes[index],
        test_fraction=float(federation["test_fraction"]),
        skew=skew,
        seed=seed,
    )
    return SiteData(site.name, site.train, site.test, site.test_oracle)
