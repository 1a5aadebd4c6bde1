"""From a hospital's raw cells to frames in the data conventions of :mod:`medfed.models`.

Numeric and binary features become float columns with NaN for missing, categorical features
object columns of category strings with ``None`` for missing, and the target an int (0/1 or class
index) or float column. Column names go through the card's ``rename``, codes through ``values``
and ``target.map``, numbers through ``units``; a cell that still does not fit the schema marks its
row invalid (see :class:`~medfed.models.ingest.validation.RowFlags`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd
from pandas.api import types as ptypes

from medfed.models.ingest.cardspec import DatasetCard, canonical_code
from medfed.models.ingest.columns import ColumnPlan, plan_columns
from medfed.models.ingest.derived_columns import column_markers, prepare_table
from medfed.models.ingest.tables import RawTable
from medfed.models.ingest.units import Converter
from medfed.models.ingest.validation import RowFlags, ValidationReport, record_duplicates
from medfed.models.schema import Feature, TaskSchema

_MAX_ABS = 1e12
_TRUE, _FALSE = {"1", "true"}, {"0", "false"}
Cells = list[str | None]


def _isna(value: object) -> bool:
    try:
        return bool(pd.isna(value))  # type: ignore[call-overload]  # stubs lack object
    except (TypeError, ValueError):
        return False


def per_value(values: pd.Series | Cells, fn: Callable[[Any], Any], missing: Any = None) -> list:
    """``fn`` applied to each distinct non-missing value once (exports repeat values a lot)."""
    series = values if isinstance(values, pd.Series) else pd.Series(values, dtype=object)
    try:
        index, uniques = pd.factorize(series, use_na_sentinel=True)
    except TypeError:  # unhashable cells (Parquet lists): one call per cell
        return [missing if v is None else fn(v) for v in series.tolist()]
    table = np.empty(len(uniques) + 1, dtype=object)
    table[:-1] = [fn(u) for u in uniques]
    table[-1] = missing
    return table[index].tolist()


def _cell(value: Any, markers: frozenset[str], codes: Mapping[str, str]) -> str | None:
    if value is None or (not isinstance(value, str) and _isna(value)):
        return None
    text = value.strip() if isinstance(value, str) else canonical_code(value) or ""
    code = canonical_code(text)
    if not text or text in markers or code in markers:
        return None
    return codes.get(code or "", codes.get(text, text)) if codes else text


def cells(series: pd.Series, markers: frozenset[str], codes: Mapping[str, str]) -> Cells:
    """Stripped text per cell, ``None`` where missing; codes mapped through ``codes``."""
    return per_value(series, lambda value: _cell(value, markers, codes))


def _numbers(values: Cells, convert: Converter | None) -> tuple[np.ndarray, np.ndarray]:
    """Floats (NaN where missing or not a number) and the mask of present non-numbers."""
    present = np.array([v is not None for v in values], dtype=bool)
    numbers = pd.to_numeric(pd.Series(values, dtype=object), errors="coerce")
    floats = np.asarray(numbers, dtype=np.float64).copy()
    text = present & np.isnan(floats)
    if convert is not None:
        with np.errstate(over="ignore", invalid="ignore"):
            floats = convert(floats)
    return floats, text


def _numeric(
    values: Cells, feat: Feature, column: ColumnPlan, flags: RowFlags, report: ValidationReport
) -> np.ndarray:
    floats, text = _numbers(values, column.convert)
    flags.flag(
        "text in a numeric column",
        column.local,
        text,
        "text where a number is expected (list missing-value markers under csv.missing)",
    )
    with np.errstate(invalid="ignore"):
        absurd = ~np.isnan(floats) & ~(np.abs(floats) <= _MAX_ABS)
    flags.flag(
        "non-finite number",
        column.local,
        absurd,
        "inf, nan or a number too large to be a measurement",
    )
    floats[absurd] = np.nan
    low = -np.inf if feat.low is None else feat.low
    high = np.inf if feat.high is None else feat.high
    with np.errstate(invalid="ignore"):
        outside = ~np.isnan(floats) & ((floats < low) | (floats > high))
    unit = f" {feat.unit}" if feat.unit else ""
    count = flags.flag(
        "out of range",
        column.local,
        outside,
        f"outside the valid range [{feat.low:g}, {feat.high:g}]{unit} of '{feat.name}'"
        if feat.low is not None and feat.high is not None
        else f"outside the valid range of '{feat.name}'",
    )
    report.out_of_range[feat.name] = report.out_of_range.get(feat.name, 0) + count
    floats[outside] = np.nan
    return floats


def _yes_no(value: str) -> float:
    code = (canonical_code(value) or "").lower()
    return 1.0 if code in _TRUE else 0.0 if code in _FALSE else np.inf


def _binary(values: Cells, feat: Feature, column: ColumnPlan, flags: RowFlags) -> np.ndarray:
    out = np.array(per_value(values, _yes_no, np.nan), dtype=np.float64)
    bad = np.isinf(out)
    out[bad] = np.nan
    flags.flag(
        "not 0 or 1",
        column.local,
        bad,
        f"a value other than 0 or 1 for yes/no feature '{feat.name}' (map codes under values)",
    )
    return out


def _categorical(values: Cells, feat: Feature, column: ColumnPlan, flags: RowFlags) -> list:
    known = set(feat.categories)

    def category(value: str) -> str | None:
        code = value if value in known else canonical_code(value)
        return code if code in known else None

    out = per_value(values, category)
    bad = np.array(
        [v is not None and o is None for v, o in zip(values, out, strict=True)], dtype=bool
    )
    flags.flag(
        "unknown category",
        column.local,
        bad,  # the codes: node check --show-values
        f"unknown code(s) for '{feat.name}' (categories: {list(feat.categories)}); "
        f"map them under values.{column.local} or list them under csv.missing",
    )
    return out


def _class_index(value: str, schema: TaskSchema) -> float:
    target = schema.target
    if value in target.classes:
        return float(target.classes.index(value))
    code = (canonical_code(value) or "").lower()
    if target.kind == "binary":
        return 1.0 if code in _TRUE else 0.0 if code in _FALSE else np.nan
    n = len(target.classes)
    return float(code) if code.isdigit() and int(code) < n else np.nan


def _target(values: Cells, schema: TaskSchema, column: ColumnPlan, flags: RowFlags) -> np.ndarray:
    target = schema.target
    missing = np.array([v is None for v in values], dtype=bool)
    flags.flag("missing target", column.local, missing, f"the target '{target.name}' is missing")
    if target.kind == "continuous":
        y, _ = _numbers(values, column.convert)
        low = -np.inf if target.low is None else target.low
        high = np.inf if target.high is None else target.high
        with np.errstate(invalid="ignore"):
            y[~((y >= low) & (y <= high) & (np.abs(y) <= _MAX_ABS))] = np.nan
        expected = f"a number in [{target.low}, {target.high}]"
    else:
        y = np.array(per_value(values, lambda v: _class_index(v, schema), np.nan), dtype=float)
        expected = f"one of the classes {list(target.classes) or [0, 1]} or a class index"
    flags.flag(
        "invalid target",
        column.local,
        ~missing & np.isnan(y),
        f"a target value that is not {expected} (map codes under target.map)",
    )
    return y


def _typed_parquet(
    table: RawTable, feat: Feature, column: ColumnPlan, report: ValidationReport
) -> bool:
    """Whether a Parquet column can feed a numeric or yes/no feature (else an error)."""
    if not table.parquet or feat.kind == "categorical" or column.codes:
        return True
    dtype = table.frame[column.local].dtype
    if ptypes.is_bool_dtype(dtype) or ptypes.is_numeric_dtype(dtype):
        return True
    report.add(
        "error",
        f"{table.path} column '{column.local}': Parquet type {dtype} cannot hold "
        f"the numbers of {feat.kind} feature '{feat.name}'; store it as int or "
        "float, or map its codes under values",
    )
    return False


def _feature(
    table: RawTable,
    feat: Feature,
    column: ColumnPlan,
    flags: RowFlags,
    card: DatasetCard,
    report: ValidationReport,
) -> pd.Series:
    absent = column.local is None or not _typed_parquet(table, feat, column, report)
    if absent and feat.kind == "categorical":
        return pd.Series([None] * flags.n, dtype=object)
    if absent:
        return pd.Series(np.full(flags.n, np.nan))
    values = cells(table.frame[column.local], column_markers(card, column.local), column.codes)
    if feat.kind == "categorical":
        return pd.Series(_categorical(values, feat, column, flags), dtype=object)
    if feat.kind == "binary":
        return pd.Series(_binary(values, feat, column, flags))
    return pd.Series(_numeric(values, feat, column, flags, report))


def convert_table(
    table: RawTable,
    card: DatasetCard,
    schema: TaskSchema,
    report: ValidationReport,
    *,
    duplicates: bool = True,
) -> pd.DataFrame | None:
    """The file's valid rows in the data conventions (``None`` when its columns do not fit).

    Counts, row numbers and one message per problem go to ``report``: warnings when the card
    drops invalid rows, errors when it fails on them. ``duplicates=False`` skips the warning
    about repeated rows (scoring: the same patient may be scored twice).
    """
    errors = len(report.errors)
    table, problems = prepare_table(table, card, report)
    plan = plan_columns(card, table, schema, report)
    if plan is None or len(report.errors) > errors:
        return None
    flags = RowFlags(table)
    for problem in problems:
        flags.flag("text in a numeric column", problem.column, problem.mask, problem.detail)
    width = len(table.frame.columns)
    flags.flag(
        "wrong number of fields",
        None,
        np.isin(table.rows, list(table.widths)),
        f"a number of fields other than the {width} columns expected (a stray delimiter or quote?)",
    )
    data = {
        feat.name: _feature(table, feat, plan[feat.name], flags, card, report)
        for feat in schema.features
    }
    target = plan[schema.target.name]
    y = _target(
        cells(table.frame[target.local], column_markers(card, target.local), target.codes),
        schema,
        target,
        flags,
    )
    invalid = flags.invalid()
    drop = card.on_invalid_row == "drop"
    flags.record(report, drop)
    if duplicates:
        record_duplicates(table, report)
    report.rows_read += flags.n
    frame = pd.DataFrame(data)
    frame[schema.target.name] = (
        y if schema.target.kind == "continuous" else np.nan_to_num(y, nan=-1).astype(np.int64)
    )
    kept = frame.loc[~invalid].reset_index(drop=True)
    report.rows_kept += len(kept)
    return kept
