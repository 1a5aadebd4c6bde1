"""The run directory a study leaves: metrics CSV, summary, report, plots, progress bar.

Holds: rundir (writes every file), report (Markdown), plot (PNG with Pillow), progress (terminal).
May import: server.study, models; never app, simulation or deploy.
"""
