"""Which local column feeds which schema column, and with which codes and unit.

:func:`plan_columns` applies the card's ``rename`` to a file's columns, finds the target column
and every feature, and resolves the keys of ``values`` and ``units`` (local or schema names) to
schema columns. Every mismatch becomes a report entry naming the card or the data file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from medfed.models.ingest.cardspec import DatasetCard
from medfed.models.ingest.derived_columns import PREFIX, column_markers, derived_inputs
from medfed.models.ingest.tables import RawTable
from medfed.models.ingest.units import Converter, converter
from medfed.models.ingest.validation import ValidationReport
from medfed.models.schema import TaskSchema

_SHOWN = 5


@dataclass(frozen=True)
class ColumnPlan:
    """How one schema column is read: its local name, code map, unit converter."""

    local: str | None
    codes: Mapping[str, str]
    convert: Converter | None


def markers(card: DatasetCard) -> frozenset[str]:
    """The card's file-wide missing-value markers (a column's own: ``column_markers``)."""
    return column_markers(card, None)


def _resolve(
    card: DatasetCard,
    table: RawTable,
    schema: TaskSchema,
    key: str,
    section: str,
    renamed: dict[str, str],
    report: ValidationReport,
) -> str | None:
    """The schema name a ``values``/``units`` key refers to (a local or a schema name)."""
    if key == card.target.column:
        return schema.target.name
    if key in renamed:
        return renamed[key]
    if key in (*schema.feature_names, schema.target.name):
        return key
    report.add(
        "error",
        f"{card.path}: {section} names column '{key}', which is neither a column "
        f"of {table.path} nor a feature of task '{schema.name}'",
    )
    return None


def _target_column(
    card: DatasetCard,
    table: RawTable,
    schema: TaskSchema,
    renamed: dict[str, str],
    report: ValidationReport,
) -> str | None:
    wanted = card.target.column
    if wanted is None:
        found = [c for c, name in renamed.items() if name == schema.target.name]
    else:
        found = [wanted] if wanted in renamed else [c for c, n in renamed.items() if n == wanted]
    if len(found) > 1:
        report.add(
            "error",
            f"{table.path}: columns {found} all map to the target "
            f"'{schema.target.name}'; keep one of them in {card.path}",
        )
    if found:
        return found[0]
    column = wanted or schema.target.name
    report.add(
        "error",
        f"{table.path}: the target column '{column}' is missing (columns: "
        f"{', '.join(renamed)}); set target.column in the card {card.path}",
    )
    return None


def _feature_columns(
    card: DatasetCard,
    table: RawTable,
    schema: TaskSchema,
    renamed: dict[str, str],
    target: str | None,
    report: ValidationReport,
) -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for feat in schema.features:
        local = [c for c, name in renamed.items() if name == feat.name and c != target]
        if len(local) > 1:
            report.add(
                "error",
                f"{table.path}: columns {local} all map to feature "
                f"'{feat.name}'; keep one of them in the card's rename",
            )
        elif not local and feat.required:
            report.add(
                "error",
                f"{table.path}: the required column '{feat.name}' of task "
                f"'{schema.name}' is missing; add it to the export or map a "
                f"column to it under rename in {card.path}",
            )
        elif not local:
            if feat.name not in report.absent:
                report.absent.append(feat.name)
            report.add(
                "note",
                f"{table.path}: the optional feature '{feat.name}' is absent "
                "and treated as missing",
            )
        found[feat.name] = local[0] if local else None
    used = {*found.values(), target, *derived_inputs(card)}
    unused = [c for c in renamed if c not in used and not c.startswith(PREFIX)]
    ignored_columns(table, unused, report)
    return found


def ignored_columns(table: RawTable, ignored: list[str], report: ValidationReport) -> None:
    """One summary note for the export's columns the task does not use (the full list goes to
    ``report.ignored``, printed by ``node check --verbose``)."""
    if not ignored:
        return
    report.ignored.extend(c for c in ignored if c not in report.ignored)
    shown = ", ".join(ignored[:_SHOWN])
    more = ", ... (list with --verbose)" if len(ignored) > _SHOWN else ""
    plural = "column" if len(ignored) == 1 else "columns"
    report.add(
        "warning",
        f"{table.path}: ignored {len(ignored)} {plural} the task does not use: {shown}{more}",
    )


def plan_columns(
    card: DatasetCard, table: RawTable, schema: TaskSchema, report: ValidationReport
) -> dict[str, ColumnPlan] | None:
    """Map every schema name (features and target) to its local column, codes and unit."""
    local = [str(c) for c in table.frame.columns]
    errors = len(report.errors)
    names = {*schema.feature_names, schema.target.name}
    for key, name in card.rename.items():
        if key not in local and key not in card.drop:
            report.add(
                "error",
                f"{card.path}: rename names column '{key}', which {table.path} "
                f"does not have (columns: {', '.join(local)})",
            )
        if name not in names:
            report.add(
                "error",
                f"{card.path}: rename maps '{key}' to '{name}', which is not a "
                f"feature of task '{schema.name}'",
            )
    renamed = {c: card.rename.get(c, c) for c in local}
    for feature in card.derive:
        if feature not in schema.feature_names:
            report.add(
                "error",
                f"{card.path}: derive defines '{feature}', which is not a "
                f"feature of task '{schema.name}' (features: "
                f"{', '.join(schema.feature_names)})",
            )
        if PREFIX + feature in renamed:
            renamed[PREFIX + feature] = feature
    target = _target_column(card, table, schema, renamed, report)
    found = _feature_columns(card, table, schema, renamed, target, report)
    found[schema.target.name] = target
    codes = {
        _resolve(card, table, schema, k, "values", renamed, report): v
        for k, v in card.values.items()
    }
    units = {
        _resolve(card, table, schema, k, "units", renamed, report): (k, u)
        for k, u in card.units.items()
    }
    codes[schema.target.name] = card.target.map or codes.get(schema.target.name, {})
    plan = {
        name: ColumnPlan(
            column, codes.get(name, {}), _converter(card, schema, name, units.get(name), report)
        )
        for name, column in found.items()
    }
    return None if len(report.errors) > errors else plan


def _converter(
    card: DatasetCard,
    schema: TaskSchema,
    name: str,
    unit: tuple[str, str] | None,
    report: ValidationReport,
) -> Converter | None:
    if unit is None:
        return None
    is_target = name == schema.target.name
    if (
        is_target
        and schema.target.kind != "continuous"
        or not is_target
        and schema.feature(name).kind != "numeric"
    ):
        report.add(
            "error",
            f"{card.path}: units gives column '{unit[0]}' a unit, but only "
            "numeric features and a continuous target have one",
        )
        return None
    schema_unit = schema.target.unit if is_target else schema.feature(name).unit
    try:
        return converter(name, unit[0], unit[1], schema_unit, str(card.path))
    except ValueError as exc:
        report.add("error", str(exc))
        return None
