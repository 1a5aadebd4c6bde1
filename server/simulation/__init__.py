"""Simulated federations on one machine: the in-process engine and Flower's Ray runtime.

Holds: engine (an in-process Grid), run (the composition root: ServerApp + ClientApp, the
latter loaded by its Flower component reference). May import: server.app, outputs, study.
"""
