"""The loopback federation of the deployment tests and the latency benchmark leaves nothing
running, also when SIGTERM ends the program that started it."""

from __future__ import annotations

import os
import signal

import pytest

from medfed.infra.loopback import LoopbackFederation
from medfed.infra.processes import alive, descendants

pytestmark = [pytest.mark.slow, pytest.mark.serial]


def test_sigterm_inside_the_federation_stops_every_process_it_started(tmp_path):
    previous = signal.getsignal(signal.SIGTERM)
    started: list[int] = []
    with pytest.raises(SystemExit) as stopped:
        with LoopbackFederation(tmp_path, hospitals=1) as fed:
            for process in fed.processes.values():
                started += [process.pid, *descendants(process.pid)]
            assert len(started) >= 4  # coordinator, SuperLink, node launcher, worker...
            os.kill(os.getpid(), signal.SIGTERM)
    assert stopped.value.code == 128 + signal.SIGTERM
    assert not [pid for pid in started if alive(pid)]
    assert signal.getsignal(signal.SIGTERM) is previous
