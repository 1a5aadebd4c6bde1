"""``medfed predict``: a hospital scores its new patients with a study's signed model bundle.

::

    medfed predict --model RUN/model --dataset CARD_OR_FILE --out predictions.csv
                   [--threshold T] [--key coordinator.pub] [--site NAME] [--id-column C]

The bundle is verified first (signature and every hash; a bundle that does not verify is refused,
exit 1). The rows are read through the dataset card exactly as in training
(:mod:`medfed.models.ingest.score_rows`), in chunks, so a file of millions of rows streams through
in
bounded memory. ``predictions.csv`` holds per scorable row its row number (or the card's
``id_column``) and the task's prediction columns (:meth:`medfed.models.scorer.Scorer.columns`);
``<out>.unscorable.csv`` lists every row that could not be scored with its reason, never a cell
value. Both are written under temporary names and renamed when complete; an existing output is
never overwritten. Everything stays on this machine. Exit status: 0 when rows were scored, 1
when the bundle does not verify or no row could be scored, 2 for a usage or data-file error.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path
from typing import TextIO

import pandas as pd

from medfed.models.ingest.cards import card_schema
from medfed.models.ingest.cardspec import CardError, DatasetCard, load_card
from medfed.models.ingest.chunks import CHUNK_ROWS
from medfed.models.ingest.score_rows import Chunk, scoring_chunks
from medfed.models.release.bundle import BundleError
from medfed.models.release.scorer import Scorer, ScorerError, load_scorer

FLOAT_FORMAT = "%.9g"  # float32 outputs round-trip exactly


def unscorable_path(out: Path) -> Path:
    """Where the rows that could not be scored are listed: ``<out stem>.unscorable.csv``."""
    return out.with_name(f"{out.stem}.unscorable.csv")


def dataset_card(dataset: Path, scorer: Scorer, id_column: str | None) -> DatasetCard:
    """The card to read ``dataset`` with: the YAML card itself (its task must be the model's),
    or for a plain CSV/Parquet file a card naming its columns as the schema does."""
    schema = scorer.schema
    if dataset.suffix.lower() in (".yaml", ".yml"):
        card = load_card(dataset)
        declared = card_schema(card).name
        if declared != schema.name:
            raise CardError(
                f"{dataset} describes data for task '{declared}', but the model "
                f"predicts task '{schema.name}'; score it with a card written for "
                f"'{schema.name}'"
            )
    else:
        card = DatasetCard(path=dataset, name=dataset.stem, task=schema.name, train=dataset)
    return card if id_column is None else DatasetCard(**{**card.__dict__, "id_column": id_column})


def _write_chunk(
    scorer: Scorer, chunk: Chunk, out: TextIO, bad: TextIO, first: bool, id_name: str
) -> None:
    columns = scorer.score(chunk.frame)
    table = pd.DataFrame({id_name: chunk.rows if chunk.ids is None else chunk.ids, **columns})
    table.to_csv(out, header=first, index=False, float_format=FLOAT_FORMAT, lineterminator="\n")
    csv.writer(bad, lineterminator="\n").writerows(chunk.unscorable)


def _counts(reasons: dict[str, int]) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in sorted(reasons.items()))


def predict(
    scorer: Scorer, card: DatasetCard, out: Path, chunk_rows: int = CHUNK_ROWS
) -> tuple[int, dict[str, int]]:
    """Score the card's file into ``out`` (and :func:`unscorable_path`); rows scored and the
    unscorable rows per reason."""
    id_name = card.id_column or "row"
    targets = (out, unscorable_path(out))
    parts = [p.with_name(f".{p.name}.part") for p in targets]
    scored, reasons = 0, dict[str, int]()
    try:
        with parts[0].open("w", newline="") as handle, parts[1].open("w", newline="") as bad:
            bad.write("row,reason\n")
            for index, chunk in enumerate(scoring_chunks(card, scorer.schema, chunk_rows)):
                _write_chunk(scorer, chunk, handle, bad, index == 0, id_name)
                scored += len(chunk.rows)
                for _, why in chunk.unscorable:
                    reasons[why] = reasons.get(why, 0) + 1
            if scored == 0 and not reasons:
                raise CardError(f"{card.train} has no data rows to score")
        for part, target in zip(parts, targets, strict=True):
            os.replace(part, target)
    finally:
        for part in parts:
            part.unlink(missing_ok=True)
    return scored, reasons


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive number of rows, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medfed predict", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, type=Path, help="the bundle (RUN_DIR/model)")
    parser.add_argument("--dataset", required=True, type=Path, help="a dataset card or a file")
    parser.add_argument("--out", required=True, type=Path, help="predictions CSV to write")
    parser.add_argument("--threshold", type=float, help="yes/no cut-off (default: the study's)")
    parser.add_argument("--key", type=Path, help="the coordinator's signing.pub to verify with")
    parser.add_argument("--site", help="site statistics to use (per-site normalisation)")
    parser.add_argument("--id-column", help="column naming each row (default: the card's)")
    parser.add_argument("--chunk-rows", type=_positive, default=CHUNK_ROWS, help=argparse.SUPPRESS)
    return parser


def _refuse(message: str, status: int) -> int:
    print(f"medfed: error: {message}", file=sys.stderr)
    return status


def predict_main(argv: list[str]) -> int:
    """``medfed predict ...`` (see the module docstring); the exit status."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    targets = (args.out, unscorable_path(args.out))
    if any(t.exists() for t in targets):
        existing = next(t for t in targets if t.exists())
        return _refuse(
            f"{existing} exists already; choose another --out (nothing is overwritten)", 2
        )
    site = args.site
    if site is None and args.dataset.suffix.lower() in (".yaml", ".yml"):
        site = _card_site(args.dataset)
    try:
        scorer = load_scorer(args.model, key=args.key, site=site, threshold=args.threshold)
    except BundleError as exc:
        return _refuse(str(exc), 1)
    except ScorerError as exc:
        return _refuse(str(exc), 2)
    try:
        card = dataset_card(args.dataset, scorer, args.id_column)
        scored, reasons = predict(scorer, card, args.out, args.chunk_rows)
    except CardError as exc:
        return _refuse(str(exc), 2)
    listed = (
        f"; {sum(reasons.values())} row(s) could not be scored ({_counts(reasons)}), "
        f"listed in {targets[1]}"
        if reasons
        else "; every row was scored"
    )
    print(f"scored {scored} rows of {card.train} into {args.out}{listed}{_labels(scorer)}")
    return 0 if scored else 1


def _labels(scorer: Scorer) -> str:
    """For a yes/no target, the threshold the labels used and, in short, where it came from."""
    if scorer.schema.target.kind != "binary":
        return ""
    source = scorer.threshold_source.split(":")[0]
    if "--threshold" not in source:
        source = f"the study's, {source}; see the model card"
    return f"; labels from probability {scorer.threshold:g} up ({source})"


def _card_site(path: Path) -> str | None:
    """The card's site name (selects per-site statistics); None when the card is unreadable
    (the card is read again, and its error reported, after the bundle verified)."""
    try:
        return load_card(path).name
    except CardError:
        return None
