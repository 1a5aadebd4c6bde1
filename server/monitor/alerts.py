"""Alerts about a running study: what a coordinator should look at now.

Four kinds, computed from the per-round history that :mod:`medfed.server.monitor.status` keeps:

==============  =====================================================================
``missed``      a hospital did not train in ``alerts.missed_rounds`` consecutive rounds it was
                asked to (missed the deadline, refused by its policy, or its update rejected)
``budget``      a hospital's epsilon reached ``alerts.budget_fraction`` of its budget
``worse``       the global primary metric got worse ``alerts.worse_rounds`` rounds in a row
``stopped``     the study stopped before its last round, or failed
==============  =====================================================================

The same list goes to ``status.json``, the dashboard and the log (one warning per new alert).
"""

from __future__ import annotations

import socket
from typing import Any

DEFAULTS: dict[str, Any] = {"missed_rounds": 3, "worse_rounds": 3, "budget_fraction": 0.8}
NOT_TRAINED = ("missed", "refused", "rejected")


def alert_settings(study: dict[str, Any]) -> dict[str, Any]:
    """The study's ``alerts`` settings over the defaults."""
    return {**DEFAULTS, **(study.get("alerts") or {})}


def config_error(study: dict[str, Any]) -> str | None:
    """The first bad ``alerts.*`` or ``metrics_port`` setting as one sentence, else ``None``.

    Called by :func:`medfed.server.config.validate_study` before any work starts.
    """
    settings = alert_settings(study)
    unknown = sorted(set(settings) - set(DEFAULTS))
    if unknown:
        return (
            f"alerts.{unknown[0]} is not a setting; the alerts settings are "
            f"{', '.join(sorted(DEFAULTS))}"
        )
    for key in ("missed_rounds", "worse_rounds"):
        value = settings[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            return f"alerts.{key} must be a whole number of rounds of at least 1, got {value!r}"
    fraction = settings["budget_fraction"]
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction <= 1:
        return f"alerts.budget_fraction must be a number in (0, 1], got {fraction!r}"
    port = study.get("metrics_port")
    if port is not None and (
        not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535
    ):
        return f"metrics_port must be a TCP port between 1 and 65535 (or null), got {port!r}"
    if port is not None and not _free(port):
        return f"metrics_port={port}: 127.0.0.1:{port} is already in use; choose a free port"
    return None


def _free(port: int) -> bool:
    """Whether 127.0.0.1:``port`` can be listened on now (checked before the study starts)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the exporter does
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _missed(history: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """Hospitals whose last ``limit`` rounds they were asked to take part in all failed."""
    found = []
    sites = {site for entry in history for site in entry["participation"]}
    for site in sorted(sites):
        states = [
            (e["round"], e["participation"][site]) for e in history if site in e["participation"]
        ]
        tail = states[-limit:]
        if len(tail) == limit and all(state[0] in NOT_TRAINED for _, state in tail):
            found.append(
                {
                    "kind": "missed",
                    "site": site,
                    "round": tail[-1][0],
                    "message": f"{site} has not trained for {limit} consecutive rounds "
                    f"(rounds {tail[0][0]}-{tail[-1][0]}: last "
                    f"{tail[-1][1][0]}: {tail[-1][1][1]})",
                }
            )
    return found


def _budget(
    history: list[dict[str, Any]], budgets: dict[str, float | None], fraction: float
) -> list[dict[str, Any]]:
    found = []
    latest: dict[str, tuple[int, float]] = {}
    for entry in history:
        for site, epsilon in entry.get("epsilon", {}).items():
            latest[site] = (entry["round"], epsilon)
    for site, (round_, epsilon) in sorted(latest.items()):
        budget = budgets.get(site)
        if budget and epsilon >= fraction * budget:
            found.append(
                {
                    "kind": "budget",
                    "site": site,
                    "round": round_,
                    "message": f"{site} has spent epsilon {epsilon:.3g} of its budget "
                    f"{budget:.3g} ({100 * epsilon / budget:.0f}%)",
                }
            )
    return found


def _worse(
    history: list[dict[str, Any]], metric: str, higher_is_better: bool, limit: int
) -> list[dict[str, Any]]:
    values = [
        (e["round"], e["global"][metric])
        for e in history
        if e.get("global", {}).get(metric) is not None
    ]
    if len(values) <= limit:
        return []
    tail = values[-limit - 1 :]
    steps = [
        b - a if higher_is_better else a - b for (_, a), (_, b) in zip(tail, tail[1:], strict=False)
    ]
    if not all(step < 0 for step in steps):
        return []
    return [
        {
            "kind": "worse",
            "site": None,
            "round": tail[-1][0],
            "message": f"the global {metric} got worse {limit} rounds in a row "
            f"({tail[0][1]:.4g} after round {tail[0][0]} -> {tail[-1][1]:.4g} "
            f"after round {tail[-1][0]})",
        }
    ]


def compute_alerts(status: dict[str, Any], settings: dict[str, Any]) -> list[dict[str, Any]]:
    """Every alert that holds for the study ``status`` (a ``status.json`` document)."""
    history = status["history"]
    found = _missed(history, int(settings["missed_rounds"]))
    found += _budget(history, status.get("budget", {}), float(settings["budget_fraction"]))
    found += _worse(
        history,
        status["primary_metric"],
        bool(status["higher_is_better"]),
        int(settings["worse_rounds"]),
    )
    if status["status"] in ("stopped", "failed"):
        found.append(
            {
                "kind": "stopped",
                "site": None,
                "round": status["round"],
                "message": f"the study {status['status']} after round {status['round']} "
                f"of {status['rounds']}: {status.get('reason') or 'no reason'}",
            }
        )
    return found
