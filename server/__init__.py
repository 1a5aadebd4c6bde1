"""The coordinator: the study a ServerApp runs, its outputs, and how it runs.

Holds: the study loop and its configuration (study), the run directory (outputs), the ServerApp
(app), simulated federations (simulation), deployment at the coordinator (deploy), the
researcher commands (commands). May import: strategies, models, infra; never client.
"""
