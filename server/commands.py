"""The researcher's commands: ``medfed simulate``, ``medfed tasks``, ``medfed checkpoint-key``.

``medfed simulate [Hydra overrides]`` runs a simulated federation (a Hydra app: ``-m`` sweeps,
``--cfg job``, ``--help`` work as in any Hydra app; ``-m hydra/sweeper=optuna`` searches on the
validation metric, :mod:`medfed.server.tuning`). Every configuration mistake ends with one
sentence and exit status 2; a study that fails ends with one sentence and exit status 1.
The ``medfed`` dispatcher (:mod:`medfed.infra.cli`) calls the ``*_main`` functions.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from medfed.server.study.loop import StudyResult

SEARCHPATH = "hydra.searchpath="  # the user's config folders: composed like the shipped ones


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _fail(message: str, status: int) -> None:
    print(f"medfed: error: {message}", file=sys.stderr)
    raise SystemExit(status)


def _prevalidate(
    args: list[str],
    expand: Callable[[list[str]], list[list[str]]] | None = None,
    note: Callable[[list[str], list[str]], str] | None = None,
) -> list[dict[str, Any]]:
    """Compose and validate every sweep combination (``expand``: which ones, by default all)
    before any job starts; return the studies. ``note(overrides, combination)`` adds to the
    error of a combination that is refused."""
    from medfed.server.study.config import (
        ConfigError,
        NothingToResume,
        compose_study,
        expand_sweeps,
    )

    overrides = [
        a
        for a in args
        if not a.startswith("-")
        and (a.startswith(SEARCHPATH) or not a.startswith(("hydra.", "hydra/")))
    ]
    try:
        combos = (expand or expand_sweeps)(overrides)
    except Exception as exc:
        _fail(f"cannot parse the overrides: {str(exc).splitlines()[0]}", 2)
    studies = []
    for combo in combos:
        try:
            studies.append(compose_study(combo))
        except NothingToResume as exc:
            print(f"medfed: {exc}")
            raise SystemExit(0) from None
        except ConfigError as exc:
            _fail(f"{exc}{note(overrides, combo) if note else ''}", 2)
        if studies[-1]["federation"]["name"] == "nodes":
            _fail(
                "federation=nodes is a deployed federation (medfed run); simulate "
                "federation=synthetic or federation=sites",
                2,
            )
    return studies


def simulate_main(argv: list[str]) -> int:
    """Run ``medfed simulate``: check the overrides, then hand over to Hydra."""
    import hydra

    from medfed.server.study.config import config_dir

    passthrough = any(
        a in ("--help", "-h", "--hydra-help", "--info") or a.startswith("--cfg") for a in argv
    )
    sweep = "-m" in argv or "--multirun" in argv
    search = None if passthrough else _search(argv)  # hydra/sweeper=optuna (server/tuning.py)
    if search is not None:
        argv = [*argv, *search[0]]
    if not passthrough:
        studies = _prevalidate(argv) if search is None else []
        hydra_args = [
            a
            for a in argv
            if a.startswith(("hydra.", "hydra/", "-")) and not a.startswith(SEARCHPATH)
        ]
        if not sweep and not hydra_args and studies:
            _run_single(studies[0])  # one run: composed once, no Hydra job machinery
            return 0
    for arg in list(argv):
        if arg.startswith("output_dir=") and "-m" not in argv and "--multirun" not in argv:
            argv.append(f"hydra.run.dir={arg.split('=', 1)[1]}")
    sys.argv = ["medfed simulate", *argv]
    hydra.main(config_path=str(config_dir()), config_name="config", version_base="1.3")(
        _simulate_job
    )()
    if search is not None:
        from medfed.server.tuning_report import report

        print("\n".join(report(search[1], search[2])))
    return 0


def _search(argv: list[str]) -> tuple[list[str], str, str] | None:
    """Check an Optuna search before trial 1 (:mod:`medfed.server.tuning`): the Hydra arguments
    it adds, the sweeper's folder and the validation metric; ``None`` without one."""
    from medfed.server import tuning

    if not tuning.wanted(argv):
        return None
    if "-m" not in argv and "--multirun" not in argv:
        _fail(f"{tuning.OPTUNA} runs a search: add -m (medfed simulate -m {tuning.OPTUNA} ...)", 2)
    try:
        tuning.check_plugin()
        studies = _prevalidate(argv, tuning.candidate_combos, tuning.note)
        overrides = tuning.search_space(argv, tuning.sweeper_settings(argv))
        if overrides != argv:  # a config file's search space: checked the same way
            studies = _prevalidate(overrides, tuning.candidate_combos, tuning.note)
        tuning.check_sampler(argv, overrides)
        added, folder = tuning.sweeper_arguments(argv, studies)
        return added, folder, tuning.objective(studies[0])
    except tuning.SearchError as exc:
        _fail(str(exc), 2)
    return None  # not reached: _fail exits


def _run_single(study: dict[str, Any]) -> None:
    from medfed.server.outputs.rundir import default_output_dir

    if not study.get("output_dir"):
        study["output_dir"] = str(default_output_dir(study))
        _check_output_dir(study)
    _run(study)


def _check_output_dir(study: dict[str, Any]) -> None:
    from medfed.server.study.config import ConfigError, check_output_dir

    try:
        check_output_dir(study)
    except ConfigError as exc:
        _fail(str(exc), 2)


def _run(study: dict[str, Any]) -> StudyResult:
    """Run a validated study; a failure ends in one sentence (a traceback with verbose=true)."""
    from medfed.infra.files import WriteError, make_folder
    from medfed.server.simulation.run import run_simulated_study

    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM ends the study as Ctrl-C does
    try:
        make_folder(study["output_dir"])  # a folder we cannot write ends before round 0
        result = run_simulated_study(study)
    except KeyboardInterrupt:
        _fail("interrupted; the run directory holds only what was finished", 130)
    except WriteError as exc:  # disk full, read-only, no permission: the path and the cause
        _fail(str(exc), 1)
    except Exception as exc:  # a failed study ends in one sentence, not a traceback
        if study.get("verbose"):
            raise
        first = (str(exc).splitlines() or [""])[0]
        _fail(
            f"the study failed: {type(exc).__name__}: {first} (verbose=true shows the traceback)", 1
        )
    if result.stopped:  # the run directory is written, with status: stopped and the reason
        print(f"medfed: the study stopped: {result.stopped}", file=sys.stderr)
        raise SystemExit(1)
    return result


def _simulate_job(cfg: Any) -> float | None:
    """One Hydra job; returns the validation metric of its best round under early stopping
    (the value Optuna's sweeper optimises; never a test metric)."""
    from hydra.core.hydra_config import HydraConfig

    from medfed.server.study.config import (
        ConfigError,
        absolute_paths,
        study_from_cfg,
        validate_study,
    )
    from medfed.server.tuning import trial_value

    study = absolute_paths(study_from_cfg(cfg))
    try:
        validate_study(study)
    except ConfigError as exc:
        _fail(str(exc), 2)
    hydra_cfg = HydraConfig.get()
    if not study.get("output_dir"):
        study["output_dir"] = hydra_cfg.runtime.output_dir
    elif str(hydra_cfg.mode) == "RunMode.MULTIRUN":  # one folder per job of a sweep
        study["output_dir"] = str(Path(study["output_dir"]) / str(hydra_cfg.sweep.subdir))
    _check_output_dir(study)
    return trial_value(_run(study).early_stopping)


def tasks_main(argv: list[str]) -> int:
    """``medfed tasks``: one line per shipped task schema."""
    from medfed.models.schema import available_tasks, load_task

    if argv:
        help_asked = argv[0] in ("-h", "--help")
        print(
            "usage: medfed tasks\n\nList the shipped task schemas (name, target kind, "
            "features, description).",
            file=sys.stdout if help_asked else sys.stderr,
        )
        return 0 if help_asked else 2

    for name in available_tasks():
        task = load_task(name)
        print(
            f"{name:12s} {task.target.kind:11s} {len(task.features):2d} features  "
            f"{task.description}"
        )
    return 0


def checkpoint_key_main(args: list[str]) -> int:
    """``medfed checkpoint-key FILE``."""
    from medfed.server.study.checkpoint import CheckpointError, new_key

    if args and args[0] in ("-h", "--help"):
        print(
            "usage: medfed checkpoint-key FILE\n\nCreate a Fernet key for encrypted "
            "checkpoints (checkpoint.key_file=FILE); refuses to replace an existing file."
        )
        return 0
    if len(args) != 1 or args[0].startswith("-"):
        _fail("usage: medfed checkpoint-key FILE", 2)
    try:
        path = new_key(args[0])
    except (CheckpointError, OSError) as exc:
        _fail(str(exc), 2)
    print(f"wrote {path}; keep it safe: encrypted checkpoints cannot be read without it")
    return 0
