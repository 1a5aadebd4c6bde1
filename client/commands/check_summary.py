"""The last ``medfed node check`` result, kept beside the dataset card for the node view.

``<card>.check.json`` holds the time, the exit status, the verdict line and the printed report
(aggregates only: counts, shares and ranges, never a data row). Each check replaces the previous
summary on purpose (the file is "the last check"); it is written to a temporary name and renamed,
so a reader never sees half of it. A folder the node cannot write to does not fail the check: the
summary is then only printed.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

SUFFIX = ".check.json"


def summary_path(card: str | Path) -> Path:
    """Where the summary of checking ``card`` goes: ``<card>.check.json``."""
    path = Path(card)
    return path.with_name(path.name + SUFFIX)


def write_check_summary(card: str | Path, status: int, report: str) -> Path | None:
    """Write the summary of one check; return its path (``None`` if the folder is read-only)."""
    path = summary_path(card)
    lines = report.splitlines()
    verdict = next(
        (line for line in reversed(lines) if line.startswith("result:")), lines[-1] if lines else ""
    )
    data = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "card": str(Path(card).resolve()),
        "exit_status": status,
        "result": verdict,
        "report": report,
    }
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)
    except OSError:
        return None
    return path
