"""Run a study as a simulated federation on one machine, on the chosen engine.

This is the one place that wires the ServerApp to the ClientApp (the composition root of a
simulation): ``engine=inprocess`` hands every Message to the ClientApp in this process
(:class:`~medfed.server.simulation.engine.InProcessGrid`); ``engine=ray`` runs the same two apps on
Flower's
simulation runtime. Both apps are the very objects ``flwr run`` loads.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from flwr.app import Context, RecordDict
from flwr.app.typing import ConfigRecordValues
from flwr.common.constant import SUPERLINK_NODE_ID

from medfed.models.ingest.sources import federation_size
from medfed.server.app import build_server_app
from medfed.server.outputs.rundir import summary
from medfed.server.study.loop import StudyResult

CLIENT_APP = "medfed.client.app:app"
"""The ClientApp's Flower component reference (``[tool.flwr.app.components]``)."""


def load_client_app(reference: str = CLIENT_APP) -> Any:
    """The hospitals' ClientApp, loaded by its component reference as Flower's runtimes load it:
    the coordinator's code never imports the node's (``server`` never imports ``client``)."""
    import importlib

    module, _, name = reference.partition(":")
    return getattr(importlib.import_module(module), name)


def _node_configs(n: int) -> list[dict[str, int]]:
    return [{"partition-id": i, "num-partitions": n} for i in range(n)]


def run_simulated_study(study: dict[str, Any]) -> StudyResult:
    """Run ``study`` (resolved and validated) and write its run directory; return the result."""
    client_app = load_client_app()
    observer = None
    if not study.get("quiet"):
        from medfed.server.outputs.progress import ProgressObserver

        observer = ProgressObserver()
    server_app = build_server_app(study, observer)
    n = federation_size(study["federation"])
    engine = study["engine"]["name"]
    if engine == "inprocess":
        from medfed.server.simulation.engine import InProcessGrid
        from medfed.server.study.adversary import MaliciousClientApp, attack_targets

        targets, kind, scale = attack_targets(study, n)
        if targets:
            client_app = MaliciousClientApp(client_app, targets, kind, scale, int(study["seed"]))

        grid = InProcessGrid(client_app, _node_configs(n), run_config={})
        server_app(
            grid,
            Context(
                run_id=1,
                node_id=SUPERLINK_NODE_ID,
                node_config={},
                state=RecordDict(),
                run_config={},
            ),
        )
    elif engine == "ray":
        _run_on_ray(server_app, client_app, n, study)
    else:
        raise ValueError(f"engine={engine!r} is unknown; use inprocess or ray")
    if not server_app.results:  # type: ignore[attr-defined]  # set by build_server_app
        raise RuntimeError("the study did not finish; see the log above")
    result: StudyResult = server_app.results[-1]  # type: ignore[attr-defined]  # (as above)
    if observer is not None:
        observer.final_table(summary(result), study["output_dir"])
    elif not study.get("quiet"):
        print(study["output_dir"])
    return result


def _run_on_ray(server_app: Any, client_app: Any, n: int, study: dict[str, Any]) -> None:
    """Flower's simulation runtime with one (configurable) CPU per virtual hospital."""
    from flwr.simulation import run_simulation

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    cfg = study["engine"]
    backend: dict[str, dict[str, ConfigRecordValues]]  # Flower's BackendConfig
    backend = {
        "client_resources": {
            "num_cpus": float(cfg.get("num_cpus_per_client", 1)),
            "num_gpus": float(cfg.get("num_gpus_per_client", 0.0)),
        },
        "init_args": {
            "logging_level": "ERROR",
            "log_to_driver": bool(study["verbose"]),
            "include_dashboard": False,
        },
    }
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=n,
        backend_config=backend,
        verbose_logging=bool(study["verbose"]),
    )
    sys.stdout.flush()
