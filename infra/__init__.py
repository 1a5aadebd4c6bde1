"""Neutral infrastructure both sides use: processes, ports, keys, Flower patches, the CLI.

Holds: starting/stopping processes (processes), keys and secret files (keys), Flower process
command lines (launch), every patch of Flower internals (flower_patches), fast Grid polling
(polling), a loopback federation for tests and benchmarks (loopback), the `medfed` dispatcher (cli),
atomic writes and write errors in one sentence (files), the loopback-only SuperLink (superlink).
May import: flwr, the standard library, third-party packages; never another medfed package.
"""
