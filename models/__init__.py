"""Plain PyTorch: task schemas, models, training, DP-SGD, metrics; the data pipeline in ingest.

Holds the core (schema, nets, training, dp_clip, privacy, metrics, encoding, pipeline, flat,
membership), the checks shared by coordinator and node (settings, policy_spec, searchpath) and,
in ingest, everything from a hospital export file to validated frames.
May import: torch, numpy, pandas, opacus, infra; never flwr nor any other medfed package.
"""
