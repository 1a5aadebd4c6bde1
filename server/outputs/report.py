"""Human-readable outputs of a run: the convergence plot and the Markdown report."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from medfed.server.outputs.plot import line_chart
from medfed.server.study.loop import GLOBAL


def plot_convergence(rows: list[dict[str, Any]], metric: str, path: Path) -> None:
    """Plot ``metric`` per round for every hospital (thin) and all hospitals together (thick)."""
    series = {
        name: [(r["round"], r.get(metric)) for r in rows if r["hospital"] == name]
        for name in sorted({r["hospital"] for r in rows})
    }
    series = {
        name: points
        for name, points in series.items()
        if any(y is not None and math.isfinite(y) for _, y in points)
    }
    line_chart(
        series,
        title=f"Global model, test {metric} per round",
        xlabel="round",
        ylabel=f"test {metric}",
        path=path,
        highlight=GLOBAL,
    )


def plot_epsilon(rows: list[dict[str, Any]], path: Path) -> bool:
    """Plot each hospital's epsilon after every round (DP-SGD studies); False when none."""
    points: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        if row.get("epsilon") is not None and row["hospital"] != GLOBAL:
            points.setdefault(row["hospital"], []).append((row["round"], row["epsilon"]))
    if not points:
        return False
    line_chart(
        dict(sorted(points.items())),
        title="Privacy spend per hospital",
        xlabel="round",
        ylabel="epsilon spent (composed, ledger)",
        path=path,
    )
    return True


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def report_markdown(summary: dict[str, Any], study: dict[str, Any]) -> str:
    """A short report: settings, final metrics globally, per hospital and against baselines."""
    metrics = [m for m in study["task"].get("metrics", []) if m in summary["global"]]
    parts = [
        f"# medfed study: {summary['task']} with {summary['strategy']}",
        "",
        f"{len(summary['hospitals'])} hospitals ({summary['federation']}), {summary['rounds']} "
        f"rounds, seed {summary['seed']}, engine `{summary['engine']}`, "
        f"{summary['normalisation']} normalisation; {summary['wall_seconds']:.1f} s.",
        "",
        "## Final global model",
        "",
        _table(
            ["evaluated on"] + metrics,
            [
                ["all test rows together"] + [summary["global"].get(m) for m in metrics],
                ["mean over hospitals"]
                + [summary["global_mean_over_hospitals"].get(m) for m in metrics],
            ],
        ),
        "",
        "## Per hospital",
        "",
        _table(
            ["hospital", "train rows", "test rows"] + metrics,
            [
                [
                    h["name"] + (" (evaluation only)" if h.get("role") == "evaluate" else ""),
                    h["n_train"],
                    h["n_test"],
                ]
                + [h["metrics"].get(m) for m in metrics]
                for h in summary["hospitals"]
            ],
        ),
    ]
    if "baselines" in summary:
        base = summary["baselines"]
        rows = [
            ["federated (" + summary["strategy"] + ")"]
            + [summary["global"].get(m) for m in metrics]
        ]
        rows.append(
            [f"pooled (all rows in one place; {base['pooled'].get('privacy', 'no DP')})"]
            + [base["pooled"]["global"].get(m) for m in metrics]
        )
        if "pooled_non_private" in base:  # a DP study: the pooled model without DP, labelled so
            rows.append(
                ["pooled, not private"]
                + [base["pooled_non_private"]["global"].get(m) for m in metrics]
            )
        rows.append(
            ["local only (mean of the hospitals' own models)"]
            + [base["local"]["mean"].get(m) for m in metrics]
        )
        parts += [
            "",
            "## Federated vs pooled vs local-only (equal SGD steps, all test rows)",
            "",
            _table(["training"] + metrics, rows),
        ]
        parts += [f"- not run: {arm}: {why}" for arm, why in base.get("not_run", {}).items()]
    if summary.get("failures"):
        parts += ["", "## Failures", ""]
        parts += [
            f"- round {r}: {name}: {why}"
            for r, names in summary["failures"].items()
            for name, why in names.items()
        ]
    parts += ["", "![convergence](convergence.png)", ""]
    if any("epsilon" in h for h in summary["hospitals"]):
        parts += [
            "## Privacy",
            "",
            _table(
                ["hospital", "epsilon", "delta", "rounds missed"],
                [
                    [
                        h["name"],
                        h.get("epsilon"),
                        h.get("delta"),
                        ", ".join(map(str, h["rounds_missed"])) or "none",
                    ]
                    for h in summary["hospitals"]
                ],
            ),
            "",
            "![epsilon](epsilon.png)",
            "",
        ]
    if summary.get("central_dp"):
        parts += _central_dp(summary["central_dp"])
    from medfed.server.outputs.governance_report import governance_markdown

    parts += governance_markdown(summary.get("governance"))
    return "\n".join(parts)


def _central_dp(dp: dict[str, Any]) -> list[str]:
    """The client-level DP section: settings, final epsilon, and the epsilon after each round."""
    rounds = dp["rounds"]
    return [
        "## Client-level (central) DP",
        "",
        f"Updates clipped to L2 norm {_fmt(dp['clipping_norm'])} on the {dp['clipping']} side, "
        f"averaged with equal hospital weights, Gaussian noise multiplier "
        f"{_fmt(dp['noise_multiplier'])}: epsilon **{_fmt(dp['epsilon'])}** at delta "
        f"{_fmt(dp['delta'])} after {dp['released_rounds']} of {len(rounds)} rounds released "
        f"({dp['accounting']}).",
        "",
        _table(
            ["round", "hospitals", "released", "epsilon after"],
            [
                [r["round"], r["hospitals"], "yes" if r["released"] else r["reason"], r["epsilon"]]
                for r in rounds
            ],
        ),
        "",
    ]
