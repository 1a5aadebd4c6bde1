"""The hospital's commands: `node check`, `node ledger`, `privacy plan`, `node keys|start`.

Holds: check (node check), privacy (node ledger, privacy plan), deploy (node keys, node start).
May import: the node logic of medfed.client, models, infra; never server.
"""
