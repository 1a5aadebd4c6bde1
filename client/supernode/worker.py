"""A long-lived ClientApp process for a SuperNode started with ``--isolation process``.

Flower 1.41 runs every message in a new ``flwr-clientapp`` process: the SuperNode's SuperExec
polls its Runtime API once a second, starts ``flwr-clientapp --token T`` for the task, and that
process imports flwr, torch and medfed, unpacks the app bundle (FAB), handles one message and
exits. On these machines that costs ~2-4 s per message, more under load, on every hospital and
every round. ``flwr-clientapp`` cannot serve a second message (its token names one task).

This worker takes both roles for one SuperNode: it acquires the node's ClientApp tasks itself
(``AcquireTask``, as SuperExec does, polled every ``poll`` seconds) and runs each one in this
process with Flower's own task functions (``pull_task_input``, ``push_message``,
``push_task_output`` from ``flwr.supernode.runtime.run_clientapp``). Imports are paid once and
each app bundle is unpacked and loaded once (keyed by its hash). The SuperNode still owns the
node state (``context.state`` comes with every task and goes back with its output), so a restarted
worker loses nothing.

A long-lived process must outlive the runs it serves. Flower's task helpers assume a process
per task: when a run is stopped (``flwr stop``) or a task's token expires, its HTTP retry logic
and its task heartbeat send SIGINT to their own process, which is how a ``flwr-clientapp`` ends.
Here that would end the worker, and the node would stay "online" while no message of any later
run is ever answered. The worker therefore talks to the Runtime API with its own retry policy
(:func:`retry_invoker`: bounded, gives up on a refusal and never signals) and its own task
heartbeat (:class:`TaskHeartbeat`: marks the task cancelled). A cancelled task's reply is dropped;
a reply that cannot be delivered is logged; the worker goes on with the next task.

Trade-off: the ClientApps of successive tasks share one interpreter. A crash that kills the
process (not an exception: those become error replies, as in Flower) stops the worker, and
module-level state of an app survives between its messages. medfed's ClientApp keeps no state
outside ``context.state`` that a later message could misread.

Run it as ``python -m medfed.client.supernode.worker --runtime-api-address 127.0.0.1:9094
--insecure``;
:func:`medfed.infra.launch.clientapp_command` builds that command line, and the fast SuperNode
launcher (``python -m medfed.client.supernode.launcher``) starts and stops it with its SuperNode.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import socket
import threading
import time
from pathlib import Path
from typing import Any

from medfed.infra.launch import WORKER_POLL as DEFAULT_POLL
from medfed.infra.launch import WORKER_READY as READY

RETRY_SECONDS = 60.0
"""How long one Runtime API call is retried while the SuperNode does not answer."""
_ACQUIRE_TASK = "/flwr.proto.Runtime/AcquireTask"
LOG = logging.getLogger("medfed.worker")
_RETRY_STATUS = frozenset({502, 503, 504})
"""HTTP statuses of a SuperNode that is busy or restarting: worth another try."""


def retry_invoker(max_seconds: float | None = RETRY_SECONDS) -> Any:
    """Flower's retry loop for Runtime API calls, minus its process-per-task reflexes.

    Connection errors and 502/503/504 are retried with exponential backoff for at most
    ``max_seconds``; any other HTTP status (401: the task's token is gone, because its run was
    stopped or the token expired; 403; 404) gives up at once and raises to the caller. Flower's
    own invoker answers 401 with SIGINT to its process and 403 with ``RunNotRunningException``.
    """
    import httpx
    from flwr.supercore.retry import RetryInvoker, exponential

    def give_up(exc: Exception) -> bool:
        return (
            isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code not in _RETRY_STATUS
        )

    return RetryInvoker(
        lambda: exponential(max_delay=5),
        (httpx.TransportError, httpx.HTTPStatusError),
        max_tries=None,
        max_time=max_seconds,
        should_giveup=give_up,
    )


def _runtime_client(
    address: str,
    certificates: bytes | None,
    interceptors: list,
    max_seconds: float | None = RETRY_SECONDS,
) -> Any:
    from flwr.supercore.runtime import RuntimeHttpClient

    return RuntimeHttpClient.from_server_address(
        server_address=address,
        insecure=certificates is None,
        root_certificates=certificates,
        interceptors=interceptors,
        retry_invoker=retry_invoker(max_seconds),
    )


class TaskHeartbeat:
    """The heartbeat of one running task, for Flower's ``HeartbeatSender``.

    The SuperNode expires a task whose heartbeats stop. When it answers that the task is no
    longer running (its run was stopped) or refuses the token, :attr:`cancelled` is set: the
    task's reply is then dropped. Flower's own heartbeat function raises SIGINT instead.
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        self.cancelled = threading.Event()

    def __call__(self) -> bool:
        """One heartbeat: ``False`` asks the sender to retry soon (SuperNode unreachable)."""
        import httpx
        from flwr.proto.runtime_pb2 import SendTaskHeartbeatRequest

        if self.cancelled.is_set():
            return True
        try:
            success = self.client.SendTaskHeartbeat(SendTaskHeartbeatRequest()).success
        except httpx.TransportError:
            return False
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code in _RETRY_STATUS:
                return False
            success = False
        if not success:
            self.cancelled.set()
        return True


def _wait_listening(address: str, poll: float) -> None:
    """Return once ``address`` accepts TCP connections: the worker starts with its SuperNode,
    whose Runtime API may not listen yet (Flower's retries would back off for seconds)."""
    host, port = address.rsplit(":", 1)
    while True:
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=1.0).close()
            return
        except OSError:
            time.sleep(poll)


class Worker:
    """Acquires a SuperNode's ClientApp tasks and runs them in this process, one at a time.

    Parameters
    ----------
    runtime_api_address
        The SuperNode's Runtime API (``flower-supernode --port``), as ``host:port``.
    certificates
        PEM CA certificate(s) of a TLS Runtime API (``--ssl-certfile`` on the SuperNode);
        ``None`` speaks plain HTTP (``--insecure``).
    auth_secret
        The SuperNode's ``--superexec-auth-secret-file`` content, when it has one.
    poll
        Seconds between two task requests while there is nothing to do.
    """

    def __init__(
        self,
        runtime_api_address: str,
        certificates: bytes | None = None,
        auth_secret: bytes | None = None,
        poll: float = DEFAULT_POLL,
    ) -> None:
        from flwr.supercore.interceptors import (
            RuntimeVersionHttpInterceptor,
            SuperExecAuthHttpInterceptor,
        )

        if poll <= 0:
            raise ValueError(f"The worker's poll interval must be positive (got {poll} s).")
        self.address, self.certificates, self.poll = runtime_api_address, certificates, poll
        interceptors: list = [RuntimeVersionHttpInterceptor(component_name="SuperExec")]
        if auth_secret:
            interceptors.append(
                SuperExecAuthHttpInterceptor(
                    master_secret=auth_secret, protected_methods={_ACQUIRE_TASK}
                )
            )
        self._tasks = _runtime_client(runtime_api_address, certificates, interceptors)
        from flwr.supernode.runtime import run_clientapp

        from medfed.infra.flower_patches import quick_object_pulls

        if not quick_object_pulls(run_clientapp, "pull_and_inflate_object_from_tree"):
            LOG.warning(
                "this Flower's ClientApp runtime differs from flwr 1.41's: a message "
                "whose objects are late costs Flower's 1 s backoff"
            )
        self._apps: dict[str, Any] = {}
        self.served = 0

    def serve(self, max_tasks: int | None = None) -> None:
        """Run tasks as they come (forever, or until ``max_tasks`` have run)."""
        from flwr.proto.runtime_pb2 import AcquireTaskRequest
        from flwr.supercore.constant import TaskType

        request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP])
        _wait_listening(self.address, self.poll)
        LOG.info("%s %s", READY, self.address)
        pause = self.poll
        while max_tasks is None or self.served < max_tasks:
            try:
                response = self._tasks.AcquireTask(request)
            except Exception as exc:  # noqa: BLE001 - the SuperNode restarts or refuses: go on
                LOG.warning(
                    "cannot ask the SuperNode at %s for tasks (%s); trying again in %.0f s",
                    self.address,
                    _short(exc),
                    pause,
                )
                time.sleep(pause)
                pause = min(max(2 * pause, 1.0), 30.0)
                continue
            pause = self.poll
            if not (response.HasField("task") and response.token):
                time.sleep(self.poll)
                continue
            task = response.task
            started = time.perf_counter()
            LOG.info("task %d of run %d started", task.task_id, task.run_id)
            try:
                outcome = self.run_task(response.token)
            except Exception as exc:  # noqa: BLE001 - one task's trouble must not end the node
                LOG.error(
                    "task %d of run %d failed outside the ClientApp: %s",
                    task.task_id,
                    task.run_id,
                    _short(exc),
                )
                outcome = "failed"
            self.served += 1
            LOG.info(
                "task %d of run %d %s in %.3f s",
                task.task_id,
                task.run_id,
                outcome,
                time.perf_counter() - started,
            )

    def _client_app(self, run: Any, fab: Any) -> Any:
        """The run's ClientApp, unpacked and loaded once per app bundle."""
        if fab.hash_str not in self._apps:
            from flwr.cli.install import install_from_fab
            from flwr.clientapp.utils import get_load_client_app_fn

            install_from_fab(fab.content, skip_prompt=True)
            load = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)
            self._apps[fab.hash_str] = load(run.fab_id, run.fab_version, fab.hash_str)
        return self._apps[fab.hash_str]

    def run_task(self, token: str) -> str:
        """One message: pull it with its context, call the ClientApp, push reply and context.

        An exception in the ClientApp becomes an error reply, worded as Flower words it. Returns
        what became of the task: ``"done"``; ``"cancelled"`` (its run was stopped while it ran:
        the reply is dropped); ``"undelivered"`` (the SuperNode did not take the reply); or
        ``"not pulled"`` (the SuperNode no longer had its message, e.g. because its run was
        stopped while the message arrived).
        """
        from flwr.common.constant import SubStatus
        from flwr.supercore.heartbeat import HeartbeatSender
        from flwr.supercore.interceptors import (
            RuntimeTokenHttpInterceptor,
            RuntimeVersionHttpInterceptor,
        )
        from flwr.supernode.runtime.run_clientapp import (
            pull_task_input,
            push_message,
            push_task_output,
        )

        client = _runtime_client(
            self.address,
            self.certificates,
            [
                RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                RuntimeTokenHttpInterceptor(token),
            ],
        )
        beat = TaskHeartbeat(client)
        heartbeat = HeartbeatSender(beat)
        heartbeat.start()
        try:
            try:
                message, context, run, fab = pull_task_input(client)
            except Exception as exc:  # noqa: BLE001 - no message, nothing to answer: next task
                LOG.warning(
                    "could not pull this task's message (%s); its run was probably stopped",
                    _short(exc),
                )
                with contextlib.suppress(Exception):  # refused when the task is finished
                    push_task_output(
                        client,
                        None,
                        SubStatus.FAILED,
                        f"the message could not be pulled: {_short(exc)}",
                    )
                return "not pulled"
            reply, status, details = self._answer(message, context, run, fab)
            if beat.cancelled.is_set():
                return "cancelled"  # the token is gone: nowhere to push to
            try:
                push_message(client, reply, context)
                push_task_output(client, context, status, details)
            except Exception as exc:  # noqa: BLE001 - the run ended meanwhile, most likely
                LOG.warning(
                    "the SuperNode did not take this task's reply (%s); its run was "
                    "probably stopped",
                    _short(exc),
                )
                return "undelivered"
            return "done"
        finally:
            heartbeat.stop()
            client.close()

    def _answer(self, message: Any, context: Any, run: Any, fab: Any) -> tuple[Any, str, str]:
        """The ClientApp's reply to ``message`` and the task's status and details; an exception
        becomes an error reply and a failed status, as in Flower's ``flwr-clientapp``."""
        from flwr.app import Message
        from flwr.app.error import Error
        from flwr.clientapp.client_app import LoadClientAppError
        from flwr.common.constant import ErrorCode, SubStatus

        try:
            reply = self._client_app(run, fab)(message=message, context=context)
            return reply, SubStatus.COMPLETED, ""
        except Exception as exc:  # noqa: BLE001 - Flower's contract: an error reply, not a crash
            LOG.error("the ClientApp raised an exception", exc_info=exc)
            code = ErrorCode.CLIENT_APP_RAISED_EXCEPTION
            details = f"{type(exc)}:<'{exc}'>"
            if isinstance(exc, LoadClientAppError):
                code, details = (
                    ErrorCode.LOAD_CLIENT_APP_EXCEPTION,
                    "An exception was raised when attempting to load `ClientApp`",
                )
            return (
                Message(Error(code=code, reason=details), reply_to=message),
                SubStatus.FAILED,
                details,
            )


def _short(exc: BaseException) -> str:
    """An exception in one line: its type and the first line of its message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def main(argv: list[str] | None = None) -> None:
    """``python -m medfed.client.supernode.worker``: serve one SuperNode's ClientApp tasks until
    stopped."""
    parser = argparse.ArgumentParser(
        prog="python -m medfed.client.supernode.worker", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--runtime-api-address",
        required=True,
        help="the SuperNode's Runtime API, host:port (flower-supernode --port)",
    )
    tls = parser.add_mutually_exclusive_group(required=True)
    tls.add_argument("--insecure", action="store_true", help="plain HTTP to the Runtime API")
    tls.add_argument(
        "--root-certificates", type=Path, help="CA certificate of the SuperNode's TLS Runtime API"
    )
    parser.add_argument(
        "--superexec-auth-secret-file",
        type=Path,
        help="the same file as flower-supernode --superexec-auth-secret-file",
    )
    parser.add_argument(
        "--poll",
        type=float,
        default=DEFAULT_POLL,
        help=f"seconds between task requests when idle (default {DEFAULT_POLL})",
    )
    parser.add_argument(
        "--parent-pid", type=int, help="exit when this process (the SuperNode) exits"
    )
    parser.add_argument(
        "--preload",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE at start (e.g. medfed.client.app), so the first "
        "message does not pay for torch's import",
    )
    args = parser.parse_args(argv)
    try:
        certificates = args.root_certificates.read_bytes() if args.root_certificates else None
        secret = (
            args.superexec_auth_secret_file.read_bytes()
            if args.superexec_auth_secret_file
            else None
        )
    except OSError as exc:
        parser.exit(2, f"medfed worker: cannot read {exc.filename}: {exc.strerror}\n")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per HTTP request otherwise
    for module in args.preload:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            parser.exit(2, f"medfed worker: --preload {module}: {exc}\n")
    if args.parent_pid is not None:
        from flwr.supercore.app_utils import start_parent_process_monitor

        start_parent_process_monitor(args.parent_pid)
    try:
        Worker(args.runtime_api_address, certificates, secret, args.poll).serve()
    except ValueError as exc:
        parser.exit(2, f"medfed worker: {exc}\n")
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
