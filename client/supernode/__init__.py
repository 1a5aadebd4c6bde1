"""The fast SuperNode: Flower's own node with short polls and one long-lived ClientApp worker.

Holds: launcher (`python -m medfed.client.supernode.launcher`), worker (the ClientApp process).
May import: infra (patches and command lines); loads the ClientApp by name, never server.
"""
