"""The coordinator's side of the study manifest: ``medfed study manifest``, ``medfed run
--manifest`` and ``medfed coordinator audit``.

``medfed study manifest [--coordinator DIR | --key KEY] [--out FILE] OVERRIDES...`` composes the
study exactly as ``medfed run`` (``--coordinator``: a deployed study, ``federation=nodes``, the
sites registered in ``DIR/coordinator.yaml``) or ``medfed simulate`` would, derives its manifest
(:mod:`medfed.models.manifest`), prints it as sorted-key YAML with its SHA-256, and writes the
document ``{manifest, sha256, signature}`` that hospitals approve. The signature is Ed25519 over
``{"sha256": ...}`` by the coordinator key (``DIR/manifest.key``, made once, or ``--key``), whose
OpenSSH public key is the manifest's ``coordinator``; without a key a one-off run key signs an
``unsigned`` manifest (simulation rehearsals).

``medfed run --manifest FILE OVERRIDES...`` takes the sites and coordinator from the file and
refuses (exit 2, one line) a study whose manifest is not exactly the file's: what the hospitals
approved is what runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from medfed.models.manifest import build_manifest, manifest_hash, to_yaml

KEY_FILE = "manifest.key"


class ManifestError(ValueError):
    """A manifest that cannot be made or does not match; one line naming the file or setting."""


def coordinator_key(path: Path) -> ed25519.Ed25519PrivateKey:
    """The Ed25519 key at ``path``, created (mode 0600) when missing."""
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), None)
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise ManifestError(f"{path}: not an Ed25519 private key in PEM format")
        return key
    from medfed.infra.keys import write_private

    key = ed25519.Ed25519PrivateKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_private(
        path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    return key


def identity(key: ed25519.Ed25519PrivateKey) -> str:
    """The coordinator's identity in a manifest: its OpenSSH public key line."""
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )


def document(study: dict[str, Any], key: ed25519.Ed25519PrivateKey | None) -> dict[str, Any]:
    """The signed manifest document of ``study`` (its ``governance.coordinator`` set from the
    key first); a one-off run key signs when ``key`` is None."""
    from medfed.models.manifest import sign

    study.setdefault("governance", {})["coordinator"] = identity(key) if key else None
    manifest = build_manifest(study)
    digest = manifest_hash(manifest)
    signer = key or ed25519.Ed25519PrivateKey.generate()
    return {"manifest": manifest, "sha256": digest, "signature": sign(signer, {"sha256": digest})}


def _compose(overrides: list[str], coordinator: Path | None) -> dict[str, Any]:
    from medfed.server.study.config import compose_study

    if coordinator is not None:
        from medfed.server.deploy.connection import load_config

        overrides = list(overrides)
        if not any(o.lstrip("+~").startswith("federation=") for o in overrides):
            overrides.insert(0, "federation=nodes")
        study = compose_study(overrides)
        if not (study.get("governance") or {}).get("sites"):
            study["governance"]["sites"] = sorted(load_config(coordinator)["nodes"])
        return study
    return compose_study(overrides)


def study_main(argv: list[str]) -> int:
    """``medfed study manifest ...``: print the manifest and its hash; write the document."""
    from medfed.server.study.config import ConfigError

    parser = argparse.ArgumentParser(
        prog="medfed study manifest", description="The manifest hospitals approve."
    )
    parser.add_argument("what", choices=["manifest"])
    parser.add_argument(
        "--coordinator",
        metavar="DIR",
        help="a coordinator folder: a deployed "
        "study with its registered sites, signed with DIR/manifest.key",
    )
    parser.add_argument("--key", metavar="KEY", help="the coordinator's Ed25519 key (PEM)")
    parser.add_argument("--out", metavar="FILE", help="write the signed document here")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for medfed run")
    try:
        args = parser.parse_intermixed_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    folder = Path(args.coordinator).expanduser() if args.coordinator else None
    try:
        study = _compose(args.overrides, folder)
        key_path = (
            Path(args.key).expanduser() if args.key else (folder / KEY_FILE if folder else None)
        )
        doc = document(study, coordinator_key(key_path) if key_path else None)
    except (ConfigError, ManifestError, OSError) as exc:
        print(f"medfed: error: {exc}", file=sys.stderr)
        return 2
    print(to_yaml(doc["manifest"]) + f"sha256: {doc['sha256']}")
    if args.out:
        out = Path(args.out)
        if out.exists() and yaml.safe_load(out.read_text()).get("sha256") != doc["sha256"]:
            print(
                f"medfed: error: --out {out} holds another manifest; choose a new file name",
                file=sys.stderr,
            )
            return 2
        out.write_text(yaml.safe_dump(doc, sort_keys=True))
        print(
            f"wrote {out}: send it to every hospital (medfed node approve {out.name} "
            "--dataset CARD)"
        )
    return 0


def apply_manifest(study: dict[str, Any], path: Path) -> str:
    """Give ``study`` the sites and coordinator of the manifest document at ``path`` and check
    that its manifest is exactly the document's; its hash. :class:`ManifestError` otherwise."""
    try:
        doc = yaml.safe_load(path.read_text())
        approved = doc["manifest"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise ManifestError(f"--manifest {path}: not a manifest document ({exc})") from None
    governance = study.setdefault("governance", {})
    governance.update(
        sites=approved["sites"],
        coordinator=None if approved["coordinator"] == "unsigned" else approved["coordinator"],
    )
    mine = build_manifest(study)
    if manifest_hash(mine) != doc.get("sha256") or manifest_hash(approved) != doc.get("sha256"):
        changed = sorted(k for k in set(mine) | set(approved) if mine.get(k) != approved.get(k))
        raise ManifestError(
            f"--manifest {path}: this study differs from the approved manifest "
            f"{str(doc.get('sha256'))[:8]} in {', '.join(changed) or 'its hash'}; "
            "run the approved settings, or write a new manifest and have it "
            "approved"
        )
    return manifest_hash(mine)
