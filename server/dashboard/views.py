"""What the study page draws, computed from a run (:func:`.runs.load_run`): charts, grid, tables."""

from __future__ import annotations

from typing import Any

from medfed.server.dashboard.svg import color, line_chart

GLOBAL = "all hospitals"
STATES = ("trained", "missed", "refused", "rejected")


def site_colors(run: dict[str, Any]) -> dict[str, str]:
    """One colour per hospital (and the global line) on every chart of the page."""
    return {name: color(i) for i, name in enumerate([GLOBAL, *run["sites"]])}


def _metric_chart(run: dict[str, Any], rounds: int) -> tuple[str, list[tuple[str, str]]]:
    metric, history = run.get("primary_metric"), run.get("history") or []
    series = [
        (
            GLOBAL,
            [(e["round"], e["global"][metric]) for e in history if metric in e.get("global", {})],
        )
    ]
    series += [
        (
            site,
            [
                (e["round"], e["hospitals"][site][metric])
                for e in history
                if metric in e.get("hospitals", {}).get(site, {})
            ],
        )
        for site in run["sites"]
    ]
    series = [(label, points) for label, points in series if points]
    colors = site_colors(run)
    chart = line_chart(
        series,
        rounds=rounds,
        y_label=str(metric),
        bold=GLOBAL,
        colors=[colors[label] for label, _ in series],
    )
    return chart, [(label, colors[label]) for label, _ in series]


def _latest(run: dict[str, Any]) -> tuple[int | None, list[tuple[str, dict[str, float]]]]:
    scored = [e for e in run.get("history") or [] if e.get("global")]
    if not scored:
        return None, []
    last = scored[-1]
    return last["round"], [(GLOBAL, last["global"]), *sorted(last["hospitals"].items())]


def _grid(run: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for site in run["sites"]:
        cells, counts = [], dict.fromkeys(STATES, 0)
        for entry in run.get("history") or []:
            state, reason = entry["participation"].get(site, ["idle", "not asked this round"])
            counts[state] = counts.get(state, 0) + 1
            title = f"round {entry['round']}: {state}" + (f": {reason}" if reason else "")
            cells.append({"state": state, "title": title})
        rows.append({"site": site, "cells": cells, "counts": counts})
    return rows


def _epsilon(run: dict[str, Any], rounds: int) -> tuple[str, list[dict[str, Any]]]:
    history, budgets = run.get("history") or [], run.get("budget") or {}
    latest: dict[str, float] = {}
    for entry in history:
        latest.update(entry.get("epsilon") or {})
    if not latest:
        return "", []
    series = [
        (site, [(e["round"], e["epsilon"][site]) for e in history if site in e.get("epsilon", {})])
        for site in sorted(latest)
    ]
    limits = sorted({("budget", float(b)) for b in budgets.values() if b})
    rows = [
        {
            "site": site,
            "epsilon": value,
            "budget": budgets.get(site),
            "used": 100 * value / budgets[site] if budgets.get(site) else None,
        }
        for site, value in sorted(latest.items())
    ]
    colors = site_colors(run)
    chart = line_chart(
        series,
        rounds=rounds,
        y_label="epsilon",
        limits=limits,
        colors=[colors.get(site, "#444") for site, _ in series],
    )
    return chart, rows


def study_view(run: dict[str, Any]) -> dict[str, Any]:
    """The derived parts of the study page (the template shows ``run`` and this)."""
    history = run.get("history") or []
    rounds = int(run.get("rounds") or (history[-1]["round"] if history else 1))
    metric_chart, legend = _metric_chart(run, rounds)
    latest_round, latest = _latest(run)
    names = list(dict.fromkeys(m for _, values in latest for m in values))
    epsilon_chart, epsilon_rows = _epsilon(run, rounds)
    done = int(run.get("round") or (history[-1]["round"] if history else 0))
    return {
        "percent": round(100 * done / max(rounds, 1)),
        "metric_chart": metric_chart,
        "metric_legend": legend,
        "latest_round": latest_round,
        "latest": latest,
        "metric_names": names,
        "round_numbers": [e["round"] for e in history],
        "grid": _grid(run),
        "epsilon_chart": epsilon_chart,
        "epsilon_rows": epsilon_rows,
    }
