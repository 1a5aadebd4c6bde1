"""The study configuration: composing it with Hydra and checking it before anything runs.

A *study* is the resolved Hydra config as a plain dict (no ``hydra`` section). It travels to every
hospital as JSON in round 0, so each node trains with exactly the settings the server used.
:func:`validate_study` turns every user mistake into one sentence naming the setting.
"""

from __future__ import annotations

import itertools
import json
from importlib.resources import files
from pathlib import Path
from typing import Any, cast

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from medfed.models.holdout import config_problem as early_stopping_problem
from medfed.models.imputation import check_preprocessing
from medfed.models.ingest.sources import MAX_NODES, DataConfigError, federation_size
from medfed.models.personal import config_problem as personalise_problem
from medfed.models.schema import SchemaError, task_from_dict
from medfed.strategies.central_dp import check_central
from medfed.strategies.fairness import config_problem as qfedavg_problem
from medfed.strategies.registry import StrategyConfigError, build_strategy
from medfed.strategies.scaffold import config_problem as scaffold_problem


class ConfigError(ValueError):
    """An invalid study configuration; the message is one sentence naming the setting."""


class NothingToResume(ConfigError):
    """``resume=RUN_DIR`` names a study that already ran all its rounds. Not an error: the
    command says so and exits 0, and the run directory is left as it is (resuming would only
    evaluate the final model again and overwrite its summary with the re-run's timings)."""


def check_unfinished(run_dir: Path) -> None:
    """Raise :class:`NothingToResume` when ``run_dir/summary.json`` records ``status: finished``.
    A study that stopped early, failed or was interrupted (no summary) may be resumed."""
    from medfed.server.study.runstate import run_state

    state = run_state(run_dir)
    if state is not None and state[0] == "finished":
        try:
            rounds = json.loads((run_dir / "summary.json").read_text()).get("rounds")
        except (OSError, ValueError, AttributeError):
            rounds = "its"
        raise NothingToResume(
            f"{run_dir} already finished all {rounds} rounds; "
            "nothing to resume (the run directory is unchanged)"
        )


def check_output_dir(study: dict[str, Any]) -> None:
    """Raise :class:`ConfigError` when ``output_dir`` holds a run that this study would write
    over (see :func:`medfed.server.study.runstate.refuse_existing_run`)."""
    from medfed.server.study.runstate import RunDirectoryTaken, refuse_existing_run

    try:
        refuse_existing_run(study)
    except RunDirectoryTaken as exc:
        raise ConfigError(str(exc)) from None


def config_dir() -> Path:
    """The folder of the shipped Hydra configuration (``conf/``)."""
    return Path(str(files("medfed.conf")))


def study_from_cfg(cfg: DictConfig) -> dict[str, Any]:
    """The resolved study dict of a composed Hydra config (without the ``hydra`` section)."""
    study = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    assert isinstance(study, dict)
    study.pop("hydra", None)
    return cast(dict[str, Any], study)  # OmegaConf types the keys as any DictKeyType


def compose_study(overrides: list[str]) -> dict[str, Any]:
    """Compose the study config from the shipped ``conf/`` and Hydra ``overrides``.

    Raises
    ------
    ConfigError
        For an unknown group option or key, or an invalid value.
    """
    if error := added_keys(overrides):
        raise ConfigError(error)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose(config_name="config", overrides=overrides)
    except Exception as exc:  # Hydra's errors span lines; keep the first useful one
        raise ConfigError(_hydra_message(exc)) from None
    finally:
        GlobalHydra.instance().clear()
    study = absolute_paths(study_from_cfg(cfg))
    if study.get("resume"):
        study = resumed_study(study, overrides)
    validate_study(study)
    check_study_sites(study)
    check_output_dir(study)
    return study


def check_study_sites(study: dict[str, Any]) -> None:
    """Read every dataset card of a ``federation=sites`` study now, before round 1 (see
    :mod:`medfed.server.study.sites`); :class:`ConfigError` for the first that cannot run."""
    from medfed.server.study.sites import check_sites

    if error := check_sites(study):
        raise ConfigError(error)


def added_keys(overrides: list[str]) -> str | None:
    """``+key=value`` adding a setting medfed does not have (a typo Hydra would accept).

    Adding a config group (``+experiment=x``) and per-hospital policy overrides
    (``+policy.hospitals.NAME.KEY=v``, the section is empty by default) stay allowed.
    """
    groups = {p.name for p in config_dir().iterdir() if p.is_dir()}
    for override in overrides:
        if not override.startswith("+"):
            continue
        key = override.lstrip("+").split("=", 1)[0]
        if key in groups or key.startswith("hydra") or key.startswith("policy.hospitals"):
            continue
        return (
            f"{override} adds a setting medfed does not have ({key}); check the spelling "
            "and drop the + to change an existing one (`medfed simulate --cfg job` lists "
            "every setting)"
        )
    return None


# What a resumed study may change: how it runs, never what it computes.
RESUME_MAY_CHANGE = ("resume", "quiet", "verbose", "timeout", "engine", "checkpoint", "threads")


def resumed_study(study: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """The study of the run directory ``study["resume"]``, with this invocation's run settings.

    ``resume=RUN_DIR`` continues the study exactly as ``RUN_DIR/config.yaml`` describes it (the
    checkpoint holds the same configuration and is checked against it); an override that would
    change what the study computes is refused.
    """
    import yaml

    run_dir = Path(str(study["resume"])).expanduser().resolve()
    check_unfinished(run_dir)
    for override in overrides:
        key = override.lstrip("+~").split("=", 1)[0].split(".", 1)[0].split("/", 1)[0]
        if key not in RESUME_MAY_CHANGE and not override.startswith("hydra.searchpath="):
            raise ConfigError(
                f"resume={run_dir} continues the study configured in that run "
                f"directory; drop the override {override} (a resumed study may "
                f"only change {', '.join(RESUME_MAY_CHANGE[1:])})"
            )
    try:
        original = yaml.safe_load((run_dir / "config.yaml").read_text())
    except OSError:
        raise ConfigError(
            f"resume={run_dir}: no config.yaml there; give the run directory of "
            "the study to continue"
        ) from None
    if not isinstance(original, dict) or "task" not in original:
        raise ConfigError(f"resume={run_dir}: config.yaml is not a medfed study")
    for key in RESUME_MAY_CHANGE:
        if key in study:
            original[key] = study[key]
    original["resume"] = str(run_dir)
    original["output_dir"] = str(run_dir)
    return original


def absolute_paths(study: dict[str, Any]) -> dict[str, Any]:
    """Make dataset-card paths absolute, so nodes started from another folder find them."""
    cards = study["federation"].get("cards")
    if cards and isinstance(cards, list):
        study["federation"]["cards"] = [str(Path(c).expanduser().resolve()) for c in cards]
    return study


def _hydra_message(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    if text.startswith("In 'config': Could not find"):
        text = text.replace("In 'config': ", "")
    if "Could not find" in text:
        options = list(
            itertools.takewhile(
                lambda line: not line.startswith("Config search"),
                (line for line in lines[1:] if not line.startswith("Available")),
            )
        )
        text += f"; available: {', '.join(options)}" if options else ""
    elif "Could not override" in text or "not in struct" in str(exc):
        text = (
            text.rstrip(".") + ": no such setting (check the spelling; "
            "`medfed simulate --cfg job` lists every setting)"
        )
    return text


def expand_sweeps(overrides: list[str]) -> list[list[str]]:
    """Every combination a ``-m`` sweep will run (``seed=1,2`` gives two override lists)."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    choices = []
    for item in parsed:
        key = item.get_key_element()
        if item.is_sweep_override():
            choices.append([f"{key}={value}" for value in item.sweep_string_iterator()])
        else:
            choices.append([cast(str, item.input_line)])  # always set by parse_overrides
    return [list(combo) for combo in itertools.product(*choices)]


def _positive(
    study: dict[str, Any], dotted: str, *, integer: bool = False, allow_none: bool = False
) -> None:
    value: Any = study
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if value is None and allow_none:
        return
    ok = isinstance(value, int | float) and not isinstance(value, bool) and value > 0
    if integer:
        ok = ok and float(value).is_integer()
    if not ok:
        kind = "a positive integer" if integer else "a positive number"
        raise ConfigError(f"{dotted} must be {kind}, got {value!r}")


def _check_federation(federation: dict[str, Any]) -> None:
    """Sizes and split of the synthetic federation (cards carry their own)."""
    if federation.get("name") != "synthetic":
        return
    low, high = federation.get("min_size"), federation.get("max_size")
    if not isinstance(low, int) or not isinstance(high, int) or not 20 <= low <= high:
        raise ConfigError(
            f"federation.min_size ({low}) and max_size ({high}) must be integers "
            "with 20 <= min_size <= max_size"
        )
    fraction = federation.get("test_fraction")
    if not isinstance(fraction, int | float) or not 0.05 <= fraction <= 0.9:
        raise ConfigError(
            f"federation.test_fraction must be between 0.05 and 0.9, got {fraction!r}"
        )
    for size in federation.get("sizes") or []:
        if not isinstance(size, int) or size < 20:
            raise ConfigError(
                f"federation.sizes must be integers of at least 20 rows, got {size!r}"
            )


def _check_shared(study: dict[str, Any], n_nodes: int | None) -> None:
    """The checks the node runs too (:mod:`medfed.models.settings`)."""
    from medfed.models import settings

    deployed = study["federation"].get("name") == "nodes"  # each node brings its own policy
    for error in (
        settings.list_errors(study),
        settings.privacy_errors(study["privacy"]),
        None
        if deployed
        else settings.policy_errors(study.get("policy"), study["privacy"], n_nodes),
        settings.robust_strategy_errors(study["strategy"], n_nodes),
    ):
        if error:
            raise ConfigError(error)


def validate_study(study: dict[str, Any]) -> None:
    """Check a study config; raise :class:`ConfigError` naming the first bad setting."""
    from medfed.models.settings import list_errors, lr_schedule_error

    if error := list_errors(study):
        raise ConfigError(error)
    for key in (
        "rounds",
        "train.batch_size",
        "evaluate.every",
        "evaluate.auroc_bins",
        "threads",
        "preprocessing.min_cell",
    ):
        _positive(study, key, integer=True)
    _positive(study, "train.local_steps", integer=True, allow_none=True)
    _positive(study, "stop_after_skipped", integer=True, allow_none=True)
    _positive(study, "train.local_epochs", integer=True)
    _positive(study, "train.lr")
    _positive(study, "timeout")
    seed = study.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    _check_federation(study["federation"])
    if study["train"]["optimizer"] not in ("sgd", "adam"):
        raise ConfigError(
            f"train.optimizer must be sgd or adam, got {study['train']['optimizer']!r}"
        )
    if (problem := lr_schedule_error(study["train"])) is not None:
        raise ConfigError(problem)
    if study["preprocessing"]["normalisation"] not in ("global", "site"):
        raise ConfigError(
            "preprocessing.normalisation must be global or site, got "
            f"{study['preprocessing']['normalisation']!r}"
        )
    if (problem := check_preprocessing(study["preprocessing"])) is not None:
        raise ConfigError(problem)
    problem = (
        personalise_problem(study)
        or qfedavg_problem(study)
        or scaffold_problem(study)
        or early_stopping_problem(study)
    )
    if problem is not None:
        raise ConfigError(problem)
    for key in ("screening.max_norm_ratio", "screening.max_update_norm"):
        _positive(study, key, allow_none=True)
    every = (study.get("checkpoint") or {}).get("every", 1)
    if not isinstance(every, int) or isinstance(every, bool) or every < 0:
        raise ConfigError(
            f"checkpoint.every must be a whole number of rounds (0: never), got {every!r}"
        )
    try:
        task_from_dict(study["task"], source=f"task '{study['task'].get('name')}'")
        n_nodes = federation_size(study["federation"])
        known = None if n_nodes == MAX_NODES else n_nodes
        _check_shared(study, known)
        build_strategy(study["strategy"], n_nodes)
        check_central(study, n_nodes)
        from medfed.server.study.adversary import attack_targets

        targets, _, _ = attack_targets(study, n_nodes)
    except (SchemaError, DataConfigError, StrategyConfigError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    if targets and study["engine"]["name"] != "inprocess":
        raise ConfigError(
            "attack.hospitals needs engine=inprocess (malicious hospitals are a "
            "simulation of the in-process engine)"
        )
    from medfed.server.monitor.alerts import config_error as alerts_error  # alerts.*, metrics_port

    if error := alerts_error(study):
        raise ConfigError(error)
    if study.get("secure_aggregation"):
        from medfed.strategies.secagg import config_error

        if error := config_error(study):
            raise ConfigError(error)
