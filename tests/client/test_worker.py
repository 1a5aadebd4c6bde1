"""The long-lived ClientApp worker outlives the runs it serves.

Flower's task helpers end their process (SIGINT) when a task's token is refused or its run
stops; the worker must instead drop that task and go on (a dead worker leaves its node "online"
and silent). These tests drive the worker's own pieces with stand-ins for the SuperNode's
Runtime API; the deployment end-to-end test stops a real run in the middle of a round. The
launcher's restart of a dead worker is tested in ``test_runtime.py``.
"""

from __future__ import annotations

import logging
import signal
import time
from types import SimpleNamespace

import httpx
import pytest

from medfed.client.supernode import worker as worker_module
from medfed.client.supernode.worker import TaskHeartbeat, Worker, retry_invoker


def _status_error(code: int) -> httpx.HTTPStatusError:
    request = httpx.Request("POST", "http://127.0.0.1:9094/flwr.proto.Runtime/PushMessages")
    return httpx.HTTPStatusError(
        f"status {code}", request=request, response=httpx.Response(code, request=request)
    )


@pytest.fixture
def no_sigint(monkeypatch):
    """Record SIGINTs sent to this process instead of raising KeyboardInterrupt."""
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    yield received
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("code", [401, 403, 404, 500])
def test_a_refused_call_gives_up_at_once_and_never_signals(code, no_sigint):
    calls = []

    def refused():
        calls.append(1)
        raise _status_error(code)

    invoker = retry_invoker(30)
    started = time.monotonic()
    with pytest.raises(httpx.HTTPStatusError):
        invoker.invoke(refused)
    assert len(calls) == 1 and time.monotonic() - started < 1.0
    assert no_sigint == []


def test_a_busy_supernode_is_asked_again():
    answers = iter([_status_error(503), httpx.ConnectError("refused"), "reply"])

    def flaky():
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert retry_invoker(30).invoke(flaky) == "reply"


def test_retries_stop_after_max_seconds():
    def down():
        raise httpx.ConnectError("refused")

    started = time.monotonic()
    with pytest.raises(httpx.ConnectError):
        retry_invoker(0.5).invoke(down)
    assert time.monotonic() - started < 6.0  # one backoff step at most past the limit


class _HeartbeatClient:
    def __init__(self, *answers):
        self.answers = list(answers)

    def SendTaskHeartbeat(self, request):  # noqa: N802 - Flower's method name
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return SimpleNamespace(success=answer)


def test_a_stopped_task_is_marked_cancelled_not_signalled(no_sigint):
    beat = TaskHeartbeat(_HeartbeatClient(True, False))
    assert beat() is True and not beat.cancelled.is_set()
    assert beat() is True and beat.cancelled.is_set()  # the SuperNode: no longer running
    assert beat() is True  # not asked again once cancelled
    assert no_sigint == []


def test_heartbeat_retries_an_unreachable_supernode_and_cancels_on_a_refused_token():
    beat = TaskHeartbeat(
        _HeartbeatClient(httpx.ConnectError("down"), _status_error(503), _status_error(401))
    )
    assert beat() is False and beat() is False and not beat.cancelled.is_set()
    assert beat() is True and beat.cancelled.is_set()


class _Tasks:
    """``AcquireTask`` answers: an exception, ``None`` (nothing to do) or a task id."""

    def __init__(self, *answers):
        self.answers = list(answers)

    def AcquireTask(self, request):  # noqa: N802 - Flower's method name
        answer = self.answers.pop(0) if self.answers else None
        if isinstance(answer, Exception):
            raise answer
        if answer is None:
            return SimpleNamespace(HasField=lambda name: False, token="")
        return SimpleNamespace(
            HasField=lambda name: True,
            token=f"token-{answer}",
            task=SimpleNamespace(task_id=answer, run_id=7),
        )


def test_the_worker_goes_on_after_a_task_or_a_supernode_call_fails(monkeypatch, caplog):
    worker = Worker("127.0.0.1:9", poll=0.01)
    worker._tasks = _Tasks(httpx.ConnectError("restarting"), 1, None, 2, 3)
    monkeypatch.setattr(worker_module, "_wait_listening", lambda address, poll: None)
    monkeypatch.setattr(worker_module.time, "sleep", lambda seconds: None)
    outcomes = iter([RuntimeError("object store full"), "cancelled", "done"])

    def run_task(token):
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    monkeypatch.setattr(worker, "run_task", run_task)
    with caplog.at_level(logging.INFO, logger="medfed.worker"):
        worker.serve(max_tasks=3)
    assert worker.served == 3
    log = caplog.text
    assert "cannot ask the SuperNode at 127.0.0.1:9 for tasks (ConnectError: restarting)" in log
    assert "task 1 of run 7 failed outside the ClientApp: RuntimeError: object store full" in log
    assert "task 2 of run 7 cancelled in" in log and "task 3 of run 7 done in" in log


@pytest.fixture
def runtime(monkeypatch):
    """Flower's task functions replaced by recorders; the ClientApp answers ``"reply"``."""
    from flwr.supercore import heartbeat
    from flwr.supernode.runtime import run_clientapp

    calls: dict[str, list] = {"push_message": [], "push_task_output": []}
    state = SimpleNamespace(cancel=False, push_error=None, app_error=None)

    class Sender:
        def __init__(self, beat):
            self.beat = beat

        def start(self):
            if state.cancel:
                self.beat.cancelled.set()

        def stop(self):
            pass

    def push_message(client, reply, context):
        if state.push_error:
            raise state.push_error
        calls["push_message"].append(reply)

    def app(message, context):
        if state.app_error:
            raise state.app_error
        return "reply"

    monkeypatch.setattr(heartbeat, "HeartbeatSender", Sender)
    monkeypatch.setattr(
        run_clientapp, "pull_task_input", lambda client: ("message", "context", "run", "fab")
    )
    monkeypatch.setattr(run_clientapp, "push_message", push_message)
    monkeypatch.setattr(
        run_clientapp,
        "push_task_output",
        lambda client, context, status, details: calls["push_task_output"].append(
            (status, details)
        ),
    )
    worker = Worker("127.0.0.1:9")
    monkeypatch.setattr(worker, "_client_app", lambda run, fab: app)
    return worker, state, calls


def test_a_task_s_reply_and_context_go_back(runtime):
    worker, _, calls = runtime
    assert worker.run_task("token") == "done"
    assert calls == {"push_message": ["reply"], "push_task_output": [("completed", "")]}


def test_a_cancelled_task_s_reply_is_dropped(runtime):
    worker, state, calls = runtime
    state.cancel = True
    assert worker.run_task("token") == "cancelled"
    assert calls == {"push_message": [], "push_task_output": []}


def test_a_reply_the_supernode_refuses_is_logged_not_raised(runtime, caplog, no_sigint):
    worker, state, calls = runtime
    state.push_error = _status_error(401)
    with caplog.at_level(logging.WARNING, logger="medfed.worker"):
        assert worker.run_task("token") == "undelivered"
    assert "did not take this task's reply (HTTPStatusError: status 401)" in caplog.text
    assert no_sigint == []


def test_an_exception_in_the_client_app_is_an_error_reply(runtime, monkeypatch, task_identity):
    from flwr.supernode.runtime import run_clientapp

    worker, state, calls = runtime
    state.app_error = ZeroDivisionError("division by zero")
    monkeypatch.setattr(
        run_clientapp, "pull_task_input", lambda client: (_message(), "context", "run", "fab")
    )
    assert worker.run_task("token") == "done"
    [reply] = calls["push_message"]
    assert reply.has_error() and "division by zero" in reply.error.reason
    assert calls["push_task_output"] == [
        ("failed", "<class 'ZeroDivisionError'>:<'division by zero'>")
    ]


def _message():
    from flwr.app import Message, RecordDict

    message = Message(RecordDict(), dst_node_id=5, message_type="train")
    message.metadata.__dict__["_message_id"] = "m" * 64
    return message


def test_a_task_whose_message_cannot_be_pulled_ends_without_a_reply(
    runtime, monkeypatch, caplog, no_sigint
):
    """The SuperNode dropped the message (its run was stopped while it arrived) and revoked the
    task's token: the pull is refused, the worker says so in one line and is free again."""
    from flwr.supernode.runtime import run_clientapp

    worker, _, calls = runtime

    def refused(client):
        raise _status_error(401)

    monkeypatch.setattr(run_clientapp, "pull_task_input", refused)
    with caplog.at_level(logging.WARNING, logger="medfed.worker"):
        assert worker.run_task("token") == "not pulled"
    assert "could not pull this task's message (HTTPStatusError: status 401)" in caplog.text
    assert "Traceback" not in caplog.text and no_sigint == []
    assert calls["push_message"] == []
    assert calls["push_task_output"] == [
        ("failed", "the message could not be pulled: HTTPStatusError: status 401")
    ]
