"""The node's half of client-level DP with ``clipping: client``: clip the update before it leaves.

With ``privacy=central`` and ``privacy.clipping=client`` the server's DP wrapper
(:mod:`medfed.strategies.central_dp`) sends ``clipping_norm`` in every train message and expects
each node to clip its own update (new weights minus received weights) to that L2 norm. This is
Flower's ``fixedclipping_mod``, attached to the train handler only (on ``ClientApp(mods=...)`` it
would wrap evaluate messages too and break them) and applied only when the node's study, received
in round 0, asks for it: a train message of such a study without ``clipping_norm`` gets an error
reply instead of an unclipped update.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp.mod import fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable

from medfed.client import node


def central_clipping_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """``fixedclipping_mod`` when the study runs central DP with client-side clipping."""
    study, _, _ = node.study_parts(*node.received_study(context))
    privacy = study["privacy"]
    if privacy["name"] == "central" and privacy.get("clipping") == "client":
        return fixedclipping_mod(msg, context, call_next)
    return call_next(msg, context)
