"""Checkpoints: a study survives the coordinator's crash and continues where it stopped.

After every ``checkpoint.every`` rounds the server writes ``<output_dir>/checkpoint.pt`` with
everything the next round depends on: the global weights, the round reached, the per-round
records so far, the global preprocessing statistics, the strategy's own state (FedAdam/FedYogi/
FedAdagrad moments, FedAvgM momentum, the central-DP accountant), the random-number states and
the resolved study. ``resume=RUN_DIR`` (``medfed simulate`` or ``medfed run --resume``) continues
from it and reaches the same final weights as an uninterrupted run.

On disk::

    b"MEDFED-CKPT1" | mode (b"P" plain, b"F" Fernet-encrypted) | SHA-256 of the payload | body

The payload is a ``torch.save`` of tensors, lists and strings only, loaded with
``weights_only=True`` (no pickled code runs on load). With ``checkpoint.key_file`` the body is a
Fernet token (AES-128-CBC + HMAC-SHA256) of the payload. The file is written to a temporary name,
flushed to disk and renamed, so a crash never leaves half a checkpoint; a checkpoint that fails
its checks is reported in one sentence and never overwritten.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

MAGIC = b"MEDFED-CKPT1"
FILENAME = "checkpoint.pt"
_STRATEGY_STATE = ("m_t", "v_t", "momentum_vector")  # Flower's cross-round strategy attributes


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or read; the message names the file and what to do."""


def read_key(key_file: str | os.PathLike | None) -> bytes | None:
    """The Fernet key in ``key_file`` (``None`` when no key is configured)."""
    if not key_file:
        return None
    path = Path(key_file)
    try:
        key = path.read_bytes().strip()
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint.key_file {path}: {exc.strerror}") from None
    from cryptography.fernet import Fernet

    try:
        Fernet(key)
    except ValueError:
        raise CheckpointError(
            f"checkpoint.key_file {path} does not hold a Fernet key (create "
            "one with `medfed checkpoint-key FILE`)"
        ) from None
    return key


def new_key(path: str | os.PathLike) -> Path:
    """Write a new Fernet key to ``path`` (readable by its owner only) and return the path."""
    from cryptography.fernet import Fernet

    target = Path(path)
    if target.exists():
        raise CheckpointError(
            f"{target} exists; a key is never overwritten (its checkpoints would become unreadable)"
        )
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(Fernet.generate_key() + b"\n")
    return target


def _tensors(value: Any) -> Any:
    """numpy arrays (also inside dicts and lists) as tensors, the only arrays torch loads safely."""
    if isinstance(value, np.ndarray):  # a copy: the strategy keeps updating its own arrays
        return torch.from_numpy(np.array(value, copy=True, order="C"))
    if isinstance(value, Mapping):
        return {k: _tensors(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_tensors(v) for v in value]
    return value


def _arrays(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.numpy()
    if isinstance(value, Mapping):
        return {k: _arrays(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_arrays(v) for v in value]
    return value


def _strategies(strategy: Any) -> list[Any]:
    """The strategy and the ones it wraps (the DP wrappers keep theirs in ``.strategy``)."""
    chain = [strategy]
    while hasattr(chain[-1], "strategy"):
        chain.append(chain[-1].strategy)
    return chain


def strategy_state(strategy: Any) -> list[dict[str, Any]]:
    """The cross-round state of ``strategy`` and of every strategy it wraps."""
    states = []
    for item in _strategies(strategy):
        state = {
            name: _tensors(getattr(item, name))
            for name in _STRATEGY_STATE
            if getattr(item, name, None) is not None
        }
        if hasattr(item, "state_dict"):
            state["__own__"] = json.dumps(item.state_dict())
        states.append(state)
    return states


def load_strategy_state(strategy: Any, states: list[dict[str, Any]]) -> None:
    """Put :func:`strategy_state`'s output back into a freshly built strategy."""
    chain = _strategies(strategy)
    if len(chain) != len(states):
        raise CheckpointError("the checkpoint's strategy does not match the study's")
    for item, state in zip(chain, states, strict=True):
        for name, value in state.items():
            if name == "__own__":
                item.load_state_dict(json.loads(value))
            else:
                setattr(item, name, _arrays(value))


def save(path: Path, payload: dict[str, Any], key: bytes | None) -> None:
    """Write ``payload`` to ``path`` atomically (encrypted with ``key`` when given)."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    plain = buffer.getvalue()
    digest = hashlib.sha256(plain).digest()
    if key is not None:
        from cryptography.fernet import Fernet

        body, mode = Fernet(key).encrypt(plain), b"F"
    else:
        body, mode = plain, b"P"
    from medfed.infra.files import atomic_write

    atomic_write(path, MAGIC + mode + digest + body)


class Writer:
    """Writes checkpoints in the background, one at a time, so a round never waits for the disk.

    :meth:`submit` hands over a payload that is already complete (nothing in it changes later);
    the previous write is finished first, and :meth:`close` waits for the last one. An error in
    a write is raised by the next :meth:`submit` or by :meth:`close`.
    """

    def __init__(self, key: bytes | None) -> None:
        self._key = key
        self._pending: Any = None
        self._pool: Any = None

    def submit(self, path: Path, data: dict[str, Any]) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.close()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")
        self._pending = self._pool.submit(save, path, data, self._key)

    def close(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()


def load(path: Path, key: bytes | None) -> dict[str, Any]:
    """Read and verify the checkpoint at ``path``; :class:`CheckpointError` says what is wrong."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(
            f"{path} does not exist: the run wrote no checkpoint "
            "(checkpoint.every=0, or it stopped before round 1)"
        ) from None
    if not raw.startswith(MAGIC) or raw[len(MAGIC) : len(MAGIC) + 1] not in (b"P", b"F"):
        raise CheckpointError(f"{path} is not a medfed checkpoint (or its header is damaged)")
    mode = raw[len(MAGIC) : len(MAGIC) + 1]
    digest, body = raw[len(MAGIC) + 1 : len(MAGIC) + 33], raw[len(MAGIC) + 33 :]
    if mode == b"F":
        if key is None:
            raise CheckpointError(
                f"{path} is encrypted: give the key with checkpoint.key_file=FILE"
            )
        from cryptography.fernet import Fernet, InvalidToken

        try:
            body = Fernet(key).decrypt(body)
        except InvalidToken:
            raise CheckpointError(
                f"{path} cannot be decrypted with the configured "
                "checkpoint.key_file: wrong key, or the file is damaged; it "
                "was left untouched"
            ) from None
    if hashlib.sha256(body).digest() != digest:
        raise CheckpointError(
            f"{path} is corrupted (its SHA-256 does not match its content); it was left untouched"
        )
    try:
        return torch.load(io.BytesIO(body), weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path} cannot be read: {exc}") from None


def payload(
    study: dict[str, Any],
    server_round: int,
    state: dict[str, torch.Tensor],
    rounds: list[Any],
    statistics: dict[str, Any],
    strategy: Any,
) -> dict[str, Any]:
    """Everything the rounds after ``server_round`` depend on (see the module docstring)."""
    return {
        "version": 1,
        "server_round": server_round,
        "study": json.dumps(study),
        "state": dict(state),
        "rounds": json.dumps([asdict(r) for r in rounds]),
        "statistics": json.dumps(statistics),
        "strategy": strategy_state(strategy),
        "python_random": json.dumps(random.getstate()),
        "torch_random": torch.get_rng_state(),
    }


def restore_random(data: Mapping[str, Any]) -> None:
    """The server's random-number states as they were when the checkpoint was written."""
    version, internal, gauss = json.loads(data["python_random"])
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(data["torch_random"])


def write_config(study: dict[str, Any]) -> None:
    """``<output_dir>/config.yaml`` at the start of a run, so an interrupted run can be resumed
    (the finished run writes it again with the rest of the run directory)."""
    import yaml

    if not study.get("output_dir"):
        return
    from medfed.infra.files import atomic_write, make_folder

    out = make_folder(study["output_dir"])
    atomic_write(out / "config.yaml", yaml.safe_dump(study, sort_keys=False))
