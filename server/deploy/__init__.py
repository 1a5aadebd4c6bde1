"""Deployment at the coordinator: TLS material, the SuperLink, `medfed run` and `status`.

Holds: certs (CA and server certificate), connection (the flwr CLI connection and
coordinator.yaml), coordinator (init/add-node/start), flwr_cli (run/status).
May import: server.study, server.outputs, infra; never client.
"""
