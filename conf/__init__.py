"""Hydra configuration groups shipped with medfed (task schemas, strategies, engines...)."""
