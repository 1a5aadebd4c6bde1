"""Prometheus metrics of a running study (``metrics_port=P``, ``medfed run --metrics-port P``).

The exporter serves ``http://127.0.0.1:P/metrics`` from a registry of its own (not the process-wide
default, so two studies in one process never clash) and is updated once per round by
:class:`medfed.server.monitor.status.StatusTracker`. Only counts, durations and epsilon leave the
process:
never a value of a hospital's data.

=======================================  ==========================================================
``medfed_rounds_completed``              rounds finished so far (gauge: a resumed study starts
                                         at its checkpoint's round)
``medfed_round_duration_seconds``        wall time of each round (histogram)
``medfed_nodes_connected``               nodes the grid reports connected
``medfed_updates_total{site,outcome}``   accepted / rejected / refused / missed updates per site
``medfed_epsilon{site}``                 the site's DP epsilon after its last round
=======================================  ==========================================================
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

OUTCOMES = {"trained": "accepted", "rejected": "rejected", "refused": "refused", "missed": "missed"}


class MetricsError(RuntimeError):
    """The exporter cannot start (the port is taken); the message names ``metrics_port``."""


class StudyMetrics:
    """The study's Prometheus exporter on 127.0.0.1:``port``."""

    def __init__(self, port: int) -> None:
        self.registry = CollectorRegistry()
        self.rounds = Gauge(
            "medfed_rounds_completed", "Rounds finished so far", registry=self.registry
        )
        self.duration = Histogram(
            "medfed_round_duration_seconds",
            "Wall time of a round",
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
            registry=self.registry,
        )
        self.nodes = Gauge(
            "medfed_nodes_connected", "Nodes connected to the grid", registry=self.registry
        )
        self.updates = Counter(
            "medfed_updates",
            "Updates per site and outcome",
            ["site", "outcome"],
            registry=self.registry,
        )
        self.epsilon = Gauge(
            "medfed_epsilon",
            "A site's DP epsilon after its last round",
            ["site"],
            registry=self.registry,
        )
        self._seen: set[int] = set()
        try:
            self._server, _ = start_http_server(port, addr="127.0.0.1", registry=self.registry)
        except OSError as exc:
            raise MetricsError(
                f"metrics_port={port}: cannot listen on 127.0.0.1:{port} "
                f"({exc.strerror}); choose a free port"
            ) from None

    def observe(self, entry: dict[str, Any], nodes: int | None) -> None:
        """Count one round of the status history (each round once, however often it is seen)."""
        if nodes is not None:
            self.nodes.set(nodes)
        if entry["round"] in self._seen:
            return
        self._seen.add(entry["round"])
        self.rounds.set(entry["round"])
        self.duration.observe(entry["seconds"])
        for site, (state, _) in entry["participation"].items():
            self.updates.labels(site=site, outcome=OUTCOMES[state]).inc()
        for site, epsilon in entry.get("epsilon", {}).items():
            self.epsilon.labels(site=site).set(epsilon)

    def close(self) -> None:
        """Stop serving (the port is free again)."""
        self._server.shutdown()
        self._server.server_close()
