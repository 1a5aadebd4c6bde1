"""Page load time of ``medfed dashboard`` for a study of 100 rounds x 20 hospitals (target < 1 s).

A synthetic run directory (:mod:`medfed.server.dashboard.synthetic`: ``status.json`` with 100
rounds of 20 hospitals, a benefit table and a cross-site matrix) is served by a real
``medfed dashboard`` process; Debian's Chromium, driven by Playwright, loads the studies list and
the study page ``--repeats`` times each, the two pages interleaved, after one warm-up load.
The load time is the browser's own navigation timing (``loadEventEnd``, from the start of the
navigation: server rendering, transfer, parsing, layout of the inline SVG and the 2000-cell
participation grid). Prints one JSON object; ``ratio_to_target`` is median / 1 s.

    python benchmarks/dashboard_load.py [--rounds 100] [--hospitals 20] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from _common import log, medfed_command

from medfed.server.dashboard.synthetic import write_synthetic_run

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_up(url: str, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"medfed dashboard exited with status {process.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")


def load_ms(page, url: str) -> float:
    page.goto(url, wait_until="load")
    return float(
        page.evaluate(
            "() => { const t = performance.getEntriesByType('navigation')[0];"
            " return t.loadEventEnd - t.startTime; }"
        )
    )


def measure(args: argparse.Namespace, root: Path) -> dict[str, object]:
    from playwright.sync_api import sync_playwright

    run = write_synthetic_run(root / "runs" / "synthetic", args.rounds, args.hospitals)
    port = free_port()
    server = subprocess.Popen(
        [*medfed_command(), "dashboard", "--runs", str(run.parent), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_up(base + "/", server)
        run_id = json.loads(urllib.request.urlopen(base + "/api/studies").read())[0]["id"]
        pages = {"studies": base + "/", "study": f"{base}/study/{run_id}"}
        times: dict[str, list[float]] = {name: [] for name in pages}
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page()
            for url in pages.values():
                load_ms(page, url)  # warm-up: first template compile, browser caches
            for repeat in range(args.repeats):
                for name, url in pages.items():
                    times[name].append(load_ms(page, url))
                log(
                    f"repeat {repeat + 1}: "
                    + ", ".join(f"{n} {t[-1]:.0f} ms" for n, t in times.items())
                )
            cells = page.locator("#participation td:not(.head)").count()
            browser.close()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=10)
    study_ms = statistics.median(times["study"])
    return {
        "benchmark": "dashboard_load",
        "rounds": args.rounds,
        "hospitals": args.hospitals,
        "repeats": args.repeats,
        "participation_cells": cells,
        "median_ms": {name: round(statistics.median(t), 1) for name, t in times.items()},
        "all_ms": {name: [round(x, 1) for x in t] for name, t in times.items()},
        "ratio_to_target": round(study_ms / 1000.0, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--hospitals", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if not Path(CHROMIUM).exists():
        print(f"{CHROMIUM} is missing: apt-get install -y chromium", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="medfed-dashboard-") as tmp:
        print(json.dumps(measure(args, Path(tmp)), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
