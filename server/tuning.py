"""Hyper-parameter search on the validation metric with Hydra's Optuna sweeper.

``medfed simulate -m hydra/sweeper=optuna early_stopping.patience=2 'train.lr=interval(0.01,0.3)'``
runs Hydra's real multirun: the sweeper (``hydra-optuna-sweeper``, Optuna's ask/tell loop) picks
each trial's settings, Hydra launches the trial as an ordinary ``medfed simulate`` job in its own
run directory, and the job returns the federation's *validation* metric of its best round
(``summary.json``: ``early_stopping.best_validation``, computed from the validation rows early
stopping carves from each hospital's training rows). The test split never reaches the sweeper:
a study without early stopping has no validation split and is refused before any trial starts,
since choosing settings on the test split would leak it into the reported results.

This module checks such a search before trial 1 (every candidate value of every searched setting
is composed and validated like any other study, the direction follows the metric) and gives each
trial's value; :mod:`medfed.server.tuning_report` reads the sweeper's results afterwards. The
sweeper itself is the published plugin, not medfed code; its optuna<3 pin is stale (see the
Makefile's install step).
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any, cast

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep, Override, RangeSweep

from medfed.models.holdout import LOWER_IS_BETTER

OPTUNA = "hydra/sweeper=optuna"
INSTALL = (
    "make install (or: pip install -e '.[tune]' && "
    "pip install --no-deps hydra-optuna-sweeper==1.3.0)"
)
RESULTS = "optimization_results.yaml"


class SearchError(ValueError):
    """A search that cannot start; the message is one line naming the setting."""


def wanted(argv: list[str]) -> bool:
    """Whether the command line chooses the Optuna sweeper."""
    return any(a.lstrip("+") == OPTUNA for a in argv)


def sweeper_settings(argv: list[str]) -> dict[str, Any]:
    """The search's ``hydra.sweeper`` section, composed now as Hydra will compose it (from the
    command line and any config file it names), so that a bad ``hydra.sweeper.*`` setting is one
    line before trial 1 and a search space written in a config file (``params:``) is checked
    like one on the command line. Call after the study's own overrides are checked."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from medfed.server.study.config import config_dir

    parsed = OverridesParser.create().parse_overrides([a for a in argv if not a.startswith("-")])
    fixed = [str(item.input_line) for item in parsed if not item.is_sweep_override()]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose(config_name="config", overrides=fixed, return_hydra_config=True)
    except Exception as exc:  # Hydra's message and its cause, one line
        cause = f": {str(exc.__cause__).splitlines()[0]}" if exc.__cause__ else ""
        raise SearchError(f"{str(exc).splitlines()[0].rstrip('.')}{cause}") from None
    finally:
        GlobalHydra.instance().clear()
    sweeper = cast(dict[str, Any], OmegaConf.to_container(cfg.hydra.sweeper, resolve=False))
    for key, low in (("n_trials", 1), ("n_jobs", 1)):
        if not isinstance(sweeper.get(key), int) or sweeper[key] < low:
            raise SearchError(f"hydra.sweeper.{key} must be a whole number >= {low}")
    if not 0.0 <= float(sweeper.get("max_failure_rate") or 0.0) <= 1.0:
        raise SearchError("hydra.sweeper.max_failure_rate must be a fraction between 0 and 1")
    return sweeper


def search_space(argv: list[str], sweeper: dict[str, Any]) -> list[str]:
    """The command line with a config file's ``hydra.sweeper.params`` in front (as the plugin
    reads them; the command line wins for the same setting)."""
    given = {a.lstrip("+~").split("=", 1)[0] for a in argv}
    params = sweeper.get("params") or {}
    return [f"{key}={value}" for key, value in params.items() if key not in given] + argv


def _candidates(item: Override) -> list[str]:
    """The values of one setting to check before trial 1: each choice; both ends of a range
    (the plugin gives Optuna ``range(a,b)``'s ``b`` as its inclusive upper end, so TPE and
    random sampling can pick ``b`` itself); both ends of an interval and a point inside it
    (Hydra reads an interval as floats even when both ends are whole numbers, so a
    whole-number setting searched over an interval is refused here, not in a trial)."""
    key = item.get_key_element()
    if not item.is_sweep_override():
        return [str(item.input_line)]
    value = item.value()
    if isinstance(value, IntervalSweep) and value.start is not None and value.end is not None:
        start, end = float(value.start), float(value.end)
        inside = start + (end - start) * 0.382
        return [f"{key}={start}", f"{key}={end}", f"{key}={inside:.6g}"]
    if isinstance(value, RangeSweep) and not value.shuffle:  # Optuna's high is inclusive
        return [f"{key}={value.start}", f"{key}={value.stop}"]
    return [f"{key}={v}" for v in item.sweep_string_iterator()]


def candidate_combos(overrides: list[str]) -> list[list[str]]:
    """The compositions checked before a search starts: every searched setting at its first
    candidate, then each other candidate of each setting with the rest at their first.

    Checking the full product (as a grid sweep does) would compose 2**k studies for k searched
    intervals; one setting at a time finds every value that is invalid on its own.
    """
    per_setting = [_candidates(i) for i in OverridesParser.create().parse_overrides(overrides)]
    base = [values[0] for values in per_setting]
    combos = [base]
    for position, values in enumerate(per_setting):
        for value in values[1:]:
            combos.append([*base[:position], value, *base[position + 1 :]])
    return combos


def note(overrides: list[str], combo: list[str]) -> str:
    """What to add to the error of a refused candidate that is a point inside an interval, as
    the user never wrote that value."""
    for item in OverridesParser.create().parse_overrides(overrides):
        if isinstance(item.value(), IntervalSweep) and _candidates(item)[-1] in combo:
            return (
                f" (a value inside {item.input_line}: Hydra's intervals are floats; use "
                "range(a,b) or choice(...) for whole numbers)"
            )
    return ""


SAMPLERS = ("tpe", "random", "grid", "nsgaii")  # those that run on the pinned Optuna


def check_sampler(argv: list[str], overrides: list[str]) -> None:
    """Refuse a sampler that cannot run here (``motpe`` left Optuna in 4.0, ``cmaes`` needs the
    ``cmaes`` package) and a grid over a continuous interval (Optuna's grid needs a list)."""
    sampler = _given(argv, "hydra/sweeper/sampler") or "tpe"
    if sampler not in SAMPLERS:
        raise SearchError(
            f"hydra/sweeper/sampler={sampler} cannot run with this install (Optuna 5); use one of "
            f"{', '.join(SAMPLERS)}"
        )
    if sampler != "grid":
        return
    settings = [o for o in overrides if not o.startswith(("-", "hydra.", "hydra/"))]
    for item in OverridesParser.create().parse_overrides(settings):
        if isinstance(item.value(), IntervalSweep):
            raise SearchError(
                f"hydra/sweeper/sampler=grid needs values to list: {item.input_line} is an "
                "interval; use choice(...) or range(...)"
            )


def objective(study: dict[str, Any]) -> str:
    """The validation metric a search of ``study`` optimises (early stopping's metric)."""
    section = study.get("early_stopping") or {}
    if section.get("patience") is None:
        raise SearchError(
            f"{OPTUNA} optimises the validation metric of early stopping, and this study "
            "has no validation split: set early_stopping.patience=N (settings are never "
            "chosen on the test split)"
        )
    metric = section.get("metric")
    return str(metric or study["task"].get("primary_metric") or study["task"]["metrics"][0])


def direction(metric: str) -> str:
    """``minimize`` for error metrics and the loss, ``maximize`` otherwise (as early stopping
    ranks rounds: :data:`medfed.models.holdout.LOWER_IS_BETTER`)."""
    return "minimize" if metric in LOWER_IS_BETTER else "maximize"


def _given(argv: list[str], key: str) -> str | None:
    found = [a.split("=", 1)[1] for a in argv if a.lstrip("+").split("=", 1)[0] == key]
    return found[-1] if found else None


def sweeper_arguments(argv: list[str], studies: list[dict[str, Any]]) -> tuple[list[str], str]:
    """Hydra arguments a search adds, and the folder the sweeper writes its results to.

    The direction follows the metric (a contradicting ``hydra.sweeper.direction`` is refused),
    the sampler is seeded with the study's ``seed`` (the same command proposes the same
    trials), and the sweep folder is fixed now so the results can be read afterwards.
    """
    metrics = sorted({objective(study) for study in studies})
    if len(metrics) > 1:
        raise SearchError(
            f"the trials would optimise different validation metrics ({', '.join(metrics)}); "
            "keep task= and early_stopping.metric= fixed in a search"
        )
    wanted_direction = direction(metrics[0])
    given = _given(argv, "hydra.sweeper.direction")
    if given is not None and given != wanted_direction:
        raise SearchError(
            f"hydra.sweeper.direction={given} contradicts the metric: validation "
            f"{metrics[0]} is better when {'lower' if wanted_direction == 'minimize' else 'higher'}"
            f"; drop the override"
        )
    added = [] if given else [f"hydra.sweeper.direction={wanted_direction}"]
    sampler = _given(argv, "hydra/sweeper/sampler")
    if sampler != "grid" and _given(argv, "hydra.sweeper.sampler.seed") is None:
        added.append(f"hydra.sweeper.sampler.seed={int(studies[0]['seed'])}")
    folder = _given(argv, "hydra.sweep.dir") or studies[0].get("output_dir")
    if not folder:
        folder = f"multirun/{time.strftime('%Y%m%d-%H%M%S')}"
        added.append(f"hydra.sweep.dir={folder}")
    elif _given(argv, "hydra.sweep.dir") is None:
        added.append(f"hydra.sweep.dir={folder}")
    check_folder(str(folder), studies[0])
    return added, str(folder)


def check_folder(folder: str, study: dict[str, Any]) -> None:
    """Refuse a search folder that holds an earlier search (its ``optimization_results.yaml``
    or a trial's run directory), unless ``overwrite=true``: the sweeper would write over its
    results, and the first trial would only find its run directory taken mid-search."""
    root = Path(folder)
    if study.get("overwrite") or not root.is_dir():
        return
    if (root / RESULTS).exists() or any(root.glob("*/config.yaml")):
        raise SearchError(
            f"{folder} already holds a search ({RESULTS} or trial run directories); choose "
            "another output_dir (or hydra.sweep.dir), or overwrite=true to replace it"
        )


def check_plugin() -> None:
    """Raise :class:`SearchError` when the Optuna sweeper plugin (or optuna) is not installed.

    The plugin (1.3.0, the latest) builds Optuna's pre-3.0 distributions and passes every TPE
    option; Optuna 5 still accepts them but warns once per option (``FutureWarning``: removed
    in Optuna 6, hence the pin). Those warnings are for the plugin's authors, not for a
    researcher, so they are silenced here, with Optuna's informational log lines.
    """
    try:
        import hydra_plugins.hydra_optuna_sweeper.optuna_sweeper  # noqa: F401
        import optuna
    except ImportError as exc:
        raise SearchError(
            f"{OPTUNA} needs the Optuna sweeper ({exc.name or 'optuna'} is not installed): "
            f"{INSTALL}"
        ) from None
    warnings.filterwarnings("ignore", r".*deprecated in v\d.*removed in v6\.0\.0", FutureWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def trial_value(early_stopping: dict[str, Any]) -> float | None:
    """The value a trial returns to the sweeper: its best round's validation metric (``None``
    without early stopping, as in an ordinary sweep).

    A trial whose validation metric was never finite (a diverged model) returns the worst
    value, ``-inf`` for a maximised metric and ``+inf`` for a minimised one: Optuna ranks it
    last and the search goes on. NaN is not an option: the plugin cannot record it and ends
    the whole search with a traceback.
    """
    if not early_stopping:
        return None
    value = float(early_stopping["best_validation"])
    if math.isfinite(value):
        return value
    metric = str(early_stopping.get("metric"))
    worst = math.inf if direction(metric) == "minimize" else -math.inf
    print(
        f"medfed: no round had a finite validation {metric} (the model diverged); "
        f"the search counts this trial as {worst}",
        file=sys.stderr,
    )
    return worst
