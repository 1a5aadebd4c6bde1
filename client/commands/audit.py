"""``medfed node approve | revoke | audit``: a hospital's approvals and audit trail.

``approve MANIFEST --dataset CARD [--yes] [--key KEY]`` checks the manifest file (its hash, its
signature, that this node's installed code and site match it) and the dataset, shows the study in
plain words, asks for confirmation and records a signed approval in the dataset's audit log.
``revoke HASH --dataset CARD`` withdraws one (the node refuses the study from its next message).
``audit --dataset CARD [--verify] [--since DATE] [--format text|csv|json]`` prints the log;
``--acknowledge REASON`` moves a damaged log aside and starts a new one that records it.

``--approvals-dir DIR`` (the policy's ``approvals_dir``) keeps the logs as
``DIR/<site>.audit.jsonl`` instead of ``<card>.audit.jsonl`` beside the card. Exit status:
0 done, 1 refused or damaged, 2 bad input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from medfed.client.approval import approve, verify_signature
from medfed.client.audit import AuditLog, AuditTampered, acknowledge, audit_path, file_sha256
from medfed.client.commands.audit_format import render
from medfed.models.manifest import describe, installed_code_hash, manifest_hash

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2


class CliError(RuntimeError):
    """One line for the user, with the exit status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _site_and_log(args: argparse.Namespace) -> tuple[str, AuditLog, Any]:
    """The card's site name, its audit log and the card (exit 2 on an unreadable card)."""
    from medfed.models.ingest.cards import CardError, load_card

    try:
        card = load_card(args.dataset)
    except CardError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    path = audit_path(card.path, folder=args.approvals_dir, site=card.name)
    return card.name, AuditLog(path), card


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest document written by ``medfed study manifest`` after checking its hash and
    signature; :class:`CliError` naming the file otherwise."""
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CliError(f"{path}: cannot read it as a manifest ({exc})", EXIT_USAGE) from None
    if not isinstance(document, dict) or not {"manifest", "sha256", "signature"} <= set(document):
        raise CliError(
            f"{path}: not a medfed study manifest (write one with medfed study manifest)",
            EXIT_USAGE,
        )
    manifest, digest = document["manifest"], str(document["sha256"])
    if manifest_hash(manifest) != digest:
        raise CliError(
            f"{path}: its content does not match its sha256 {digest[:8]}; the file "
            "was changed after it was written: ask the coordinator for it again",
            EXIT_REFUSED,
        )
    signed = document["signature"]
    coordinator = str(manifest.get("coordinator", ""))
    own_key = coordinator.startswith("ssh-ed25519 ") and coordinator != signed.get("public_key")
    if own_key or not verify_signature({"sha256": digest}, signed):
        raise CliError(
            f"{path}: the coordinator's signature does not verify; ask the "
            "coordinator for the file again",
            EXIT_REFUSED,
        )
    return document


def data_check(card: Any, log: AuditLog, site: str) -> int:
    """Check the card's data as a study would and record it: card, fingerprint, rows."""
    from medfed.models.ingest.cards import card_schema, read_card_data

    data = read_card_data(card, card_schema(card))
    files = [card.path, card.train] + ([card.test] if card.test else [])
    log.record(
        "data-check",
        site=site,
        details={
            "card": str(card.path),
            "usable": data.report.usable,
            "fingerprint": {str(f): file_sha256(Path(f)) for f in files},
            "rows_read": data.report.rows_read,
            "rows_kept": data.report.rows_kept,
        },
    )
    return data.report.rows_kept


def start_check(dataset: Path, policy_file: Path) -> None:
    """``medfed node start``'s data check, recorded in the audit log the node will use."""
    from medfed.client.policy import load_policy
    from medfed.models.ingest.cards import load_card

    card = load_card(dataset)
    folder = load_policy(policy_file, card.name).approvals_dir
    data_check(card, AuditLog(audit_path(card.path, folder=folder, site=card.name)), card.name)


def _confirm(question: str, yes: bool) -> bool:
    """True when ``--yes`` was given or the answer on standard input is y/yes."""
    if yes:
        return True
    try:
        answer = input(f"{question} [y/N] ")
    except EOFError:
        raise CliError(
            "no answer to confirm the approval; read the summary above and answer y, or add --yes",
            EXIT_USAGE,
        ) from None
    return answer.strip().lower() in ("y", "yes")


def _approve(args: argparse.Namespace) -> int:
    site, log, card = _site_and_log(args)
    document = read_manifest(Path(args.manifest))
    manifest, digest = document["manifest"], str(document["sha256"])
    code = installed_code_hash()[0]
    if manifest["code"]["sha256"] != code:
        raise CliError(
            f"{args.manifest}: the study runs code {manifest['code']['sha256'][:12]} "
            f"but this node has medfed code {code[:12]} installed; install the "
            "coordinator's medfed version before approving",
            EXIT_REFUSED,
        )
    if manifest["sites"] and site not in manifest["sites"]:
        raise CliError(
            f"{args.manifest}: this node's site '{site}' is not one of the study's "
            f"sites {manifest['sites']}",
            EXIT_REFUSED,
        )
    if manifest["task"]["name"] != card.task:
        raise CliError(
            f"{args.manifest}: the study trains task '{manifest['task']['name']}' but "
            f"{card.path} holds data for '{card.task}'",
            EXIT_REFUSED,
        )
    rows = data_check(card, log, site)
    lines = [
        *describe(manifest),
        f"on:      {site}'s data ({card.path}, {rows} rows kept)",
        f"manifest sha256 {digest}",
    ]
    print("\n".join(lines))
    if not _confirm(f"Approve this study for {site}?", args.yes):
        print("not approved")
        return EXIT_REFUSED
    key = Path(args.key).expanduser() if args.key else None
    approve(log, digest, site, lines, key)
    print(f"approved manifest {digest[:8]} for {site}; recorded in {log.path}")
    return EXIT_OK


def _revoke(args: argparse.Namespace) -> int:
    site, log, _ = _site_and_log(args)
    try:
        digest = log.find(args.hash)
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    if digest not in log.approvals():
        raise CliError(
            f"manifest {digest[:8]} is not approved at {site}; nothing to revoke", EXIT_USAGE
        )
    log.record("revoke", site=site, manifest=digest, details={"reason": args.reason})
    print(f"revoked manifest {digest[:8]} for {site}: the node refuses it from its next round")
    return EXIT_OK


def _audit(args: argparse.Namespace) -> int:
    site, log, _ = _site_and_log(args)
    if args.acknowledge:
        try:
            kept, _ = acknowledge(log.path, args.acknowledge)
        except ValueError as exc:
            raise CliError(str(exc), EXIT_USAGE) from None
        print(
            f"damaged audit log kept as {kept}; a new log starts at {log.path} (approve "
            "studies again)"
        )
        return EXIT_OK
    try:
        entries = log.verify()
    except AuditTampered as exc:
        raise CliError(
            f"audit log tampered: {exc} (the node refuses to train until an operator "
            "runs medfed node audit --dataset CARD --acknowledge REASON)",
            EXIT_REFUSED,
        ) from None
    if args.verify:
        print(f"{log.path}: {len(entries)} entries, chain and head verified")
        return EXIT_OK
    if args.since:
        entries = [e for e in entries if e["time"] >= args.since]
    sys.stdout.write(render(entries, args.format))
    return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medfed node", description="Approvals and audit.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    approve_p = commands.add_parser("approve", help="approve a study manifest for this dataset")
    approve_p.add_argument("manifest", metavar="MANIFEST")
    approve_p.add_argument("--yes", action="store_true", help="approve without asking")
    approve_p.add_argument("--key", metavar="KEY", help="the node's private key (signs it)")
    revoke_p = commands.add_parser("revoke", help="withdraw an approval")
    revoke_p.add_argument("hash", metavar="HASH", help="the manifest hash (or its start)")
    revoke_p.add_argument("--reason", default="", help="why (recorded in the audit log)")
    audit_p = commands.add_parser("audit", help="print or verify the audit log")
    audit_p.add_argument("--verify", action="store_true", help="only verify the chain")
    audit_p.add_argument("--since", metavar="DATE", help="entries from DATE (ISO, UTC) on")
    audit_p.add_argument("--format", choices=("text", "csv", "json"), default="text")
    audit_p.add_argument(
        "--acknowledge", metavar="REASON", help="keep a damaged log aside and start a new one"
    )
    for sub in (approve_p, revoke_p, audit_p):
        sub.add_argument("--dataset", required=True, metavar="CARD", help="the dataset card")
        sub.add_argument(
            "--approvals-dir",
            metavar="DIR",
            help="the policy's approvals_dir (default: beside the card)",
        )
    return parser


def governance_main(argv: list[str]) -> int:
    """``medfed node approve|revoke|audit ...`` (``argv`` starts with the subcommand)."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    handler = {"approve": _approve, "revoke": _revoke, "audit": _audit}[args.command]
    try:
        return handler(args)
    except CliError as exc:
        print(f"medfed: error: {exc}", file=sys.stderr)
        return exc.status
    except AuditTampered as exc:
        print(f"medfed: error: audit log tampered: {exc}", file=sys.stderr)
        return EXIT_REFUSED
