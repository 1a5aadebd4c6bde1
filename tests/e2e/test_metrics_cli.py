"""Prometheus metrics and alerts of a real ``medfed simulate`` run, scraped while it runs."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

MEDFED = Path(sys.executable).with_name("medfed")
ROUNDS = 9  # hospital-1 runs out at round 4 (budget 5); the others stay under 10 until round 10


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _value(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


@pytest.mark.slow
def test_metrics_are_served_while_the_study_runs_and_alerts_reach_the_log(tmp_path):
    port = _free_port()
    study = subprocess.Popen(
        [
            str(MEDFED),
            "simulate",
            f"rounds={ROUNDS}",
            "privacy=dpsgd",
            f"metrics_port={port}",
            "federation.hospitals=3",
            "federation.min_size=60",
            "federation.max_size=120",
            "quiet=true",
            "policy.hospitals={hospital-1: {max_epsilon_total: 5.0}}",
            f"output_dir={tmp_path / 'run'}",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    scraped = ""
    try:
        while study.poll() is None:
            try:
                text = (
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
                    .read()
                    .decode()
                )
            except OSError:
                time.sleep(0.05)
                continue
            if _value(text, "medfed_rounds_completed") >= 6:
                scraped = text
                break
        assert scraped, "the exporter never showed six rounds while the study ran"
        _, stderr = study.communicate(timeout=300)
    finally:
        if study.poll() is None:
            os.killpg(study.pid, signal.SIGKILL)
            study.wait(timeout=10)
    assert study.returncode == 0, stderr
    assert _value(scraped, "medfed_nodes_connected") == 3
    assert _value(scraped, 'medfed_updates_total{outcome="refused",site="hospital-1"}') >= 2
    assert _value(scraped, 'medfed_updates_total{outcome="accepted",site="hospital-0"}') >= 6
    assert _value(scraped, 'medfed_epsilon{site="hospital-0"}') > 0
    assert "medfed_round_duration_seconds_bucket" in scraped
    alerts = [line for line in stderr.splitlines() if "medfed alert:" in line]
    assert any("hospital-1 has spent epsilon" in line for line in alerts), stderr
    assert any("hospital-1 has not trained for 3 consecutive rounds" in line for line in alerts), (
        stderr
    )
    assert len(alerts) == len(set(alerts))  # each alert is logged once, not every round


@pytest.mark.slow
def test_medfed_run_checks_the_metrics_port_before_contacting_anyone(tmp_path):
    done = subprocess.run(
        [
            str(MEDFED),
            "run",
            "--superlink",
            "127.0.0.1:9",
            "--ca",
            str(tmp_path / "ca.crt"),
            "--metrics-port",
            "70000",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 2
    assert done.stderr == (
        "medfed: error: metrics_port must be a TCP port between 1 and 65535 (or null), got 70000\n"
    )
