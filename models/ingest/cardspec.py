"""The dataset card: a YAML file beside a hospital's export that maps it onto a task schema.

A card says where the rows are (CSV or Parquet, by file extension, relative to the card), how the
CSV is written, what the local columns are called, how local codes and units translate into the
schema's, which column is the target, and what to do with rows that cannot be read::

    name: cleveland                      # the site name used in every report
    task: diagnosis                      # a shipped task, or the path of a schema YAML
    train: processed.cleveland.data
    test: null                           # an explicit test file, or null for a seeded split
    split: {test_fraction: 0.34, seed: 43, stratify: true}
    csv: {header: false, delimiter: ",", missing: ["?"], encoding: utf-8}
                                         # also decimal: ",", thousands: "." for 1.234,5
    columns: [age, sex, cp, trestbps, chol, ...]    # names of a header-less file's columns
    rename: {trestbps: resting_bp, chol: cholesterol}
    values: {sex: {0: female, 1: male}}              # local codes -> schema categories or values
    units: {chol: mmol/L}                            # converted into the schema's unit
    target: {column: num, map: {0: 0, 1: 1, 2: 1, 3: 1, 4: 1}}
    on_invalid_row: drop                             # or fail
    min_cohort: 20                                   # optional: fewest training rows accepted
    column_missing: {chol: [0], thal: ["?", "-9"]}   # per export column: its not-measured codes
    derive: {prior_visits: "n_out + n_emerg + n_in"} # a feature computed from export columns
    drop: [free_text_notes]                          # export columns left out on purpose
    role: train                                      # or evaluate: test metrics only, no training
    id_column: patient_id                            # optional: names rows in predictions

An empty cell is always missing; ``csv.missing`` lists the other missing-value markers, and only
those: a value such as ``None`` that is a real category stays a category. Codes are compared as
text after normalising numbers (``1``, ``1.0`` and ``"1"`` are the same code). The card is read as
YAML 1.2 as far as it matters here: ``yes``/``no``/``on``/``off`` stay text, ``010`` is ten.
Unknown keys are errors.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import yaml

from medfed.models.ingest.cardkeys import DerivedColumn, card_extensions
from medfed.models.ingest.cardvalues import CardError, canonical_code
from medfed.models.ingest.cardvalues import keys as _keys
from medfed.models.ingest.cardvalues import names as _names
from medfed.models.ingest.cardvalues import text as _text

_CARD_KEYS = {
    "name",
    "task",
    "train",
    "test",
    "split",
    "csv",
    "columns",
    "rename",
    "values",
    "units",
    "target",
    "on_invalid_row",
    "min_cohort",
    "column_missing",
    "derive",
    "drop",
    "role",
    "id_column",
}
_SPLIT_KEYS = {"test_fraction", "seed", "stratify"}
_CSV_KEYS = {"header", "delimiter", "missing", "encoding", "decimal", "thousands"}
_TARGET_KEYS = {"column", "map"}


class _CardLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans and decimal integers (codes stay what they look like)."""


_CardLoader.yaml_implicit_resolvers = {
    first: [
        (tag, rx)
        for tag, rx in resolvers
        if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:int")
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_CardLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_CardLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^[-+]?[0-9]+$"), list("-+0123456789")
)


@dataclass(frozen=True)
class SplitSpec:
    """How to split the rows when the card names no test file (stratified by class if asked)."""

    test_fraction: float = 0.25
    seed: int = 0
    stratify: bool = True


@dataclass(frozen=True)
class CsvSpec:
    """How the CSV is written. ``missing`` holds the markers besides the empty cell."""

    header: bool = True
    delimiter: str = ","
    missing: tuple[str, ...] = ("NA",)
    encoding: str = "utf-8"
    decimal: str = "."  # "," for 1,5; with thousands "." also 1.234,5
    thousands: str = ""  # "", ".", ",", " ", "'": the separator of digit groups, if any


@dataclass(frozen=True)
class TargetSpec:
    """The local target column (default: the schema target's name) and its code map."""

    column: str | None = None
    map: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class DatasetCard:
    """A validated dataset card; paths are resolved against the card's folder."""

    path: Path
    name: str
    task: str
    train: Path
    test: Path | None = None
    split: SplitSpec = SplitSpec()
    csv: CsvSpec = CsvSpec()
    columns: tuple[str, ...] | None = None
    rename: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    values: Mapping[str, Mapping[str, str]] = field(default_factory=lambda: MappingProxyType({}))
    units: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    target: TargetSpec = TargetSpec()
    on_invalid_row: Literal["drop", "fail"] = "drop"
    min_cohort: int | None = None
    column_missing: Mapping[str, frozenset[str]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    derive: Mapping[str, DerivedColumn] = field(default_factory=lambda: MappingProxyType({}))
    drop: tuple[str, ...] = ()
    role: Literal["train", "evaluate"] = "train"
    id_column: str | None = None  # written beside each prediction by `medfed predict`


def _code_map(where: str, raw: Any) -> Mapping[str, str]:
    """Codes -> values, both as canonical text; ``true`` also matches ``True`` and ``TRUE``."""
    if not isinstance(raw, dict) or not raw:
        raise CardError(f"{where} must be a non-empty mapping of codes to values")
    out: dict[str, str] = {}
    for key, value in raw.items():
        if value is None or isinstance(value, list | dict):
            raise CardError(f"{where}: code {key!r} must map to one value, got {value!r}")
        code, mapped = canonical_code(key), canonical_code(value)
        if code is None or mapped is None:
            raise CardError(f"{where}: codes and values must not be empty")
        spellings = (code, code.title(), code.upper()) if isinstance(key, bool) else (code,)
        for spelling in spellings:
            out[spelling] = mapped
    return MappingProxyType(out)


def _split(where: str, raw: Any) -> SplitSpec:
    raw = _keys(where, raw, _SPLIT_KEYS)
    fraction, seed = raw.get("test_fraction", 0.25), raw.get("seed", 0)
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 <= fraction < 1:
        raise CardError(f"{where}: test_fraction must be a number in [0, 1), got {fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise CardError(f"{where}: seed must be a non-negative integer, got {seed!r}")
    stratify = raw.get("stratify", True)
    if not isinstance(stratify, bool):
        raise CardError(f"{where}: stratify must be true or false, got {stratify!r}")
    return SplitSpec(float(fraction), seed, stratify)


def _csv(where: str, raw: Any) -> CsvSpec:
    raw = _keys(where, raw, _CSV_KEYS)
    header = raw.get("header", True)
    if not isinstance(header, bool):
        raise CardError(f"{where}: header must be true or false, got {header!r}")
    given = raw.get("delimiter", ",")
    delimiter = {"tab": "\t", "\\t": "\t"}.get(given, given) if isinstance(given, str) else given
    if not isinstance(delimiter, str) or len(delimiter) != 1 or delimiter in '"\r\n':
        raise CardError(
            f'{where}: delimiter must be one character such as "," ";" or "\\t", got {given!r}'
        )
    missing = raw.get("missing", ["NA"])
    if not isinstance(missing, list):
        missing = [missing]
    markers = tuple(_text(f"{where}: missing marker", m, empty=True).strip() for m in missing)
    encoding = _text(f"{where}: encoding", raw.get("encoding", "utf-8"))
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise CardError(
            f"{where}: unknown encoding {encoding!r}; use e.g. utf-8, latin-1 or cp1252"
        ) from None
    decimal, thousands = raw.get("decimal", "."), raw.get("thousands", "") or ""
    if decimal not in (".", ","):
        raise CardError(f'{where}: decimal must be "." or ",", got {decimal!r}')
    if thousands not in ("", ".", ",", " ", "'", "\u00a0") or thousands == decimal:
        raise CardError(
            f'{where}: thousands must be one of "." "," " " "\'" and not '
            f"the decimal mark {decimal!r}, got {thousands!r}"
        )
    return CsvSpec(header, delimiter, markers, encoding, decimal, thousands)


def _target(where: str, raw: Any) -> TargetSpec:
    raw = _keys(where, raw, _TARGET_KEYS)
    column = raw.get("column")
    mapping = raw.get("map")
    return TargetSpec(
        None if column is None else _text(f"{where}.column", column),
        MappingProxyType({}) if mapping is None else _code_map(f"{where}.map", mapping),
    )


def _text_map(where: str, raw: Any) -> Mapping[str, str]:
    if raw is None:
        return MappingProxyType({})
    if not isinstance(raw, dict):
        raise CardError(f"{where} must map local column names to names")
    return MappingProxyType(
        {_text(f"{where} key", k): _text(f"{where}.{k}", v) for k, v in raw.items()}
    )


def _file(card: Path, where: str, raw: Any) -> Path:
    path = Path(_text(where, raw))
    return path if path.is_absolute() else card.parent / path


def _min_cohort(where: str, raw: Any) -> int | None:
    if raw is not None and (isinstance(raw, bool) or not isinstance(raw, int) or raw < 1):
        raise CardError(f"{where}: min_cohort must be a positive integer, got {raw!r}")
    return raw


def _read_yaml(path: Path) -> Any:
    if not path.is_file():
        raise CardError(f"dataset card {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise CardError(f"dataset card {path} cannot be read as UTF-8 text ({exc})") from None
    try:
        return yaml.load(text, Loader=_CardLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid syntax"
        raise CardError(f"{path}: not valid YAML{where} ({problem}); fix the syntax") from None


def load_card(path: str | Path) -> DatasetCard:
    """Read and validate the dataset card at ``path``.

    Raises
    ------
    CardError
        With one sentence naming the card (and the line of a YAML syntax error, or the key).
    """
    card = Path(path)
    raw = _keys(f"dataset card {card}", _read_yaml(card), _CARD_KEYS)
    where = str(card)
    for key in ("task", "train"):
        if raw.get(key) is None:
            raise CardError(f"{where}: missing required key '{key}'")
    csv = _csv(f"{where}: csv", raw.get("csv"))
    columns = _names(f"{where}: columns", raw.get("columns"))
    if not csv.header and columns is None:
        raise CardError(
            f"{where}: csv.header is false, so list the file's column names under 'columns'"
        )
    if csv.header and columns is not None:
        raise CardError(
            f"{where}: 'columns' is for a header-less file; set csv.header: false or "
            "drop 'columns' (use 'rename' to change header names)"
        )
    on_invalid = raw.get("on_invalid_row", "drop")
    if on_invalid not in ("drop", "fail"):
        raise CardError(f"{where}: on_invalid_row must be drop or fail, got {on_invalid!r}")
    values = raw.get("values") or {}
    if not isinstance(values, dict):
        raise CardError(f"{where}: values must map column names to code mappings")
    return DatasetCard(
        path=card,
        name=_text(f"{where}: name", raw.get("name", card.stem)),
        task=_text(f"{where}: task", raw["task"]),
        train=_file(card, f"{where}: train", raw["train"]),
        test=None if raw.get("test") is None else _file(card, f"{where}: test", raw["test"]),
        split=_split(f"{where}: split", raw.get("split")),
        csv=csv,
        columns=columns,
        rename=_text_map(f"{where}: rename", raw.get("rename")),
        values=MappingProxyType(
            {
                _text(f"{where}: values key", k): _code_map(f"{where}: values.{k}", v)
                for k, v in values.items()
            }
        ),
        units=_text_map(f"{where}: units", raw.get("units")),
        target=_target(f"{where}: target", raw.get("target")),
        on_invalid_row=on_invalid,
        min_cohort=_min_cohort(where, raw.get("min_cohort")),
        **card_extensions(where, raw),
        id_column=None
        if raw.get("id_column") is None
        else _text(f"{where}: id_column", raw["id_column"]),
    )
