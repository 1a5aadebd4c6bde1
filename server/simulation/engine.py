"""The in-process engine: a Flower ``Grid`` that runs every hospital's ClientApp in this process.

Flower's simulation runtime starts Ray, a SuperLink state and worker actors: several seconds of
start-up and ~5x the wall time of the same SGD steps in plain PyTorch for a small cross-silo study.
A study with 2-50 hospitals does not need any of that. :class:`InProcessGrid` implements Flower's
``Grid`` interface directly: each pushed ``Message`` is serialised as Flower serialises it for the
wire (its object tree, deflated), inflated again on the "node" side and handed to the very same
``ClientApp`` with that hospital's own ``Context``; the reply travels back the same way. The
ServerApp, the strategies and the ClientApp are unchanged, and the byte counts are real.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.app.user_config import UserConfigValue
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.inflatable.inflatable_object import (
    get_all_nested_objects,
    no_object_id_recompute,
)
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

FIRST_NODE_ID = 1001


@dataclass
class WireCounter:
    """Bytes of serialised Messages, as they would cross the network, per direction."""

    sent: int = 0
    received: int = 0

    @property
    def total(self) -> int:
        return self.sent + self.received


def transmit(message: Message) -> tuple[Message, int]:
    """Serialise ``message`` to its wire objects and rebuild it from them, like a real transport.

    Returns the rebuilt message (sharing no objects with the original) and its size in bytes.
    Object ids are computed once per object, as Flower's own transports do
    (``no_object_id_recompute``): the message does not change while it is being sent.
    """
    with no_object_id_recompute():
        contents = {oid: obj.deflate() for oid, obj in get_all_nested_objects(message).items()}
        size = sum(len(c) for c in contents.values())  # before inflating, which consumes them
        message_id = message.metadata.message_id
        rebuilt = inflate_object_from_contents(message.object_id, contents)
    assert isinstance(rebuilt, Message)
    rebuilt.metadata.__dict__["_message_id"] = message_id
    return rebuilt, size


def _use_identity(run_id: int, node_id: int) -> None:
    """Set the process-wide task identity Flower reads when a Message is built."""
    TaskIdentity.run_id = run_id
    TaskIdentity.node_id = node_id
    TaskIdentity.task_id = node_id


class InProcessGrid(Grid):
    """A Grid whose nodes are ClientApp calls in this process (see the module docstring).

    Parameters
    ----------
    client_app
        The ClientApp every hospital runs.
    node_configs
        One ``node_config`` per hospital (in simulation ``partition-id`` / ``num-partitions``).
    run_config
        The run config every Context carries.
    run_id
        Identifier of the run.
    """

    def __init__(
        self,
        client_app: ClientApp,
        node_configs: Sequence[Mapping[str, UserConfigValue]],
        run_config: Mapping[str, UserConfigValue],
        run_id: int = 1,
    ) -> None:
        self._app = client_app
        self._run = Run.create_empty(run_id)
        self._contexts = {
            FIRST_NODE_ID + i: Context(
                run_id=run_id,
                node_id=FIRST_NODE_ID + i,
                node_config=dict(cfg),
                state=RecordDict(),
                run_config=dict(run_config),
            )
            for i, cfg in enumerate(node_configs)
        }
        self._offline: set[int] = set()
        self._replies: dict[str, Message] = {}
        self.wire = WireCounter()
        _use_identity(run_id, SUPERLINK_NODE_ID)

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return [nid for nid in self._contexts if nid not in self._offline]

    def set_online(self, node_id: int, online: bool) -> None:
        """Take a hospital off the grid or bring it back (for dropout studies and tests)."""
        (self._offline.discard if online else self._offline.add)(node_id)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = str(uuid4())
            ids.append(message.metadata.message_id)
            if message.metadata.dst_node_id in self._offline:
                continue
            self._replies[message.metadata.message_id] = self._deliver(message)
        return ids

    def _deliver(self, message: Message) -> Message:
        """Carry ``message`` to its node, run the ClientApp and carry the reply back."""
        inbound, n_bytes = transmit(message)
        self.wire.sent += n_bytes
        node_id = inbound.metadata.dst_node_id
        context = self._contexts[node_id]
        _use_identity(self._run.run_id, node_id)
        try:
            reply = self._app(inbound, context)
        except Exception as exc:  # a ClientApp exception becomes an error reply, as in Flower
            reason = f"{type(exc).__name__}: {exc}"
            reply = Message(
                Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=inbound
            )
        finally:
            _use_identity(self._run.run_id, SUPERLINK_NODE_ID)
        reply.metadata.__dict__["_message_id"] = str(uuid4())
        outbound, n_bytes = transmit(reply)
        self.wire.received += n_bytes
        return outbound

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(mid) for mid in list(message_ids) if mid in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Deliver every message and return the replies (nodes answer synchronously here)."""
        del timeout
        return list(self.pull_messages(list(self.push_messages(messages))))
