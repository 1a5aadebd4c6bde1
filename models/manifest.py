"""The study manifest: what a hospital approves, derived identically by coordinator and node.

A manifest binds the *whole study*: the task schema (its content hash, features and target),
the hash of the code a node runs for it (every ``.py`` file of the installed ``medfed.client``,
``medfed.infra`` and ``medfed.models`` packages, the packages the ClientApp imports from medfed),
the training,
strategy, privacy, preprocessing, evaluation and secure-aggregation settings, the rounds and
seed, the participating sites and the coordinator's identity. Its hash is the SHA-256 of its
canonical JSON (sorted keys, no spaces), so any change to any of these -- one character of a
setting, one byte of code, one more site -- is a new hash that needs a new approval.

Both sides call :func:`build_manifest` on the study the server sends (the JSON of round 0, before
a deployed node substitutes its own card, policy and ledger), so they agree without trusting each
other. Plain :mod:`hashlib`, no Flower: server and client both import it.
"""

from __future__ import annotations

import base64
import hashlib
import json
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from medfed.models.settings import lr_schedule_of

FORMAT = "medfed-study-manifest/1"
CODE_PACKAGES = ("client", "infra", "models")  # what a node runs: the ClientApp imports these
"""The medfed packages hashed as the node's code (the ClientApp imports nothing else of medfed)."""
NODE_SET = ("ledger_dir", "ledger_file", "secure_rng")
"""Privacy settings each node sets for itself (not part of what it approves)."""


def canonical(value: Any) -> bytes:
    """Canonical JSON bytes: sorted keys, no spaces, UTF-8 (a NaN setting, e.g. Hydra's
    ``attack.kind=nan``, is the token ``NaN``)."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=True
    ).encode()


def sha256(value: Any) -> str:
    """SHA-256 (hex) of ``value``'s canonical JSON."""
    return hashlib.sha256(canonical(value)).hexdigest()


def code_files(root: Path) -> list[tuple[str, Path]]:
    """``(relative path, path)`` of every ``.py`` file under ``root``'s code packages, sorted."""
    found = [
        (path.relative_to(root).as_posix(), path)
        for package in CODE_PACKAGES
        for path in (root / package).rglob("*.py")
        if "__pycache__" not in path.parts
    ]
    return sorted(found)


def hash_code(root: Path) -> tuple[str, int]:
    """SHA-256 over the sorted relative paths and bytes of the code files; and their count.

    Each file contributes ``<relative path>\\0<size>\\0<bytes>``, so moving bytes from one file
    to another changes the hash.
    """
    digest = hashlib.sha256()
    listed = code_files(root)
    for relative, path in listed:
        data = path.read_bytes()
        digest.update(f"{relative}\0{len(data)}\0".encode() + data)
    return digest.hexdigest(), len(listed)


@lru_cache(maxsize=1)
def installed_code_hash() -> tuple[str, int]:
    """:func:`hash_code` of the installed medfed (computed once per process)."""
    root = Path(str(files("medfed.models"))).parent
    return hash_code(root)


def study_sites(study: dict[str, Any]) -> list[str]:
    """The participating sites: ``governance.sites``, else the federation's hospital names
    (synthetic ``hospital-<i>``, or the ``name`` of every dataset card); [] when unknown."""
    named = (study.get("governance") or {}).get("sites")
    if named:
        return sorted(str(site) for site in named)
    federation = study["federation"]
    if federation.get("name") == "synthetic":
        return [f"hospital-{i}" for i in range(int(federation["hospitals"]))]
    if federation.get("name") == "sites":
        names = []
        for card in federation.get("cards") or []:
            data = yaml.safe_load(Path(card).read_text()) or {}
            names.append(str(data.get("name") or Path(card).stem))
        return sorted(names)
    return []


def build_manifest(study: dict[str, Any], code: tuple[str, int] | None = None) -> dict[str, Any]:
    """The manifest of ``study`` (a resolved study dict); ``code`` defaults to the installed one.

    ``governance.coordinator`` names the coordinator (its signing key's fingerprint); without it
    the study is ``unsigned``.
    """
    code_hash, n_files = code or installed_code_hash()
    task = study["task"]
    privacy = {k: v for k, v in study["privacy"].items() if k not in NODE_SET}
    return {
        "format": FORMAT,
        "task": {
            "name": task["name"],
            "schema_sha256": sha256(task),
            "features": [f["name"] for f in task["features"]],
            "target": task["target"]["name"],
            "model": task["model"],
        },
        "code": {"sha256": code_hash, "files": n_files, "packages": list(CODE_PACKAGES)},
        "train": study["train"],
        "strategy": study["strategy"],
        "privacy": privacy,
        "preprocessing": study["preprocessing"],
        "evaluate": study["evaluate"],
        "secure_aggregation": {
            "on": bool(study.get("secure_aggregation")),
            **(study.get("secagg") or {}),
        },
        "attack": study.get("attack"),
        "rounds": int(study["rounds"]),
        "seed": int(study["seed"]),
        "sites": study_sites(study),
        "coordinator": str((study.get("governance") or {}).get("coordinator") or "unsigned"),
    }


def manifest_hash(manifest: dict[str, Any]) -> str:
    """The manifest's SHA-256 (hex): what a hospital approves."""
    return sha256(manifest)


def to_yaml(manifest: dict[str, Any]) -> str:
    """The manifest as sorted-key YAML (loads back to the same dict, hence the same hash)."""
    return yaml.safe_dump(manifest, sort_keys=True, default_flow_style=False, allow_unicode=True)


def describe(manifest: dict[str, Any]) -> list[str]:
    """The manifest in plain words, one line per question a data-protection officer asks."""
    task, privacy, train = manifest["task"], manifest["privacy"], manifest["train"]
    if privacy.get("name") == "dpsgd":
        budget = (
            f"target epsilon {privacy['target_epsilon']}"
            if privacy.get("target_epsilon") is not None
            else f"noise multiplier {privacy.get('noise_multiplier')}"
        )
        dp = (
            f"DP-SGD at each hospital ({budget}, clipping {privacy.get('max_grad_norm')}, "
            f"delta {privacy.get('delta') or 'below 1/n'})"
        )
    elif privacy.get("name") == "central":
        dp = "client-level DP added by the coordinator (it sees each update unnoised)"
    else:
        dp = "no differential privacy (the coordinator sees each hospital's weights)"
    steps = (
        f"{train['local_steps']} local steps"
        if train.get("local_steps")
        else f"{train['local_epochs']} local epoch(s)"
    )
    schedule = lr_schedule_of(train)
    schedule = "" if schedule == "constant" else f" on a {schedule} schedule"
    secure = " with secure aggregation" if manifest["secure_aggregation"]["on"] else ""
    return [
        f"what:    train a {task['model'].get('family', task['model'])} model for task "
        f"'{task['name']}', predicting {task['target']}",
        f"columns: {', '.join(task['features'])}",
        f"how:     {manifest['rounds']} rounds of {steps} (lr {train['lr']}{schedule}, batch "
        f"{train['batch_size']}), strategy {manifest['strategy']['name']}{secure}",
        f"privacy: {dp}",
        f"with:    {', '.join(manifest['sites']) or '(sites not named)'}",
        f"by:      coordinator {manifest['coordinator']}",
        f"code:    medfed client+infra+models, {manifest['code']['files']} files, sha256 "
        f"{manifest['code']['sha256'][:16]}...",
    ]


def sign(private: Any, payload: dict[str, Any]) -> dict[str, str]:
    """Signature (base64) of ``payload``'s canonical JSON and the signer's OpenSSH public key."""
    data = canonical(payload)
    if isinstance(private, ec.EllipticCurvePrivateKey):
        signature = private.sign(data, ec.ECDSA(hashes.SHA384()))
    else:
        signature = private.sign(data)
    public = private.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return {"signature": base64.b64encode(signature).decode(), "public_key": public.decode()}


def verify_signature(payload: dict[str, Any], signed: dict[str, str]) -> bool:
    """True when ``signed`` (from :func:`sign`) is a valid signature of ``payload``; False
    for a wrong, malformed or missing signature or key."""
    try:
        public = serialization.load_ssh_public_key(str(signed["public_key"]).encode())
        signature = base64.b64decode(str(signed["signature"]), validate=True)
        if isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(signature, canonical(payload), ec.ECDSA(hashes.SHA384()))
        else:
            public.verify(signature, canonical(payload))  # type: ignore[call-arg]
    except Exception:  # noqa: BLE001 - InvalidSignature, a malformed key or base64, a missing key
        return False
    return True
