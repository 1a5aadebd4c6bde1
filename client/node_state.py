"""What a hospital keeps between rounds, on its own disk, so that a resumed study continues it.

Two kinds of state stay at the node between rounds, in the run's ``context.state``: the FedPer
heads / FedBN norms (:mod:`medfed.client.personal`, ArrayRecord ``medfed-local``) and the node's
SCAFFOLD control variate ``c_i`` (:mod:`medfed.client.scaffold`, ``medfed-scaffold``). Flower
drops ``context.state`` when its run ends (a coordinator crash, ``flwr stop``; a resumed study is
a new run), so after every train round the node also writes them to disk, one file per round:

* simulation: ``<output_dir>/node_state/<study_id>/<site>/round-<t>.pt`` (the run directory);
* deployment: ``<card folder>/node_state/<study_id>/<site>/round-<t>.pt`` beside the hospital's
  dataset card, like its personalised model. Local heads are personal to the hospital: never
  sent.

On disk: ``b"MEDFED-NODE1" | SHA-256 of the payload | payload``, the payload a ``torch.save`` of
tensors and strings loaded with ``weights_only=True``, written atomically
(:func:`medfed.infra.files.atomic_write`), as the coordinator's checkpoints are.

A resumed study sends ``query.restore`` with the checkpoint's round ``r`` and the last round
``k <= r`` in which the coordinator recorded this hospital's update. The node loads its newest
file of a round ``<= r``: the state it held when the checkpoint was written (an update that was
lost on its way had still changed it, as in an uninterrupted run). A file older than ``k``, or
none at all, means the state is missing: the node refuses in one sentence naming the file rather
than restart its heads from the global model. Every round's file is kept for the study: a
checkpoint may be older than the node's last round (``checkpoint.every``), and the files are small
(the heads or norms; for SCAFFOLD one float per weight).
"""

from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, Context

from medfed.client import personal, scaffold
from medfed.infra.files import atomic_write
from medfed.models.personal import settings

MAGIC = b"MEDFED-NODE1"
KEPT = (personal.LOCAL_STATE, scaffold.STATE)
"""The ``context.state`` ArrayRecords a node keeps between rounds."""
_ROUND_FILE = re.compile(r"round-(\d+)\.pt")
_ANEW = "restore it from a backup, or start the study anew"


class NodeStateError(RuntimeError):
    """The node's saved state cannot be restored; the message names the file and what to do."""


def stateful(study: dict[str, Any]) -> bool:
    """Whether the study keeps state at the nodes between rounds (FedPer/FedBN, SCAFFOLD)."""
    return settings(study)[0] in ("fedper", "fedbn") or study["strategy"]["name"] == "scaffold"


def folder(study: dict[str, Any], context: Context, site: str) -> Path | None:
    """Where this node's state files go (see the module docstring); ``None`` for a simulated
    study without a run directory (it cannot be resumed)."""
    dataset = context.node_config.get("dataset")
    if dataset:
        base = Path(str(dataset)).resolve().parent
    elif study.get("output_dir"):
        base = Path(study["output_dir"])
    else:
        return None
    return base / "node_state" / str(study["study_id"]) / site


def save(context: Context, study: dict[str, Any], site: str, server_round: int) -> None:
    """Write the state this node keeps after training in ``server_round`` (when it keeps any)."""
    where = folder(study, context, site)
    if where is None or not stateful(study):
        return
    records = {
        name: context.state.array_records[name].to_torch_state_dict()
        for name in KEPT
        if name in context.state.array_records
    }
    buffer = io.BytesIO()
    torch.save(
        {"study_id": str(study["study_id"]), "site": site, "round": server_round, **records},
        buffer,
    )
    plain = buffer.getvalue()
    atomic_write(where / f"round-{server_round}.pt", MAGIC + hashlib.sha256(plain).digest() + plain)


def restore(
    context: Context, study: dict[str, Any], site: str, resume_round: int, trained_round: int
) -> int:
    """Load the state this node held after round ``resume_round`` into ``context.state``.

    Returns the round of the file loaded (0: none, the node had not trained yet). Raises
    :class:`NodeStateError` when the coordinator recorded an update of this node in round
    ``trained_round`` but no file of that round or later (up to ``resume_round``) is readable.
    """
    where = folder(study, context, site)
    if where is None or not stateful(study):
        return 0
    rounds = _rounds(where, resume_round)
    if not rounds or rounds[-1] < trained_round:
        if trained_round == 0:
            return 0
        raise NodeStateError(
            f"cannot resume: this node's state after round {trained_round} "
            f"({where / f'round-{trained_round}.pt'}) is missing; {_ANEW}"
        )
    data = read(where / f"round-{rounds[-1]}.pt", study, site)
    for name in KEPT:
        context.state.array_records.pop(name, None)
        if name in data:
            context.state.array_records[name] = ArrayRecord(dict(data[name]))
    return rounds[-1]


def _rounds(where: Path, resume_round: int) -> list[int]:
    """The rounds ``<= resume_round`` this node has a state file of, in order."""
    try:
        names = [path.name for path in where.iterdir()] if where.is_dir() else []
    except OSError as exc:
        raise NodeStateError(
            f"cannot resume: cannot list node state folder {where}: {exc.strerror}"
        ) from None
    found = (_ROUND_FILE.fullmatch(name) for name in names)
    return sorted(n for match in found if match and (n := int(match.group(1))) <= resume_round)


def read(path: Path, study: dict[str, Any], site: str) -> dict[str, Any]:
    """The verified content of the state file ``path`` of this study and site."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise NodeStateError(
            f"cannot resume: cannot read node state {path}: {exc.strerror}"
        ) from None
    digest, body = raw[len(MAGIC) : len(MAGIC) + 32], raw[len(MAGIC) + 32 :]
    if not raw.startswith(MAGIC) or hashlib.sha256(body).digest() != digest:
        raise NodeStateError(
            f"cannot resume: node state {path} is corrupted (its SHA-256 does not match its "
            f"content); {_ANEW}"
        )
    try:
        data: dict[str, Any] = torch.load(io.BytesIO(body), weights_only=True)
    except Exception as exc:  # a well-hashed file torch cannot read: another program's
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise NodeStateError(f"cannot resume: node state {path} cannot be read: {first}") from None
    if (data.get("study_id"), data.get("site")) != (str(study["study_id"]), site):
        raise NodeStateError(
            f"cannot resume: node state {path} belongs to study {data.get('study_id')} at "
            f"{data.get('site')}, not to study {study['study_id']} at {site}; {_ANEW}"
        )
    return data
