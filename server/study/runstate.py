"""What a run directory holds, and how its study ended: the checks before a study writes there.

``summary.json`` records ``status``: ``finished`` (every round ran), ``stopped`` (the study could
not go on; ``reason`` says why), ``failed`` (an error; ``reason``). A folder with ``config.yaml``
or ``checkpoint.pt`` but no summary was interrupted. :func:`run_state` reads that; ``resume=``
trusts it, and :func:`refuse_existing_run` keeps a new study from writing over an earlier one
unless ``overwrite=true``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medfed.infra.files import WriteError, atomic_write

RUN_FILES = (
    "summary.json",
    "config.yaml",
    "checkpoint.pt",
    "metrics.csv",
    "model.pt",
    "report.md",
    "convergence.png",
    "epsilon.png",
)
"""The files a study writes into its run directory (what ``overwrite=true`` clears first)."""


class RunDirectoryTaken(ValueError):
    """``output_dir`` already holds a run; the message says which and what to do."""


def run_state(folder: str | Path) -> tuple[str, str] | None:
    """``(status, reason)`` of the run in ``folder``, or None when it holds no run.

    ``status`` is ``finished``, ``stopped``, ``failed`` or ``interrupted`` (files of a run but
    no summary). A summary written before statuses existed counts as finished unless its
    ``stopped`` field says otherwise.
    """
    path = Path(folder)
    try:
        data = json.loads((path / "summary.json").read_text())
    except FileNotFoundError:
        data = None
    except (OSError, ValueError):
        return "interrupted", "summary.json cannot be read"
    if isinstance(data, dict):
        status = data.get("status") or ("stopped" if data.get("stopped") else "finished")
        return str(status), str(data.get("reason") or data.get("stopped") or "")
    if any((path / name).exists() for name in RUN_FILES[1:]):
        return "interrupted", "no summary.json: the study never ended"
    return None


def refuse_existing_run(study: dict[str, Any]) -> None:
    """Raise :class:`RunDirectoryTaken` when ``output_dir`` holds a run and the study neither
    resumes it (``resume=``) nor replaces it (``overwrite=true``)."""
    folder = study.get("output_dir")
    if not folder or study.get("resume") or study.get("overwrite"):
        return
    state = run_state(folder)
    if state is None:
        return
    raise RunDirectoryTaken(
        f"output_dir {folder} already holds a run ({state[0]}); give resume={folder} to "
        f"continue it, overwrite=true to replace it, or another output_dir"
    )


def clear_for_overwrite(study: dict[str, Any]) -> None:
    """With ``overwrite=true``, remove the earlier run's files from ``output_dir`` first, so
    that nothing of it (a finished summary, a stale checkpoint) outlives the new study's start."""
    if not study.get("overwrite") or study.get("resume") or not study.get("output_dir"):
        return
    for name in RUN_FILES:
        path = Path(study["output_dir"]) / name
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise WriteError(path, exc, "remove") from None


def record_failure(study: dict[str, Any], error: BaseException) -> None:
    """Write ``summary.json`` with ``status: failed`` (or ``stopped`` when interrupted) and the
    reason, so the run directory never looks finished; best effort (a full disk stays full).

    The reason is the exception's type and first line (no traceback).
    """
    if not study.get("output_dir"):
        return
    interrupted = isinstance(error, KeyboardInterrupt)
    first = (str(error).splitlines() or [""])[0]
    reason = (
        "interrupted (Ctrl-C or SIGTERM)" if interrupted else f"{type(error).__name__}: {first}"
    )
    data = {
        "status": "stopped" if interrupted else "failed",
        "reason": reason,
        "stopped": reason,
        "study_id": study.get("study_id"),
    }
    try:
        atomic_write(Path(study["output_dir"]) / "summary.json", json.dumps(data, indent=2))
    except OSError:
        pass
