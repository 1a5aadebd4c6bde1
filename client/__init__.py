"""medfed.client."""
