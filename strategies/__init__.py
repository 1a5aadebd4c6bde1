"""medfed.strategies."""
