"""medfed.server."""
