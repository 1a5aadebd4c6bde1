"""Run directories as the dashboard shows them: found under the given folders, read-only.

A run directory is a folder holding ``status.json`` (written every round by
:mod:`medfed.server.monitor.status`) or ``summary.json`` (written at the end). Runs written before
``status.json`` existed are read from ``summary.json`` and ``metrics.csv`` instead.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

GLOBAL = "all hospitals"  # the all-hospitals row of metrics.csv (medfed.server.study.GLOBAL)
LINKED = (
    "report.md",
    "summary.json",
    "metrics.csv",
    "config.yaml",
    "status.json",
    "convergence.png",
    "epsilon.png",
    "cross_site.csv",
    "cross_site.png",
    "model_card.md",
    "model_card.json",
)
MAX_DEPTH = 4


def run_id(path: Path) -> str:
    """A short stable id for a run directory (its resolved path's hash)."""
    return hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]


def find_runs(roots: list[Path]) -> dict[str, Path]:
    """Every run directory under ``roots`` (up to :data:`MAX_DEPTH` levels), by id."""
    found: dict[str, Path] = {}

    def walk(folder: Path, depth: int) -> None:
        if (folder / "status.json").is_file() or (folder / "summary.json").is_file():
            found[run_id(folder)] = folder
            return
        if depth < MAX_DEPTH:
            for child in sorted(
                p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")
            ):
                walk(child, depth + 1)

    for root in roots:
        if root.is_dir():
            walk(root, 0)
    return found


def _json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):  # absent, or being replaced right now: read next time
        return None
    return data if isinstance(data, dict) else None


def _number(text: str | None) -> float | None:
    try:
        value = float(text) if text not in (None, "") else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def history_from_files(summary: dict[str, Any], metrics_csv: Path) -> list[dict[str, Any]]:
    """The per-round history of a finished run without ``status.json`` (older runs)."""
    names = list(summary.get("global") or {})
    rounds: dict[int, dict[str, Any]] = {}
    try:
        rows = list(csv.DictReader(metrics_csv.open()))
    except OSError:
        rows = []
    for row in rows:
        entry = rounds.setdefault(
            int(row["round"]),
            {
                "round": int(row["round"]),
                "seconds": _number(row.get("seconds")) or 0.0,
                "participation": {},
                "epsilon": {},
                "global": {},
                "hospitals": {},
            },
        )
        values = {m: v for m in names if (v := _number(row.get(m))) is not None}
        if row["hospital"] == GLOBAL:
            entry["global"] = values
            continue
        entry["hospitals"][row["hospital"]] = values
        if _number(row.get("train_steps")) is not None:
            entry["participation"][row["hospital"]] = ["trained", ""]
        if (epsilon := _number(row.get("epsilon"))) is not None:
            entry["epsilon"][row["hospital"]] = epsilon
    for state, key in (("missed", "failures"), ("refused", "refusals"), ("rejected", "rejected")):
        for round_, reasons in (summary.get(key) or {}).items():
            if int(round_) in rounds:
                rounds[int(round_)]["participation"].update(
                    {name: [state, str(why)] for name, why in reasons.items()}
                )
    return [rounds[r] for r in sorted(rounds) if r > 0]


def _from_summary(summary: dict[str, Any], folder: Path) -> dict[str, Any]:
    return {
        "status": "stopped" if summary.get("stopped") else "finished",
        "reason": summary.get("stopped") or "",
        "study_id": summary.get("study_id"),
        "task": summary.get("task"),
        "strategy": summary.get("strategy"),
        "engine": summary.get("engine"),
        "privacy": summary.get("privacy"),
        "rounds": summary.get("rounds"),
        "primary_metric": summary.get("primary_metric"),
        "higher_is_better": summary.get("primary_metric") not in ("mae", "rmse", "loss"),
        "history": history_from_files(summary, folder / "metrics.csv"),
        "budget": {},
        "alerts": [],
        "updated": None,
    }


def _table(path: Path) -> dict[str, Any] | None:
    """A small CSV (cross-site matrix) as header + rows, numbers rounded for display."""
    try:
        rows = list(csv.reader(path.open()))
    except OSError:
        return None
    if not rows:
        return None
    shown = [
        [
            f"{n:.4f}"
            if (n := _number(c)) is not None and c.strip() != "" and not c.strip().isdigit()
            else c
            for c in row
        ]
        for row in rows[1:]
    ]
    return {"header": rows[0], "rows": shown}


def _benefit(summary: dict[str, Any] | None) -> dict[str, Any] | None:
    """The per-hospital benefit table of ``summary.json`` (key ``benefit``) when present."""
    data = (summary or {}).get("benefit")
    if isinstance(data, dict):
        data = [
            {"hospital": name, **(v if isinstance(v, dict) else {"value": v})}
            for name, v in data.items()
        ]
    if not isinstance(data, list) or not data or not all(isinstance(r, dict) for r in data):
        return None
    header = list(dict.fromkeys(k for row in data for k in row))
    cell = lambda v: f"{v:.4f}" if isinstance(v, float) else "" if v is None else str(v)  # noqa: E731
    return {"header": header, "rows": [[cell(row.get(k)) for k in header] for row in data]}


def _files(folder: Path) -> list[str]:
    found = [name for name in LINKED if (folder / name).is_file()]
    found += [
        str(p.relative_to(folder))
        for p in sorted(folder.glob("*/model_card.*"))
        if p.suffix in (".md", ".json")
    ]
    return found


def load_run(folder: Path) -> dict[str, Any]:
    """Everything the pages show about one run directory, as a plain dict.

    ``status.json`` is preferred (it exists from round 0 on); a run without it is read from its
    final files. ``headline`` is the last global primary metric, ``epsilon`` the largest epsilon
    any hospital reported, ``sites`` every hospital that appears in the history.
    """
    summary = _json(folder / "summary.json")
    status = _json(folder / "status.json")
    if status is None:
        status = (
            _from_summary(summary, folder)
            if summary
            else {"status": "unknown", "history": [], "budget": {}, "alerts": []}
        )
    history = status.get("history") or []
    metric = status.get("primary_metric")
    scored = [e for e in history if metric in (e.get("global") or {})]
    sites = sorted({s for e in history for s in [*e["participation"], *e.get("hospitals", {})]})
    epsilons = [v for e in history for v in (e.get("epsilon") or {}).values()]
    return {
        **status,
        "id": run_id(folder),
        "path": str(folder),
        "name": folder.name,
        "silent": _silence(folder / "status.json", status),
        "sites": sites,
        "headline": scored[-1]["global"][metric] if scored else None,
        "epsilon": max(epsilons) if epsilons else None,
        "cross_site": _table(folder / "cross_site.csv"),
        "benefit": _benefit(summary),
        "files": _files(folder),
    }


def _silence(path: Path, status: dict[str, Any]) -> str:
    """A sentence when a ``running`` study has not written for longer than a round may take."""
    if status.get("status") != "running":
        return ""
    try:
        age = time.time() - path.stat().st_mtime
    except OSError:
        return ""
    allowed = float(status.get("timeout") or 600) + 60
    if age <= allowed:
        return ""
    return (
        f"no update for {age / 60:.0f} min although a round may take at most "
        f"{allowed - 60:.0f} s: the study's process may have ended"
    )


def linked_file(folder: Path, name: str) -> Path | None:
    """The file ``name`` of a run directory if the dashboard links it (nothing else is served)."""
    return folder / name if name in _files(folder) else None
