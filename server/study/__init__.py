"""The study a ServerApp runs on any Grid: configuration, round loop, cohort, checkpoints.

Holds: config (compose + validate), loop (the rounds), cohort (who takes part), checkpoint,
adversary (simulated attacks), baselines (pooled / local-only, equal work), runstate (how a
run directory's study ended; refusing to overwrite one), sites (dataset cards read before round 1).
May import: strategies, models, infra; never outputs, app, simulation, deploy or client.
"""
