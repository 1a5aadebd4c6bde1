"""The run directory: config, metrics, summary, model, plots, report, cross-site table."""
