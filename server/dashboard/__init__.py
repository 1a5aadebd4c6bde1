"""``medfed dashboard``: a read-only web view of studies and of a hospital node.

FastAPI + uvicorn serve server-rendered HTML (Jinja2 templates, inline SVG charts) and one small
vanilla script that polls the study page while the study runs. Every asset ships in this package:
the pages load nothing from the internet. The dashboard only reads the files the CLI writes:

* a run directory (``status.json`` while a study runs, then ``summary.json``, ``metrics.csv``,
  ``report.md``, a model card and ``cross_site.csv`` when present): :mod:`.runs`;
* a hospital's folder (privacy ledgers, policy, audit log, approvals, the last ``node check``
  summary): :mod:`.node`, which parses the documented ledger format itself (``server`` may not
  import ``medfed.client``).

Modules: :mod:`.runs` and :mod:`.node` read files into plain dicts, :mod:`.svg` draws charts,
:mod:`.web` builds the FastAPI app, :mod:`.cli` is ``medfed dashboard``.
"""
