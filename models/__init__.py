"""medfed.models."""
