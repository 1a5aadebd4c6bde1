"""``medfed dashboard [--runs DIR] [--coordinator DIR] [--node DIR] [--port P] [--host H]``."""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path

DEFAULT_PORT = 8050


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medfed dashboard",
        description="A read-only web dashboard of studies (run "
        "directories) and of a hospital node (its ledgers, audit log and checks).",
    )
    parser.add_argument(
        "--runs",
        action="append",
        default=[],
        metavar="DIR",
        help="a folder of run directories (repeatable; default: ./outputs and "
        "./multirun when nothing else is given)",
    )
    parser.add_argument(
        "--coordinator",
        metavar="DIR",
        help="a coordinator folder: its run directories are listed too",
    )
    parser.add_argument(
        "--node",
        metavar="DIR",
        help="a hospital's folder (dataset card, policy, ledgers): the node view",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        metavar="P",
        help=f"port (default {DEFAULT_PORT}; 0: any free port)",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only)",
    )
    return parser


def _folders(args: argparse.Namespace) -> tuple[list[Path], Path | None]:
    """The run roots and the node folder; raise ``ValueError`` naming a missing folder."""
    named = [("--runs", d) for d in args.runs]
    if args.coordinator:
        named.append(("--coordinator", args.coordinator))
    for option, folder in named + ([("--node", args.node)] if args.node else []):
        if not Path(folder).expanduser().is_dir():
            raise ValueError(f"{option} {folder}: no such folder; give an existing directory")
    roots = [Path(d).expanduser().resolve() for _, d in named]
    if not named and not args.node:
        roots = [Path(d).resolve() for d in ("outputs", "multirun") if Path(d).is_dir()]
        if not roots:
            raise ValueError(
                "no ./outputs folder here; give --runs DIR (a folder of run "
                "directories) or --node DIR"
            )
    return roots, Path(args.node).expanduser().resolve() if args.node else None


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, opened here so a taken port is one clear line (not a traceback)."""
    if not 0 <= port <= 65535:
        raise ValueError(f"--port {port}: choose a port between 1 and 65535 (0: any free port)")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ValueError(
            f"--host {host} --port {port}: cannot listen there ({exc.strerror}); "
            "choose another port"
        ) from None
    return sock


def dashboard_main(argv: list[str]) -> int:
    """Serve the dashboard until Ctrl-C; 2 with one line for a bad option."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    try:
        roots, node = _folders(args)
        sock = _bind(args.host, args.port)
    except ValueError as exc:
        print(f"medfed: error: {exc}", file=sys.stderr)
        return 2
    import uvicorn

    from medfed.server.dashboard.web import create_app

    host, port = sock.getsockname()[:2]
    print(f"medfed dashboard: http://{host}:{port}/ (read-only; Ctrl-C stops it)", flush=True)
    config = uvicorn.Config(
        create_app(roots, node), log_level="warning", access_log=False, timeout_graceful_shutdown=2
    )  # open polling pages do not hold it
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    return 0
