"""Aggregation: Flower strategies by name, and the steps around them at the coordinator.

Holds: the strategy registry (registry), statistics aggregation (statistics), update screening
(screening), the cohort gate (cohort_gate), client-level DP wrappers (central_dp), SecAgg+ rounds
(secagg).
May import: models, infra, flwr; never server or client.
"""
