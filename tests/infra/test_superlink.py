"""The SuperLink's loopback-only middleware (medfed.infra.superlink) on hand-made ASGI scopes,
and stopping the processes a child started (medfed.infra.processes.stop_pids)."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from medfed.infra.processes import alive, stop_pids
from medfed.infra.superlink import REFUSAL, LoopbackOnly, is_loopback


def _call(path: str, peer: str, listen: str | None = None) -> int:
    sent: list[dict] = []
    reached: list[str] = []

    async def app(scope, receive, send):
        reached.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})

    async def send(message):
        sent.append(message)

    middleware = LoopbackOnly(app)
    middleware.listen = listen
    asyncio.run(middleware({"type": "http", "path": path, "client": (peer, 5000)}, None, send))
    if reached:
        return 200
    assert REFUSAL.encode() in sent[1]["body"]
    return int(sent[0]["status"])


@pytest.mark.parametrize(
    ("path", "peer", "status"),
    [
        ("/v1/control/start-run", "192.0.2.7", 403),
        ("/v1/runtime/pull-messages", "10.0.0.3", 403),
        ("/docs", "192.0.2.7", 403),
        ("/v1/control/start-run", "127.0.0.1", 200),
        ("/v1/control/start-run", "::1", 200),
        ("/v1/control/start-run", "::ffff:127.0.0.1", 200),
        ("/v1/fleet/activate-node", "192.0.2.7", 200),
        ("/health", "192.0.2.7", 200),
    ],
)
def test_only_local_callers_reach_control_and_runtime(path: str, peer: str, status: int) -> None:
    assert _call(path, peer) == status


def test_a_specific_listen_address_is_the_coordinator_itself() -> None:
    assert _call("/v1/runtime/pull-messages", "192.0.2.2", listen="192.0.2.2") == 200
    assert _call("/v1/runtime/pull-messages", "192.0.2.9", listen="192.0.2.2") == 403


def test_is_loopback() -> None:
    assert is_loopback("127.0.0.5") and is_loopback("::1") and is_loopback("::ffff:127.0.0.1")
    assert not is_loopback("192.0.2.2") and not is_loopback("localhost") and not is_loopback(None)


def test_stop_pids_ends_what_is_running_and_skips_what_ended() -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()

    stopped = stop_pids([sleeper.pid, done.pid], grace=5)

    assert stopped == [sleeper.pid]
    sleeper.wait(timeout=5)
    assert not alive(sleeper.pid)
