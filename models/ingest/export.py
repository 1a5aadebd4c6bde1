"""``medfed synth export``: the built-in synthetic hospitals as CSV files plus dataset cards.

The example card set for "bring your hospital's data": each hospital gets ``<name>-train.csv``,
``<name>-test.csv`` (see :func:`medfed.models.ingest.synthetic.export_csv`) and a card
``<name>.yaml`` that ``medfed node check`` accepts and ``medfed simulate federation=sites
federation.cards=[...]`` runs; files of an earlier export are replaced only with ``--force``.
The sites are drawn as the default ``federation=synthetic`` draws
them (``conf/federation/synthetic.yaml``), for the given number of hospitals and seed.
"""

from __future__ import annotations

import argparse
import sys
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from medfed.infra.files import atomic_write
from medfed.models.ingest.synthetic import SkewConfig, export_csv, generate_federation
from medfed.models.schema import SchemaError, TaskSchema, load_task

_CARD_HEADER = """\
# Dataset card of a synthetic hospital (medfed synth export). Check it with
#   medfed node check --dataset {card}
"""


def _defaults() -> dict[str, Any]:
    """The shipped synthetic federation's settings (sizes, test fraction, skew)."""
    path = Path(str(files("medfed.conf"))) / "federation" / "synthetic.yaml"
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _card(schema: TaskSchema, task: str, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "task": task,
        "train": f"{name}-train.csv",
        "test": f"{name}-test.csv",
        "csv": {"header": True, "delimiter": ",", "missing": [""], "encoding": "utf-8"},
        "target": {"column": schema.target.name},
        "on_invalid_row": "drop",
    }


class ExportExists(ValueError):
    """A file the export would write already exists (and ``force`` was not given)."""


def _refuse_existing(out: Path, names: list[str]) -> None:
    paths = [
        out / f"{name}{suffix}" for name in names for suffix in ("-train.csv", "-test.csv", ".yaml")
    ]
    taken = [path for path in paths if path.exists()]
    if taken:
        more = f" and {len(taken) - 1} more" if len(taken) > 1 else ""
        raise ExportExists(
            f"{taken[0]}{more} already exist(s); nothing was written (give "
            "--force to replace them, or another folder)"
        )


def export_synthetic(
    task: str | Path, hospitals: int, out_dir: str | Path, seed: int = 0, force: bool = False
) -> list[Path]:
    """Write each synthetic hospital's CSV files and dataset card into ``out_dir``.

    ``task`` is a shipped task name or a schema path (written into the cards as an absolute
    path). Returns the card paths, one per hospital, in federation order.

    Raises
    ------
    SchemaError
        When the task is unknown or invalid.
    ValueError
        When ``hospitals`` is below 1 or ``seed`` is negative.
    ExportExists
        When a file to write exists already and ``force`` is false (nothing is written then).
    """
    schema = load_task(task)
    text = str(task)
    task_ref = text if Path(text).suffix not in (".yaml", ".yml") else str(Path(text).resolve())
    fed = _defaults()
    sites = generate_federation(
        schema,
        hospitals=hospitals,
        min_size=int(fed["min_size"]),
        max_size=int(fed["max_size"]),
        test_fraction=float(fed["test_fraction"]),
        skew=SkewConfig(**fed["skew"]),
        seed=seed,
    )
    out = Path(out_dir)
    if not force:
        _refuse_existing(out, [site.name for site in sites])
    export_csv(schema, sites, out)
    cards = []
    for site in sites:
        path = out / f"{site.name}.yaml"
        body = yaml.safe_dump(
            _card(schema, task_ref, site.name), sort_keys=False, default_flow_style=None
        )
        atomic_write(path, _CARD_HEADER.format(card=path) + body)
        cards.append(path)
    return cards


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medfed synth", description="Synthetic hospitals.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    export = commands.add_parser(
        "export", help="write CSV files plus dataset cards", description=__doc__.splitlines()[0]
    )
    export.add_argument("--task", default="diagnosis", help="task name or schema path")
    export.add_argument("--hospitals", type=int, default=4, help="number of hospitals")
    export.add_argument("--seed", type=int, default=0, help="seed of the synthetic draw")
    export.add_argument(
        "--force",
        action="store_true",
        help="replace files of an earlier export (refused otherwise)",
    )
    export.add_argument("dir", help="output folder (created if needed)")
    return parser


def synth_main(argv: list[str]) -> int:
    """``medfed synth export [--task T] [--hospitals N] [--seed S] [--force] DIR``; the exit
    status (1 when files would be replaced without ``--force``)."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse has printed the usage or the help
        return exc.code if isinstance(exc.code, int) else 2
    try:
        cards = export_synthetic(
            args.task, args.hospitals, args.dir, seed=args.seed, force=args.force
        )
    except ExportExists as exc:
        print(f"medfed: error: {exc}", file=sys.stderr)
        return 1
    except (SchemaError, ValueError, OSError) as exc:
        print(f"medfed: error: {exc}", file=sys.stderr)
        return 2
    for card in cards:
        print(card)
    listing = ",".join(str(c) for c in cards)
    print(
        f"check one with:  medfed node check --dataset {cards[0]}\n"
        f"run a study with: medfed simulate task={load_task(args.task).name} federation=sites "
        f"'federation.cards=[{listing}]'"
    )
    return 0
