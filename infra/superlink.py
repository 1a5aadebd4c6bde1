"""The coordinator's SuperLink with its Control and Runtime APIs answering loopback callers only.

Flower 1.41's SuperLink serves every API over one HTTP port (``--host``/``--port``;
``--fleet-api-address`` and ``--control-api-address`` are deprecated and ignored), so a
coordinator listening on a public interface for its hospitals would also let anyone holding
``ca.crt`` (every hospital) reach the Control API (submit, list, stop studies) and the Runtime
API (the ServerApp's own channel). ``python -m medfed.infra.superlink ARGS`` runs Flower's own
``flower-superlink`` main with one ASGI middleware added through Flower's extension hook
(``flwr.superlink.extensions.get_middleware``): a request under ``/v1/control``,
``/v1/runtime`` or the API docs from a non-loopback peer is answered ``403`` before Flower sees
it. The Fleet API (``/v1/fleet``, the hospitals) and health checks stay reachable. ``medfed
run`` and ``medfed status`` on the coordinator's machine (``127.0.0.1``) and the SuperExec the
SuperLink starts are local callers (see :class:`LoopbackOnly` for a specific listen address).

Written as a middleware rather than a second listener: Flower offers no per-API address, and
a TLS-terminating proxy in front of it would need its own certificate handling.
"""

from __future__ import annotations

import ipaddress
import json
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
ASGIApp = Callable[
    [Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]
]

LOCAL_ONLY = ("/v1/control", "/v1/runtime", "/docs", "/openapi.json")
"""Path prefixes only a caller on the coordinator's own machine may reach."""
REFUSAL = (
    "the SuperLink's Control and Runtime APIs answer the coordinator's own machine only; "
    "run medfed run / medfed status there (--superlink 127.0.0.1:PORT)"
)


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` (an IP address text) is a loopback address (IPv4, IPv6, mapped)."""
    try:
        address = ipaddress.ip_address(str(host))
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool(address.is_loopback or (mapped is not None and mapped.is_loopback))


class LoopbackOnly:
    """ASGI middleware: 403 for :data:`LOCAL_ONLY` paths from a non-loopback peer.

    ``listen`` (class-wide, set by :func:`main` from ``--host``) is the SuperLink's listen
    address when it is one specific non-loopback address: Flower's SuperExec then dials that
    address, so calls from it are the coordinator's own. With the default ``0.0.0.0`` the
    SuperExec dials 127.0.0.1 and only loopback callers pass, whatever address they dialled.
    """

    listen: str | None = None

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope.get("type") == "http" and str(scope.get("path", "")).startswith(LOCAL_ONLY):
            peer = (scope.get("client") or (None, None))[0]
            if not is_loopback(peer) and (self.listen is None or peer != self.listen):
                body = json.dumps({"detail": REFUSAL}).encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": 403,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


NOT_REGISTERED = "The provided public key is not valid."
"""What a SuperNode whose key was never registered is told (Flower's public message of
``PUBLIC_KEY_NOT_VALID``); ``medfed node start`` recognises it
(:mod:`medfed.client.commands.deploy`)."""


def _activation_names_unregistered_keys() -> None:
    """A never-registered key gets :data:`NOT_REGISTERED`, not Flower's "Failed to activate
    SuperNode.", which it also answers while it still holds a crashed node's key online; a node
    could not tell the two apart and kept retrying for the hold's 40 s."""
    from flwr.supercore.error import ApiErrorCode, FlowerError
    from flwr.superlink.servicer.fleet import fleet_handlers

    original = fleet_handlers.activate_node

    def activate_node(request: Any, state: Any) -> Any:
        if state.get_node_id_by_public_key(request.public_key) is None:
            raise FlowerError(
                ApiErrorCode.PUBLIC_KEY_NOT_VALID, "activation with a key that was never registered"
            )
        return original(request=request, state=state)

    fleet_handlers.activate_node = activate_node


def install() -> None:
    """Add :class:`LoopbackOnly` in front of Flower's own middleware (outermost), and name
    unregistered keys on activation."""
    from flwr.superlink import extensions
    from starlette.middleware import Middleware

    original = extensions.get_middleware

    def get_middleware() -> tuple[Middleware, ...]:
        return (Middleware(LoopbackOnly), *original())

    extensions.get_middleware = get_middleware
    _activation_names_unregistered_keys()


def main() -> None:
    """``python -m medfed.infra.superlink [flower-superlink options]``."""
    from flwr.superlink.cli.flower_superlink import flower_superlink

    install()
    args = sys.argv[1:]
    host = args[args.index("--host") + 1] if "--host" in args[:-1] else "127.0.0.1"
    if host not in ("0.0.0.0", "::", "[::]") and not is_loopback(host.strip("[]")):
        LoopbackOnly.listen = host.strip("[]")
    sys.argv[0] = "flower-superlink"
    flower_superlink()


if __name__ == "__main__":
    main()
