"""The per-hospital benefit section of ``report.md`` (from ``summary.json["personalised"]``)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any


def _cell(interval: list[float]) -> str:
    point, low, high = interval
    if not math.isfinite(point):
        return "n/a"
    if not (math.isfinite(low) and math.isfinite(high)):
        return _num(point)
    return f"{_num(point)} [{_num(low)}, {_num(high)}]"


def _num(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def benefit_markdown(summary: dict[str, Any]) -> str:
    """A table (federated, personalised, local-only on each hospital's own test rows, with 95%
    bootstrap intervals computed at the node), one sentence per hospital and the fairness view;
    empty when the study did not personalise."""
    data = summary.get("personalised")
    if not data:
        return ""
    metric = data["metric"]
    lines = [
        "",
        f"## Per-hospital benefit ({metric}, personalise.method={data['method']}, "
        f"{data['epochs']} fine-tuning epoch(s))",
        "",
        "Each hospital's own test rows; 95% paired bootstrap intervals computed at the "
        "hospital (only the intervals left it).",
        "",
        "| hospital | test rows | federated | personalised | local only | personalised - local |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in data["hospitals"].items():
        lines.append(
            f"| {name} | {row['n_test']} | {_cell(row['federated'])} | "
            f"{_cell(row['personalised'])} | {_cell(row['local'])} | "
            f"{_cell(row['personalised-minus-local'])} |"
        )
    lines += ["", *[f"- {row['sentence']}" for row in data["hospitals"].values()]]
    for name, reason in data.get("failures", {}).items():
        lines.append(f"- {name}: could not personalise ({reason})")
    if data.get("fairness"):
        lines += [
            "",
            "| model | worst hospital | worst | spread (max - min) |",
            "|---|---|---|---|",
        ]
        for model, view in data["fairness"].items():
            lines.append(
                f"| {model} | {view['worst_hospital']} | {_num(view['worst'])} | "
                f"{_num(view['spread'])} |"
            )
    return "\n".join(lines) + "\n" + cross_site_markdown(summary.get("cross_site") or {})


def cross_site_markdown(table: dict[str, Any]) -> str:
    """In deployment: which hospitals' local-only models were scored on other hospitals' rows
    (both policies allowing it) and why the other pairs are blank; empty in a simulation."""
    if "blank" not in table:
        return ""
    scored = [f"{owner} on {', '.join(sorted(row))}" for owner, row in table["scores"].items()]
    lines = [
        "",
        "## Cross-site evaluation of local-only models",
        "",
        "Only where both hospitals' policies allow it (share_local_model, "
        "evaluate_other_models); cross_site.csv holds the values.",
        "",
        f"- scored: {'; '.join(scored) if scored else 'none'}",
    ]
    for owner, note in table.get("notes", {}).items():
        if owner.startswith("local ") and note:
            lines.append(f"- {owner.removeprefix('local ')}'s model not scored on {note}")
    return "\n".join(lines) + "\n"


def write_cross_site(result: Any, out: Path) -> None:
    """``cross_site.csv`` and ``cross_site.png`` when the study has a cross-site table."""
    table = result.cross_site
    if not table or not table.get("rows"):
        return
    from medfed.server.outputs.cross_site import cross_site_csv
    from medfed.server.outputs.heatmap import heatmap

    tmp = out / "cross_site.csv.partial"
    tmp.write_bytes(cross_site_csv(table))
    os.replace(tmp, out / "cross_site.csv")
    heatmap(
        table["rows"],
        table["columns"],
        title=f"test {table['metric']}: model (row) on site (column)",
        higher_is_better=result.schema.higher_is_better,
        path=out / "cross_site.png",
    )
