"""The dashboard's FastAPI app: read-only pages and JSON over run directories and a node folder.

Only GET routes exist. Every page carries a Content-Security-Policy that allows its own origin
only, so even a stray reference could not make the browser contact another host.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape

from medfed.server.dashboard.node import load_node
from medfed.server.dashboard.runs import find_runs, linked_file, load_run
from medfed.server.dashboard.views import study_view

HERE = Path(__file__).parent
CSP = "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:"
TEXT = {
    ".md": "text/plain; charset=utf-8",
    ".csv": "text/plain; charset=utf-8",
    ".yaml": "text/plain; charset=utf-8",
    ".json": "application/json",
}


def _sorted_runs(roots: list[Path]) -> list[dict[str, Any]]:
    runs = [load_run(path) for path in find_runs(roots).values()]
    return sorted(runs, key=lambda r: (r.get("updated") or "", r["path"]), reverse=True)


def create_app(roots: list[Path], node: Path | None = None) -> FastAPI:
    """The dashboard over the run directories under ``roots`` and the hospital folder ``node``."""
    app = FastAPI(title="medfed dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"])
    )

    def page(name: str, **values: Any) -> HTMLResponse:
        html = env.get_template(name).render(has_node=node is not None, roots=roots, **values)
        return HTMLResponse(html, headers={"Content-Security-Policy": CSP})

    def run_at(run_id: str) -> Path:
        path = find_runs(roots).get(run_id)
        if path is None:
            raise HTTPException(404, f"no run directory with id {run_id}")
        return path

    @app.get("/", response_class=HTMLResponse)
    def studies() -> HTMLResponse:
        return page("studies.html", runs=_sorted_runs(roots))

    @app.get("/live/studies", response_class=HTMLResponse)
    def studies_live() -> HTMLResponse:
        return page("studies_live.html", runs=_sorted_runs(roots))

    @app.get("/study/{run_id}", response_class=HTMLResponse)
    def study(run_id: str) -> HTMLResponse:
        run = load_run(run_at(run_id))
        return page("study.html", run=run, view=study_view(run))

    @app.get("/live/study/{run_id}", response_class=HTMLResponse)
    def study_live(run_id: str) -> HTMLResponse:
        run = load_run(run_at(run_id))
        return page("study_live.html", run=run, view=study_view(run))

    @app.get("/study/{run_id}/files/{name:path}")
    def study_file(run_id: str, name: str) -> FileResponse:
        path = linked_file(run_at(run_id), name)
        if path is None:
            raise HTTPException(404, f"{name} is not a file the dashboard shows")
        return FileResponse(
            path, media_type=TEXT.get(path.suffix), headers={"Content-Security-Policy": CSP}
        )

    @app.get("/api/studies")
    def api_studies() -> JSONResponse:
        return JSONResponse(_sorted_runs(roots))

    @app.get("/api/study/{run_id}")
    def api_study(run_id: str) -> JSONResponse:
        return JSONResponse(load_run(run_at(run_id)))

    @app.get("/node", response_class=HTMLResponse)
    def node_page(request: Request) -> HTMLResponse:
        if node is None:
            raise HTTPException(404, "start the dashboard with --node DIR for the node view")
        return page("node.html", node=load_node(node))

    return app
