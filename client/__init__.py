"""The hospital node: its ClientApp, its policy and privacy ledger, and its commands.

Holds: the ClientApp (app), the node logic it calls (node, privacy_round, policy, ledger, guard,
secagg, central_dp), the fast SuperNode launcher and worker (supernode), the node commands
(commands). May import: models, infra; never server or strategies.
"""
