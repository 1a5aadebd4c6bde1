"""``medfed model verify BUNDLE [--key signing.pub]`` and ``medfed model export --format onnx
BUNDLE OUT.onnx [--key signing.pub] [--site NAME]``: a study's signed model bundle at a hospital.

``verify`` prints one line and exits 0 when the signature and every SHA-256 check out, 1
otherwise. ``export`` verifies the bundle first and writes an ONNX file with the preprocessing in
the graph (:mod:`medfed.models.release.onnx_export`; needs the ``onnx`` extra).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medfed.models.release.bundle import BundleError, verify_bundle
from medfed.models.release.scorer import ScorerError, load_scorer


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medfed model", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    verify = commands.add_parser("verify", help="check the bundle's signature and hashes")
    verify.add_argument("bundle", type=Path, help="the bundle folder (RUN_DIR/model)")
    verify.add_argument("--key", type=Path, help="the coordinator's signing.pub")
    export = commands.add_parser("export", help="export the verified model to ONNX")
    export.add_argument("--format", required=True, choices=["onnx"], help="the export format")
    export.add_argument("bundle", type=Path, help="the bundle folder (RUN_DIR/model)")
    export.add_argument("out", type=Path, help="the file to write, e.g. model.onnx")
    export.add_argument("--key", type=Path, help="the coordinator's signing.pub")
    export.add_argument("--site", help="site statistics to use (per-site normalisation)")
    return parser


def _error(message: str, status: int) -> int:
    print(f"medfed: error: {message}", file=sys.stderr)
    return status


def _export(args: argparse.Namespace) -> int:
    try:
        import onnx  # noqa: F401 - the optional extra
    except ImportError:
        return _error("ONNX export needs the onnx extra: pip install 'medfed[onnx]'", 2)
    if args.out.exists():
        return _error(f"{args.out} exists already; choose another file (nothing is overwritten)", 2)
    try:
        scorer = load_scorer(args.bundle, key=args.key, site=args.site)
    except BundleError as exc:
        return _error(str(exc), 1)
    except ScorerError as exc:
        return _error(str(exc), 2)
    from medfed.models.release.onnx_export import export_onnx

    export_onnx(scorer, args.out)
    print(
        f"wrote {args.out}: {scorer.schema.name} model of {args.bundle} with its "
        "normalisation, input 'features' (column names in the metadata 'input_columns')"
    )
    return 0


def model_main(argv: list[str]) -> int:
    """``medfed model verify|export ...``; the exit status."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    if args.command == "export":
        return _export(args)
    try:
        print(verify_bundle(args.bundle, args.key).line())
    except BundleError as exc:
        print(f"FAILED: {exc}")
        return 1
    return 0
