"""No cell of the hospital's data in anything the node sends: the text half of the reply guard.

Replies carry numbers in fixed structures (:mod:`medfed.client.guard`), but an error reason is
free text: an exception raised while the node reads its export could quote a cell (a patient's
name typed into a numeric column, say), and Flower would carry that text to the coordinator,
into its logs and ``summary.json``. :func:`withhold_cells` replaces every cell of the node's
data that occurs in such a text with ``<cell withheld>`` before it leaves the node.

What counts as a cell: every distinct text cell of the node's data files (read exactly as a
study reads them, the header's names included: a header row may really be a patient's row),
except numbers (row numbers, counts and ranges are numbers too), cells shorter
than :data:`MIN_LENGTH` characters, and names the card or the task schema declare (column names,
codes, categories, missing-value markers, the site's name): those are vocabulary, not data.
Matching is case-insensitive and on whole cells at word boundaries. The vocabulary is held as
sorted 64-bit hashes (pandas' ``hash_array``), built on first use only (when a text has to be
checked: no cost while a study runs without errors), and kept per card file version.
No library offers this check (it is a lookup of word spans in a hash set); hence this module.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medfed.models.ingest.cardspec import CardError, DatasetCard, load_card
from medfed.models.ingest.cardvalues import NUMBER
from medfed.models.ingest.tables import TableReader

MIN_LENGTH = 3
MAX_WORDS = 12
WITHHELD = "<cell withheld>"
_WORD = re.compile(r"\w+")
_EDGES = re.compile(r"^\W+|\W+$")


def _fold(text: str) -> str:
    return _EDGES.sub("", text.strip()).casefold()


def _declared(card: DatasetCard) -> set[str]:
    """Names the card and its task declare: vocabulary, never patient data."""
    from medfed.models.ingest.cards import card_schema

    names = {
        card.name,
        card.task,
        *(card.columns or ()),
        *card.rename,
        *card.rename.values(),
        *card.units,
        *card.csv.missing,
        *card.values,
        card.target.column or "",
        *card.target.map,
        *card.target.map.values(),
    }
    for codes in card.values.values():
        names |= {*codes, *codes.values()}
    try:
        schema = card_schema(card)
    except CardError:
        return {_fold(n) for n in names}
    names |= {schema.name, schema.target.name, *schema.target.classes}
    for feat in schema.features:
        names |= {feat.name, *feat.categories}
    return {_fold(n) for n in names}


def _hash(texts: list[str]) -> np.ndarray:
    return pd.util.hash_array(np.asarray(texts, dtype=object), categorize=False)


def _sensitive(values: np.ndarray, declared: set[str]) -> list[str]:
    out = []
    for value in values:
        if not isinstance(value, str):
            continue
        folded = _fold(value)
        if len(folded) >= MIN_LENGTH and folded not in declared and not NUMBER.match(folded):
            out.append(folded)
    return out


def _file_cells(card: DatasetCard, path: Path, declared: set[str]) -> list[np.ndarray]:
    """Hashes of the sensitive distinct cells of one file, chunk by chunk (as far as readable)."""
    parts: list[np.ndarray] = []
    try:
        reader = TableReader(path, card.csv, card.columns)
        header = _sensitive(np.asarray(reader.names, dtype=object), declared)
        if header:  # when row 1 is data misread as a header, its cells are "column names"
            parts.append(_hash(header))
        for chunk in reader.chunks():
            for column in chunk.frame.columns:
                cells = _sensitive(pd.unique(chunk.frame[column].to_numpy(dtype=object)), declared)
                if cells:
                    parts.append(np.unique(_hash(cells)))
    except CardError:  # the messages about an unreadable file never quote it
        pass
    return parts


@lru_cache(maxsize=8)
def _vocabulary(card_path: str, version: tuple[int, ...]) -> np.ndarray:
    """Sorted hashes of the card's sensitive cells (``version``: file times, for the cache)."""
    del version
    try:
        card = load_card(card_path)
    except CardError:  # no data was read, so no message can quote it
        return np.zeros(0, np.uint64)
    declared = _declared(card)
    parts = [
        h
        for path in (card.train, card.test)
        if path is not None
        for h in _file_cells(card, path, declared)
    ]
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.uint64)


def vocabulary(card_path: str) -> np.ndarray:
    """The sensitive cells of the data ``card_path`` describes, as sorted hashes."""
    paths = [Path(card_path)]
    try:
        card = load_card(card_path)
        paths += [p for p in (card.train, card.test) if p is not None]
    except CardError:
        pass
    version = tuple(p.stat().st_mtime_ns if p.is_file() else 0 for p in paths)
    return _vocabulary(str(card_path), version)


def _spans(text: str) -> list[tuple[int, int]]:
    words = [m.span() for m in _WORD.finditer(text)]
    return [
        (words[i][0], words[j][1])
        for i in range(len(words))
        for j in range(i, min(i + MAX_WORDS, len(words)))
    ]


def withhold_cells(text: str, cells: np.ndarray) -> tuple[str, int]:
    """``text`` with every cell of ``cells`` (sorted hashes) replaced; and how many were."""
    spans = _spans(text)
    if not spans or not len(cells):
        return text, 0
    hashes = _hash([text[a:b].casefold() for a, b in spans])
    # ``cells`` is sorted and unique: a binary search per span, O(spans log cells), instead of
    # np.isin's sort of both arrays on every call (benchmarks/cellguard_cost.py measures it).
    at = np.minimum(np.searchsorted(cells, hashes), len(cells) - 1)
    found = cells[at] == hashes
    hits = sorted((spans[i] for i in np.flatnonzero(found)), key=lambda s: (s[0], -s[1]))
    out, end, count = [], 0, 0
    for start, stop in hits:
        if start < end:
            continue
        out += [text[end:start], WITHHELD]
        end, count = stop, count + 1
    return "".join(out) + text[end:], count


def card_of(study_json: str | None, node_config: Any) -> str | None:
    """The card whose data this node serves: its own (deployment) or the study's ``sites``
    entry at its partition (simulation); None for generated (synthetic) data."""
    if node_config.get("dataset"):
        return str(node_config["dataset"])
    if not study_json:
        return None
    federation = json.loads(study_json).get("federation", {})
    if federation.get("name") != "sites":
        return None
    cards = federation.get("cards") or []
    index = int(node_config.get("partition-id", 0))
    return str(cards[index]) if 0 <= index < len(cards) else None
