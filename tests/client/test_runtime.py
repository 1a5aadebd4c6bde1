"""The fast SuperNode's launcher: Flower's object pulls without the 1 s backoff, and a worker
that is started again when it dies."""

from __future__ import annotations

import sys
import time
from types import SimpleNamespace

import pytest
from flwr.supercore.inflatable.inflatable_utils import ObjectUnavailableError, pull_objects

from medfed.client.runtime import PULL_BACKOFF, Supervised, quick_object_pulls


def _late_object(delay: float):
    """A ``pull_object_fn`` whose object exists ``delay`` s after the first ask."""
    first: list[float] = []

    def pull(object_id: str) -> bytes:
        first.append(first[0] if first else time.monotonic())
        if time.monotonic() - first[0] < delay:
            raise ObjectUnavailableError(object_id)
        return b"content"

    return pull


@pytest.mark.parametrize("quick", [False, True])
def test_an_object_that_arrives_late_is_pulled_soon_after(quick):
    """Flower's backoff sleeps 0.8-1.2 s for an object that is there 0.05 s later; ours
    asks again within a few tens of milliseconds."""
    module = SimpleNamespace(pull_objects=pull_objects)
    assert quick_object_pulls(module) if quick else True
    started = time.monotonic()
    assert module.pull_objects(["a"], _late_object(0.05)) == {"a": b"content"}
    elapsed = time.monotonic() - started
    assert (elapsed < 0.5) if quick else (elapsed > 0.75)  # asks at 0, .02, .06, .14 s: .14


def test_quick_pulls_wrap_once_and_refuse_a_function_they_do_not_know():
    module = SimpleNamespace(pull_objects=pull_objects, other=lambda ids, fn: None)
    assert quick_object_pulls(module) and quick_object_pulls(module)
    assert module.pull_objects.func is pull_objects  # one partial, not a partial of a partial
    assert module.pull_objects.keywords == {"initial_backoff": PULL_BACKOFF,
                                            "backoff_cap": 2.0}
    assert not quick_object_pulls(module, "other") and not quick_object_pulls(module, "missing")


def test_the_flower_functions_the_fast_setup_shortens_exist_in_this_flower():
    from flwr.superlink.grid import http_grid
    from flwr.supernode import start_client_internal
    from flwr.supernode.runtime import run_clientapp

    modules = [SimpleNamespace(**vars(m)) for m in (http_grid, start_client_internal)]
    assert all(quick_object_pulls(m) for m in modules)
    copy = SimpleNamespace(**vars(run_clientapp))
    assert quick_object_pulls(copy, "pull_and_inflate_object_from_tree")


def _wait(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_worker_that_dies_is_started_again_until_closed():
    child = Supervised([sys.executable, "-c", "import sys; sys.exit(3)"], "worker", delay=0.05)
    try:
        _wait(lambda: child.restarts >= 2)
    finally:
        child.close()
    restarts = child.restarts
    time.sleep(0.5)
    assert child.restarts == restarts and child.process.poll() is not None


def test_closing_stops_a_running_worker_by_its_id():
    child = Supervised([sys.executable, "-c", "import time; time.sleep(60)"], "worker")
    first = child.process
    assert first.poll() is None
    child.close(grace=5.0)
    assert first.poll() is not None and child.restarts == 0
