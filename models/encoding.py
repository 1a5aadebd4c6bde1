"""Federated preprocessing: global normalisation and imputation from additive site statistics.

Each hospital computes :func:`site_statistics` on its own rows: counts, sums and sums of squares per
numeric feature and counts per category, nothing row-level. The server adds them up with
:func:`merge_statistics` into a :class:`GlobalStats`, sends that back as JSON, and every node builds
the same :class:`Encoder` from it, so all hospitals (and the pooled and local baselines) feed the
model identically scaled inputs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd

from medfed.models.imputation import MISSING, fill_value, histogram_of, suppress_histogram
from medfed.models.schema import Feature, TaskSchema

_MIN_STD = 1e-12


def _column(df: pd.DataFrame, schema: TaskSchema, name: str) -> pd.Series:
    if name not in df.columns:
        raise ValueError(f"The data has no column '{name}', which task '{schema.name}' requires.")
    return df[name]


def _numeric(df: pd.DataFrame, schema: TaskSchema, feat: Feature) -> np.ndarray:
    """Values of a numeric/binary feature as float64; absent optional column, inf -> NaN."""
    if feat.name not in df.columns and not feat.required:
        return np.full(len(df), np.nan)
    column = _column(df, schema, feat.name)
    try:
        values = np.asarray(column, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"Column '{feat.name}' must hold numbers (NaN for missing).") from None
    return np.where(np.isfinite(values), values, np.nan)


def _codes(df: pd.DataFrame, schema: TaskSchema, feat: Feature) -> np.ndarray:
    """Category index per row; -1 for missing values and values outside the schema's categories."""
    if feat.name not in df.columns and not feat.required:
        return np.full(len(df), -1, dtype=np.int64)
    column = _column(df, schema, feat.name)
    values = column.to_numpy(dtype=object)  # pandas-stubs: get_indexer wants an Index (any array)
    return pd.Index(feat.categories).get_indexer(values).astype(np.int64)  # type: ignore[arg-type]


def _feature_statistics(
    df: pd.DataFrame, schema: TaskSchema, feat: Feature, histograms: bool = False
) -> dict[str, Any]:
    if feat.kind == "categorical":
        codes = _codes(df, schema, feat)
        counts = np.bincount(codes[codes >= 0], minlength=len(feat.categories))
        return {
            "categories": dict(zip(feat.categories, map(int, counts), strict=True)),
            "missing": int((codes < 0).sum()),
        }
    values = _numeric(df, schema, feat)
    present = values[~np.isnan(values)]
    out: dict[str, Any] = {
        "count": int(present.size),
        "sum": float(present.sum()),
        "sumsq": float(np.square(present).sum()),
        "missing": int(values.size - present.size),
    }
    if histograms and feat.kind == "numeric":
        out.update(histogram_of(present, feat))
    return out


def _target_statistics(df: pd.DataFrame, schema: TaskSchema) -> dict[str, Any]:
    y = np.asarray(_column(df, schema, schema.target.name), dtype=np.float64)
    if schema.target.kind == "continuous":
        y = y[np.isfinite(y) & (y > -1.0)]
        logs = np.log1p(y)
        return {
            "kind": "continuous",
            "count": int(logs.size),
            "sum": float(logs.sum()),
            "sumsq": float(np.square(logs).sum()),
            "sum_y": float(y.sum()),
        }
    n_classes = max(schema.target.n_outputs, 2)
    valid = y[(y >= 0) & (y < n_classes) & (y == np.round(y))].astype(np.int64)
    return {
        "kind": schema.target.kind,
        "classes": [int(c) for c in np.bincount(valid, minlength=n_classes)],
    }


def site_statistics(
    df: pd.DataFrame, schema: TaskSchema, *, histograms: bool = False
) -> dict[str, Any]:
    """Additive, JSON-serialisable summary of one hospital's rows.

    Returns ``{"rows", "numeric", "binary", "categorical", "target"}``. Numeric and binary features
    give ``{count, sum, sumsq, missing}`` (in the feature's unit); categorical features give
    ``{categories: {category: count}, missing}``, where values outside the schema's categories
    count as missing (the :class:`Encoder` treats them the same way). The target gives ``{kind,
    count, sum, sumsq, sum_y}``, the sums being of ``log1p(y)`` except ``sum_y`` of ``y`` itself
    (in the target's unit, to scale the Tweedie loss), for a continuous target, and ``{kind,
    classes: [count per class index]}`` otherwise. With ``histograms`` (median imputation), a
    numeric feature with a valid range also gives ``histogram``: counts in fixed bins over that
    range (see :mod:`medfed.models.imputation`). Only these sums leave the hospital.
    """
    out: dict[str, Any] = {"rows": len(df), "numeric": {}, "binary": {}, "categorical": {}}
    for feat in schema.features:
        out[feat.kind][feat.name] = _feature_statistics(df, schema, feat, histograms)
    out["target"] = _target_statistics(df, schema)
    return out


_MAPPINGS = ("means", "stds", "rates", "modes", "missing_rates", "fills")


@dataclass(frozen=True)
class GlobalStats:
    """Federation-wide normalisation and imputation values, in each feature's unit.

    ``means``/``stds`` per numeric feature (population std; 1.0 when undefined or zero),
    ``rates`` (share of 1s) per binary feature, ``modes`` per categorical feature and
    ``missing_rates`` per feature. For a continuous target ``target_log_mean``/``target_log_std``
    of ``log1p(y)`` and ``target_mean`` of ``y``; for a class target ``class_priors`` per class
    index. ``fills`` are the values a missing numeric feature takes (the federated mean or the
    median of the merged histograms, ``imputation``); ``categorical_missing`` is ``mode`` (a
    missing category takes the global mode) or ``category`` (its own one-hot column). The
    mappings are read-only.
    """

    target_kind: str
    rows: int
    means: Mapping[str, float] = field(default_factory=dict)
    stds: Mapping[str, float] = field(default_factory=dict)
    rates: Mapping[str, float] = field(default_factory=dict)
    modes: Mapping[str, str] = field(default_factory=dict)
    missing_rates: Mapping[str, float] = field(default_factory=dict)
    target_log_mean: float = 0.0
    target_log_std: float = 1.0
    target_mean: float = 1.0
    class_priors: tuple[float, ...] = ()
    fills: Mapping[str, float] = field(default_factory=dict)
    imputation: str = "mean"
    categorical_missing: str = "mode"

    def __post_init__(self) -> None:
        for name in _MAPPINGS:
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))
        object.__setattr__(self, "class_priors", tuple(float(p) for p in self.class_priors))

    @property
    def target_offset(self) -> float:
        """Initial final-layer bias: the mean of ``log1p(y)`` for a continuous target, else 0."""
        return self.target_log_mean if self.target_kind == "continuous" else 0.0

    @property
    def loss_scale(self) -> float:
        """Constant that keeps the Tweedie loss O(1): the mean target (1.0 for class targets)."""
        return self.target_mean if self.target_kind == "continuous" else 1.0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (the inverse of :meth:`from_dict`)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out.update({name: dict(out[name]) for name in _MAPPINGS})
        out["class_priors"] = list(self.class_priors)
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> GlobalStats:
        """Rebuild from :meth:`to_dict` output (e.g. after a JSON round trip)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"Global statistics have unknown key(s) {unknown}.")
        return cls(**dict(raw))


def suppress_small_cells(stats: Mapping[str, Any], min_cell: int = 5) -> dict[str, Any]:
    """Copy of one site's statistics with category counts below ``min_cell`` set to 0.

    A category seen at a hospital only once or twice can single out a patient (k-anonymity with
    k = ``min_cell``), so such cells never inform global values; a node may apply this before
    sending, and :func:`merge_statistics` applies it to every site in any case.
    """
    cells = {
        name: dict(
            feat,
            categories={cat: (n if n >= min_cell else 0) for cat, n in feat["categories"].items()},
        )
        for name, feat in stats["categorical"].items()
    }
    out = dict(stats, categorical=cells)
    if "numeric" in stats:
        out["numeric"] = {
            name: suppress_histogram(feat, min_cell) for name, feat in stats["numeric"].items()
        }
    return out


def _add(sites: Sequence[Mapping[str, Any]], group: str, name: str) -> dict[str, Any]:
    keys = sites[0][group][name].keys()
    out: dict[str, Any] = {}
    for key in keys:  # histogram edges are the schema's range: the same at every site
        values = [site[group][name][key] for site in sites]
        out[key] = (
            values[0]
            if key.startswith("histogram_")
            else np.sum(values, axis=0).tolist()
            if key == "histogram"
            else sum(values)
        )
    return out


def _mean_std(count: float, total: float, sumsq: float) -> tuple[float, float]:
    if count <= 0:
        return 0.0, 1.0
    mean = total / count
    std = math.sqrt(max(sumsq / count - mean * mean, 0.0))
    return mean, (std if std > _MIN_STD * max(1.0, abs(mean)) else 1.0)


def _target_fields(sites: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    kind = sites[0]["target"]["kind"]
    if kind != "continuous":
        counts = np.sum([site["target"]["classes"] for site in sites], axis=0, dtype=np.float64)
        total = counts.sum()
        priors = counts / total if total > 0 else np.full(counts.size, 1.0 / counts.size)
        return {"target_kind": kind, "class_priors": tuple(float(p) for p in priors)}
    total = {
        key: sum(site["target"][key] for site in sites)
        for key in ("count", "sum", "sumsq", "sum_y")
    }
    log_mean, log_std = _mean_std(total["count"], total["sum"], total["sumsq"])
    mean = total["sum_y"] / total["count"] if total["count"] > 0 else 0.0
    return {
        "target_kind": kind,
        "target_log_mean": log_mean,
        "target_log_std": log_std,
        "target_mean": mean if mean > 0 else 1.0,
    }


def _layout(site: Mapping[str, Any]) -> tuple:
    return (
        *(tuple(site[group]) for group in ("numeric", "binary", "categorical")),
        site["target"]["kind"],
        len(site["target"].get("classes", ())),
    )


def _missing_rate(missing: float, observed: float) -> float:
    return missing / (missing + observed) if missing + observed > 0 else 1.0


def merge_statistics(
    stats: Sequence[Mapping[str, Any]],
    *,
    min_cell: int = 5,
    imputation: str = "mean",
    categorical_missing: str = "mode",
) -> GlobalStats:
    """Add up the sites' :func:`site_statistics` into :class:`GlobalStats`.

    Category cells below ``min_cell`` are suppressed per site before summing (see
    :func:`suppress_small_cells`). A feature nobody observed gets mean 0, std 1 or rate 0.5; a
    categorical feature without an unsuppressed cell gets its first schema category as mode.
    ``imputation`` (``mean`` or ``median``, the latter from the summed histograms) chooses the
    fill of a missing numeric value; ``categorical_missing`` (``mode`` or ``category``) how the
    :class:`Encoder` treats a missing category.
    """
    if not stats:
        raise ValueError("merge_statistics needs the statistics of at least one site.")
    if len({_layout(site) for site in stats}) > 1:
        raise ValueError(
            "Site statistics describe different features or targets; every site "
            "must compute them with the same task schema."
        )
    sites = [suppress_small_cells(site, min_cell) for site in stats]
    out: dict[str, Any] = {name: {} for name in _MAPPINGS}
    for name in sites[0]["numeric"]:
        total = _add(sites, "numeric", name)
        out["means"][name], out["stds"][name] = _mean_std(
            total["count"], total["sum"], total["sumsq"]
        )
        out["missing_rates"][name] = _missing_rate(total["missing"], total["count"])
        out["fills"][name] = fill_value(total, out["means"][name], imputation)
    for name in sites[0]["binary"]:
        total = _add(sites, "binary", name)
        out["rates"][name] = total["sum"] / total["count"] if total["count"] > 0 else 0.5
        out["missing_rates"][name] = _missing_rate(total["missing"], total["count"])
    for name, feat in sites[0]["categorical"].items():
        cells = {
            cat: sum(site["categorical"][name]["categories"][cat] for site in sites)
            for cat in feat["categories"]
        }
        out["modes"][name] = max(cells, key=cells.__getitem__)
        missing = sum(site["categorical"][name]["missing"] for site in sites)
        out["missing_rates"][name] = _missing_rate(missing, sum(cells.values()))
    rows = sum(int(site["rows"]) for site in sites)
    return GlobalStats(
        rows=rows,
        **out,
        **_target_fields(sites),
        imputation=imputation,
        categorical_missing=categorical_missing,
    )


def encode_target(df: pd.DataFrame, schema: TaskSchema) -> np.ndarray:
    """The target column as the loss expects it.

    Binary: float32 0/1; multiclass: int64 class index; continuous: float32 in the target's unit.
    """
    name = schema.target.name
    values = np.asarray(_column(df, schema, name), dtype=np.float64)
    if not np.isfinite(values).all():
        raise ValueError(
            f"The target column '{name}' has missing or non-finite values; "
            "drop those rows before training."
        )
    if schema.target.kind == "multiclass":
        return values.astype(np.int64)
    return values.astype(np.float32)


class Encoder:
    """Turns a site's DataFrame into the model's float32 input matrix, identically at every site.

    Numeric features are standardised with the global mean/std (missing -> 0, the mean); binary
    features stay 0/1 (missing -> the global rate); categorical features are one-hot over the
    schema's categories (missing or unknown -> the global mode). With ``missing_indicators``, every
    optional feature gets a 0/1 ``<name>_missing`` column right after its own column(s).
    """

    def __init__(
        self, schema: TaskSchema, stats: GlobalStats, *, missing_indicators: bool = False
    ) -> None:
        self.schema = schema
        self.stats = stats
        self.missing_indicators = missing_indicators
        names: list[str] = []
        table = {"numeric": stats.means, "binary": stats.rates, "categorical": stats.modes}
        for feat in schema.features:
            if feat.name not in table[feat.kind]:
                raise ValueError(
                    f"The global statistics have no entry for feature "
                    f"'{feat.name}'; compute them with task '{schema.name}'."
                )
            if feat.kind == "categorical":
                names.extend(f"{feat.name}={cat}" for cat in self._categories(feat))
            else:
                names.append(feat.name)
            if missing_indicators and not feat.required:
                names.append(f"{feat.name}_missing")
        self.column_names: tuple[str, ...] = tuple(names)

    def _categories(self, feat: Feature) -> tuple[str, ...]:
        """The one-hot columns of a categorical feature (plus ``MISSING`` when it is a category)."""
        own = self.stats.categorical_missing == "category"
        return (*feat.categories, MISSING) if own else tuple(feat.categories)

    @property
    def n_inputs(self) -> int:
        """Number of input columns the model sees."""
        return len(self.column_names)

    def _fill(self, df: pd.DataFrame, feat: Feature, out: np.ndarray) -> np.ndarray:
        """Write ``feat``'s column(s) into ``out`` (rows x width); return the missing mask."""
        if feat.kind == "categorical":
            codes = _codes(df, self.schema, feat)
            missing = codes < 0
            own = self.stats.categorical_missing == "category"
            codes[missing] = (
                len(feat.categories) if own else feat.categories.index(self.stats.modes[feat.name])
            )
            out[:] = 0.0
            out[np.arange(len(codes)), codes] = 1.0
            return missing
        values = _numeric(df, self.schema, feat)
        missing = np.isnan(values)
        if feat.kind == "binary":
            out[:, 0] = np.where(missing, self.stats.rates[feat.name], values)
        else:
            mean, std = self.stats.means[feat.name], self.stats.stds[feat.name]
            fill = (self.stats.fills.get(feat.name, mean) - mean) / std
            out[:, 0] = np.where(missing, fill, (values - mean) / std)
        return missing

    def transform(self, df: pd.DataFrame) -> np.ndarray:
        """Encode ``df`` (one column per schema feature) into a C-contiguous float32 matrix."""
        out = np.empty((len(df), self.n_inputs), dtype=np.float32)
        col = 0
        for feat in self.schema.features:
            width = len(self._categories(feat)) if feat.kind == "categorical" else 1
            missing = self._fill(df, feat, out[:, col : col + width])
            col += width
            if self.missing_indicators and not feat.required:
                out[:, col] = missing
                col += 1
        return out


def encoder_state(stats: Any, missing_indicators: bool) -> dict[str, Any]:
    """What ``model.pt`` stores to rebuild the study's encoder (see :func:`encoder_from_state`)."""
    return {"statistics": stats.to_dict(), "missing_indicators": bool(missing_indicators)}


def encoder_from_state(schema: Any, state: Mapping[str, Any]) -> Any:
    """The study's :class:`~medfed.models.encoding.Encoder` from :func:`encoder_state` output."""
    return Encoder(
        schema,
        GlobalStats.from_dict(state["statistics"]),
        missing_indicators=bool(state["missing_indicators"]),
    )
