"""Watching a study while it runs: status.json, alerts and Prometheus metrics.

Holds: status (status.json after every round, atomically), alerts (missed rounds, budget, a
metric getting worse, a stopped study), metrics (a Prometheus exporter on 127.0.0.1).
May import: models, infra; the study loop calls it, it never imports the study.
"""
