"""``medfed node check --dataset CARD [--task NAME]``: is this hospital's export usable?

Reads the dataset card and its data exactly as a study would (:mod:`medfed.models.ingest.cards`) and
prints only aggregates: every data line accounted for (kept, dropped per reason, blank, inside a
quoted field), missingness and out-of-range counts per feature, class balance or target range,
and the train/test sizes, then one line per note, warning and error. No cell content is printed
unless ``--show-values`` asks for a few offending cells per problem. Exit status 0 when the data
is usable, 1 when it is not, 2 when the card (or a data file as a whole) cannot be read. No
input ends in a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from medfed.client.commands.check_summary import write_check_summary
from medfed.models import searchpath
from medfed.models.ingest.cards import (
    CardError,
    DatasetCard,
    ValidationReport,
    card_schema,
    load_card,
    read_card_data,
)
from medfed.models.schema import SchemaError, TaskSchema, load_task
from medfed.models.searchpath import find_task

EXIT_OK, EXIT_UNUSABLE, EXIT_CARD = 0, 1, 2


def _schema(card: DatasetCard, task: str | None, search: Sequence[Path] = ()) -> TaskSchema:
    declared = card_schema(replace(card, task=find_task(card.task, search)))
    if task is None:
        return declared
    try:
        wanted = load_task(find_task(task, search))
    except SchemaError as exc:
        raise CardError(f"--task {task}: {exc}") from None
    if wanted.name != declared.name:
        raise CardError(
            f"{card.path} describes data for task '{declared.name}', but --task asks "
            f"for '{wanted.name}'; check the card's task or the --task option"
        )
    return wanted


def _rows(report: ValidationReport) -> list[str]:
    verb = "dropped" if report.on_invalid_row == "drop" else "invalid"
    lines = [
        f"  lines     {report.lines_read} data lines = {report.rows_kept} kept + "
        f"{report.rows_dropped} {verb} + {report.blank_lines} blank + "
        f"{report.continuation_lines} inside quoted fields",
        f"  rows      read {report.rows_read}, kept {report.rows_kept}, "
        f"{verb} {report.rows_dropped}",
    ]
    if report.dropped:
        lines.append(
            "            " + ", ".join(f"{reason}: {n}" for reason, n in report.dropped.items())
        )
    return lines


def _target(report: ValidationReport, target: str) -> list[str]:
    lines = [f"  target    {target}"]
    for part, counts in report.classes.items():
        total = sum(counts.values()) or 1
        shares = ", ".join(f"{label} {n} ({100 * n / total:.0f}%)" for label, n in counts.items())
        lines.append(f"  {part:9s} {shares}")
    if report.target_range:
        lines.append(
            "            train min {min:.4g}, mean {mean:.4g}, max {max:.4g}".format(
                **report.target_range
            )
        )
    return lines


def _features(report: ValidationReport) -> list[str]:
    if not report.missing:
        return []
    width = max(len(name) for name in report.missing) + 2
    lines = [f"  {'feature':{width}s}{'missing':>9s}{'out of range':>14s}"]
    for name, share in report.missing.items():
        lines.append(f"  {name:{width}s}{100 * share:8.1f}%{report.out_of_range.get(name, 0):14d}")
    return lines


def _message(level: str, message: str, report: ValidationReport, show_values: bool) -> list[str]:
    values = report.cell_values.get(message) if show_values else None
    shown = [f"    cells: {', '.join(repr(v) for v in values)}"] if values else []
    return [f"{level}: {message}", *shown]


def render_report(
    report: ValidationReport, show_values: bool = False, verbose: bool = False
) -> str:
    """The printable report: aggregates first, then one line per note, warning and error.

    Cell contents appear only with ``show_values`` (a few per problem, for the hospital's own
    eyes): the rest of the report is aggregates, row numbers and names. ``verbose`` lists every
    column the task does not use.
    """
    lines = [f"dataset card {report.card}: site '{report.site}', task '{report.task}'"]
    lines += [f"  file      {name}" for name in report.files]
    lines += _rows(report)
    if report.split:
        lines.append(f"  split     {report.split}")
        lines.append(f"            train {report.train_size} rows, test {report.test_size} rows")
    lines += _target(report, report.target) + [""] + _features(report)
    for level, messages in (
        ("note", report.notes),
        ("warning", report.warnings),
        ("error", report.errors),
    ):
        lines += [line for m in messages for line in _message(level, m, report, show_values)]
    lines += [f"ignored: {', '.join(report.ignored)}"] if verbose and report.ignored else []
    if not show_values and any(report.cell_values.values()):
        lines.append(
            "note: cell contents are not shown; `medfed node check --show-values` "
            "prints a few offending cells per problem (on this machine only)"
        )
    verdict = "usable" if report.usable else f"NOT usable ({len(report.errors)} problem(s))"
    return "\n".join([*lines, f"result: {verdict}"])


def check_dataset(
    card_path: str | Path,
    task: str | None = None,
    *,
    min_cohort: int | None = None,
    verbose: bool = False,
    search: Sequence[Path] = (),
    show_values: bool = False,
) -> tuple[int, str]:
    """Validate a dataset card and its data; return ``(exit status, printable report)``.

    ``task`` (a task name or schema path) must agree with the card's task when given;
    ``min_cohort`` overrides the card's minimum number of valid training rows (default 20);
    ``show_values`` adds a few offending cells per problem (never without it, not even in the
    text of an unexpected exception).
    """
    try:
        card = load_card(card_path)
        data = read_card_data(card, _schema(card, task, search), min_cohort=min_cohort)
    except (CardError, SchemaError) as exc:
        return EXIT_CARD, f"error: {exc}"
    except Exception as exc:  # noqa: BLE001 - the node must never print a traceback
        first = (
            (str(exc).splitlines() or [""])[0]
            if show_values
            else "text withheld: it may quote a cell; --show-values prints it"
        )
        return EXIT_CARD, (
            f"error: {card_path}: unexpected problem while reading the data "
            f"({type(exc).__name__}: {first}); please report it"
        )
    status = EXIT_OK if data.report.usable else EXIT_UNUSABLE
    return status, render_report(data.report, show_values, verbose)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medfed node", description="The hospital node.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    check = commands.add_parser(
        "check", help="validate a dataset card and its data", description=__doc__.splitlines()[0]
    )
    check.add_argument("--dataset", required=True, metavar="CARD", help="the dataset card YAML")
    check.add_argument(
        "--task", metavar="NAME", help="the task the data must fit (default: the card's task)"
    )
    check.add_argument(
        "--min-cohort",
        type=_positive,
        metavar="N",
        help="fewest valid training rows accepted (default: the card's, else 20)",
    )
    check.add_argument("--verbose", action="store_true", help="list every ignored column")
    check.add_argument(
        "--show-values",
        action="store_true",
        help="print a few offending cells per problem (they never leave the node; "
        "without this flag no cell content is printed)",
    )
    return parser


def node_main(argv: list[str]) -> int:
    """``medfed node ...``: parse ``argv`` (the words after ``node``) and run the command."""
    try:
        search, argv = searchpath.split(argv)  # hydra.searchpath=[file://DIR]: custom tasks
        args = _parser().parse_args(argv)
    except searchpath.SearchPathError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CARD
    except SystemExit as exc:  # argparse has printed the usage or the help
        return exc.code if isinstance(exc.code, int) else EXIT_CARD
    status, text = check_dataset(
        args.dataset,
        args.task,
        min_cohort=args.min_cohort,
        verbose=args.verbose,
        search=search,
        show_values=args.show_values,
    )
    write_check_summary(args.dataset, status, text)  # <card>.check.json for the node view
    print(text, file=sys.stderr if status == EXIT_CARD else sys.stdout)
    return status
