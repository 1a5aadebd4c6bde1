"""What a finished Optuna search prints (:mod:`medfed.server.tuning`): the sweeper's
``optimization_results.yaml`` and the run directory of its best trial, found among the trials'
run directories by its validation value and its settings (the file names neither)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from medfed.server.tuning import RESULTS, direction


def trials(folder: Path) -> list[tuple[Path, float]]:
    """Every finished trial's run directory under ``folder`` and its validation value, in the
    order the trials ran (so a tie resolves to the first, as ``Study.best_trial`` does)."""
    found = []

    def job_number(path: Path) -> tuple[int, str]:  # "10-..." after "9-...", as Optuna counts
        head = path.parent.name.split("-", 1)[0]
        return (int(head) if head.isdigit() else -1, path.parent.name)

    for path in sorted(folder.glob("*/summary.json"), key=job_number):
        try:
            value = json.loads(path.read_text())["early_stopping"]["best_validation"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if isinstance(value, int | float) and math.isfinite(value):
            found.append((path.parent, float(value)))
    return found


def _has(run: Path, params: dict[str, Any]) -> bool:
    """Whether the run directory's ``config.yaml`` has every searched setting at ``params``
    (a config group, such as ``strategy``, by its ``name``)."""
    import yaml

    try:
        config = yaml.safe_load((run / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return False
    for key, wanted in params.items():
        value: Any = config
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        value = value.get("name") if isinstance(value, dict) else value
        if value != wanted and str(value) != str(wanted):
            return False
    return True


def best_run(folder: Path, best: dict[str, Any]) -> Path | None:
    """The run directory of the sweeper's best trial: its value and its settings."""
    for run, value in trials(folder):
        if value == best.get("best_value") and _has(run, best.get("best_params") or {}):
            return run
    return None


def report(folder: str, metric: str) -> list[str]:
    """What a finished search prints: the best validation value, its settings and where the
    best trial's run directory and the sweeper's results are."""
    import yaml

    results = Path(folder).resolve() / RESULTS
    try:
        best = yaml.safe_load(results.read_text())
    except OSError:
        return [f"medfed: the search wrote no {RESULTS} in {folder}"]
    params = " ".join(f"{k}={v}" for k, v in (best.get("best_params") or {}).items())
    lines = [
        f"medfed: best validation {metric} {best['best_value']:.4g} "
        f"({'lowest' if direction(metric) == 'minimize' else 'highest'} of the trials) with "
        f"{params or 'the fixed settings'}"
    ]
    if (run := best_run(results.parent, best)) is not None:
        lines.append(f"medfed: best trial's run directory: {run}")
    lines.append(f"medfed: every trial and {RESULTS}: {results.parent}")
    return lines
