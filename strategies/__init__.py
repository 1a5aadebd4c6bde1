"""medfed.strategies: aggregation (Flower strategies by name) and statistics aggregation."""
