"""The coordinator's Flower ServerApp: composes the study, runs it, writes the run directory.

The same ServerApp object runs on every engine. Its configuration comes from the run config:
``config-json`` (a study already resolved by ``medfed simulate``) or, under ``flwr run``,
``overrides`` (Hydra overrides composed here) and ``output-dir``.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from medfed.server.outputs.rundir import default_output_dir, write_run
from medfed.server.study.config import compose_study, validate_study
from medfed.server.study.loop import Observer, StudyResult, run_study
from medfed.server.study.runstate import clear_for_overwrite, record_failure


def study_from_run_config(run_config: dict[str, Any]) -> dict[str, Any]:
    """The study a run config describes (resolved JSON, or Hydra overrides to compose)."""
    if run_config.get("config-json"):
        study = json.loads(str(run_config["config-json"]))
        validate_study(study)
    else:
        study = compose_study(shlex.split(str(run_config.get("overrides", ""))))
    if run_config.get("output-dir"):
        study["output_dir"] = str(run_config["output-dir"])
    if not study.get("output_dir"):
        study["output_dir"] = str(default_output_dir(study))
    return study


def build_server_app(
    study: dict[str, Any] | None = None, observer: Observer | None = None
) -> ServerApp:
    """A ServerApp running ``study`` (or the one its run config describes) and writing outputs.

    Parameters
    ----------
    study
        A resolved, validated study; ``None`` reads it from the run config at start.
    observer
        Receives progress events (the CLI's progress bar).
    """
    server_app = ServerApp()
    results: list[StudyResult] = []

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        current = study
        if current is None:  # under `flwr run`: Flower's runtime, not a medfed engine
            current = study_from_run_config(dict(context.run_config))
            current["engine"] = {"name": "flwr-run"}
        clear_for_overwrite(current)
        try:
            result = run_study(grid, current, observer)
            if current.get("compare"):
                from medfed.server.study.baselines import run_baselines

                result.baselines = run_baselines(result)
            if result.personalised:  # personalised models exist: score every model on every site
                from medfed.server.outputs.cross_site import table_for

                result.cross_site = table_for(result, grid)  # deployment: where policies allow
            write_run(result)
        except BaseException as exc:  # the run directory says it failed (never "finished")
            record_failure(current, exc)
            raise
        results.append(result)

    server_app.results = results  # type: ignore[attr-defined]
    return server_app


app = build_server_app()
