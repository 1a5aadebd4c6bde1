"""Command-line views of a hospital's privacy: its ledger, and a plan for a study's budget.

``medfed node ledger --dataset PATH`` (:func:`ledger_main`) verifies a dataset's privacy ledger
and prints the epsilon spent per study and in total; it exits 2 when the ledger was tampered with.
``medfed privacy plan --sizes 120,400,900 ...`` (:func:`plan_main`) prints, per hospital, the
noise multiplier, the epsilon after each round and how many rounds the budget allows.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medfed.client.ledger import Ledger, LedgerTampered, ledger_path
from medfed.client.policy import PolicyError, load_policy

EXIT_OK, EXIT_ERROR, EXIT_TAMPERED = 0, 1, 2


class PlanSettingError(ValueError):
    """A setting of ``privacy plan`` that cannot work (exit 2); one sentence naming it."""


class LedgerMissing(RuntimeError):
    """The ledger to read does not exist (never read as zero spent)."""


def _missing(dataset: str | Path, ledger: Path) -> str:
    """Why there is nothing to read at ``ledger``, naming the binding's ledger when known."""
    from medfed.client.ledger_binding import missing_ledger_error

    card = Path(dataset)
    if card.suffix in (".yaml", ".yml") and card.is_file():
        if error := missing_ledger_error(card, ledger):
            return error
    return (
        f"no privacy ledger at {ledger}; a dataset that never trained with DP has none, "
        "otherwise give the ledger's path (--dataset PATH.ledger.jsonl)"
    )


def _ledger_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medfed node ledger",
        description="Verify a dataset's privacy ledger and print its spend per study and total.",
    )
    parser.add_argument(
        "--dataset",
        required=True,
        help="the dataset card or data file, or its .ledger.jsonl itself",
    )
    parser.add_argument(
        "--delta",
        type=float,
        default=None,
        help="report epsilon at this delta (default: the largest recorded)",
    )
    parser.add_argument(
        "--accountant",
        choices=("rdp", "prv"),
        default=None,
        help="accountant (default: the one recorded)",
    )
    parser.add_argument(
        "--key-file",
        type=Path,
        default=None,
        help="the node's ledger HMAC key, if the ledger was written with one",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def _ledger_report(ledger: Ledger, args: argparse.Namespace) -> dict[str, Any]:
    entries = ledger.verify()
    spend = ledger.spent(delta=args.delta, accountant=args.accountant)
    return {
        "ledger": str(ledger.path),
        "entries": len(entries),
        "chain": "ok",
        "head": entries[-1]["hash"] if entries else None,
        "delta": spend.delta,
        "accountant": spend.accountant,
        "total_epsilon": spend.total,
        "studies": {
            name: {"rounds": spend.rounds[name], "epsilon": eps}
            for name, eps in spend.studies.items()
        },
        "open_reservations": spend.open_reservations,
    }


def _print_ledger(report: dict[str, Any]) -> None:
    print(f"ledger: {report['ledger']}")
    head = (report["head"] or "-")[:12]
    print(f"chain: ok ({report['entries']} entries, head {head})")
    if not report["studies"]:
        print("no privacy spend recorded")
        return
    width = max(12, *(len(name) for name in report["studies"]))
    print(f"{'study':<{width}}  {'rounds':>6}  {'epsilon':>8}")
    for name, row in report["studies"].items():
        print(f"{name:<{width}}  {row['rounds']:>6}  {row['epsilon']:>8.3f}")
    print(
        f"{'total':<{width}}  {'':>6}  {report['total_epsilon']:>8.3f}   "
        f"(delta {report['delta']:g}, {report['accountant']} accountant)"
    )
    if report["open_reservations"]:
        print(
            f"open reservations: {report['open_reservations']} (rounds that never committed; "
            "they count as spent)"
        )


def ledger_main(argv: list[str] | None = None) -> int:
    """``medfed node ledger``: 0 when the chain verifies, 2 when tampered, 1 on other errors."""
    args = _ledger_parser().parse_args(argv)
    try:
        key = args.key_file.read_bytes().strip() if args.key_file else None
        ledger = Ledger(ledger_path(args.dataset), key=key)
        if not ledger.path.exists():  # never "0 spent": say what is missing
            raise LedgerMissing(_missing(args.dataset, ledger.path))
        report = _ledger_report(ledger, args)
    except LedgerTampered as error:
        print(
            f"TAMPERED: {error} This node refuses to train on this dataset until the ledger "
            "is restored.",
            file=sys.stderr,
        )
        return EXIT_TAMPERED
    except (OSError, ValueError, LedgerMissing) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_ledger(report)
    return EXIT_OK


def _plan_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medfed privacy plan",
        description="Per hospital: the DP-SGD noise, epsilon after each round, rounds affordable.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--sizes", help="training rows per hospital: 120,400,900")
    source.add_argument(
        "--cards",
        help="dataset cards, comma-separated: each hospital's "
        "training rows are read from its data, and the epsilon its ledger "
        "(<card>.ledger.jsonl) already holds counts against its budget",
    )
    parser.add_argument("--batch-size", type=int, required=True)
    steps = parser.add_mutually_exclusive_group(required=True)
    steps.add_argument("--local-steps", type=int, help="optimizer steps per round")
    steps.add_argument("--local-epochs", type=int, help="passes per round (floor(n/batch) steps)")
    parser.add_argument("--rounds", type=int, required=True)
    noise = parser.add_mutually_exclusive_group(required=True)
    noise.add_argument(
        "--target-epsilon",
        type=float,
        help="each hospital's noise is set so the planned rounds end here",
    )
    noise.add_argument("--noise-multiplier", type=float, help="one noise multiplier for all")
    parser.add_argument(
        "--delta", type=float, default=None, help="default: below 1/n of the smallest hospital"
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        help="epsilon each hospital may spend (default: the target, or the policy)",
    )
    parser.add_argument(
        "--policy",
        type=Path,
        default=None,
        help="node policy YAML whose epsilon limits give the budget",
    )
    parser.add_argument("--accountant", choices=("rdp", "prv"), default="rdp")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    return parser


def _budget(args: argparse.Namespace) -> float | None:
    if args.budget is not None:
        return args.budget
    if args.policy is not None:
        policy = load_policy(args.policy)
        limits = [
            v for v in (policy.max_epsilon_total, policy.max_epsilon_per_study) if v is not None
        ]
        return min(limits) if limits else None
    return args.target_epsilon


def _rounds_affordable(epsilon_at: Any, budget: float | None, cap: int) -> int | None:
    """Largest r <= cap with epsilon_at(r) <= budget (epsilon grows with r); bisection."""
    if budget is None:
        return None
    if epsilon_at(1) > budget:
        return 0
    low, high = 1, 2
    while high <= cap and epsilon_at(high) <= budget:
        low, high = high, high * 2
    high = min(high, cap + 1)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if epsilon_at(middle) <= budget else (low, middle)
    return low


def _hospitals(args: argparse.Namespace) -> tuple[list[str], list[int], list[list], list[str]]:
    """Names, training rows and ledger history per training hospital, from ``--sizes`` or
    ``--cards``, and the names of evaluation-only cards (``role: evaluate``: they never train,
    so they spend no budget and are listed apart rather than planned)."""
    if args.sizes is not None:
        sizes = [int(s) for s in str(args.sizes).split(",") if s.strip()]
        return [f"hospital-{i}" for i in range(len(sizes))], sizes, [[] for _ in sizes], []
    names, sizes, spent, evaluation_only = [], [], [], []
    for path in (p.strip() for p in str(args.cards).split(",") if p.strip()):
        name, rows, role = _card_rows(path, getattr(args, "search", []))
        if role == "evaluate":
            evaluation_only.append(name)
            continue
        ledger = Ledger(ledger_path(path))
        if not ledger.path.exists():
            from medfed.client.ledger_binding import missing_ledger_error

            if error := missing_ledger_error(path, ledger.path):
                raise ValueError(error)
        names.append(name)
        sizes.append(rows)
        spent.append(ledger.history() if ledger.path.exists() else [])
    if not names and evaluation_only:
        raise PlanSettingError(
            "every card given is evaluation-only (role: evaluate): "
            "name at least one card that trains in --cards"
        )
    return names, sizes, spent, evaluation_only


def _card_rows(path: str, search: Sequence[Path]) -> tuple[str, int, str]:
    """One card's site name, training rows and role (``train`` or ``evaluate``)."""
    from dataclasses import replace

    from medfed.models.ingest.cards import CardError, card_schema, load_card, read_card_data
    from medfed.models.searchpath import find_task

    try:
        card = load_card(path)
        card = replace(card, task=find_task(card.task, search))
        data = read_card_data(card, card_schema(card))
    except CardError as exc:  # a card that cannot be read is a usage error (exit 2)
        raise PlanSettingError(str(exc)) from None
    if not data.report.usable:
        problem = data.report.errors[0]
        raise ValueError(f"{path}: {problem}; run `medfed node check --dataset {path}`")
    return data.name, len(data.train), card.role


def _check_settings(args: argparse.Namespace) -> None:
    """The DP settings, with the functions the coordinator and the node use
    (:mod:`medfed.models.settings`), and the target against the policy's caps."""
    from medfed.models import settings

    privacy = {
        "name": "dpsgd",
        "noise_multiplier": args.noise_multiplier,
        "target_epsilon": args.target_epsilon,
        "max_grad_norm": 1.0,
        "delta": args.delta,
        "accountant": args.accountant,
    }
    error = settings.privacy_errors(privacy) or settings.positive(
        "--budget", args.budget, allow_none=True
    )
    if error is None and args.policy is not None:
        error = settings.cap_error(load_policy(args.policy), str(args.policy), privacy)
    if error:
        for setting, flag in (
            ("privacy.target_epsilon", "--target-epsilon"),
            ("privacy.noise_multiplier", "--noise-multiplier"),
            ("privacy.delta", "--delta"),
        ):
            error = error.replace(setting, flag)
        raise PlanSettingError(error)


def plan(args: argparse.Namespace) -> dict[str, Any]:
    """The plan as data: settings and one row per hospital."""
    from medfed.models import privacy

    _check_settings(args)
    names, sizes, spent, evaluation_only = _hospitals(args)
    if not sizes or min(sizes) < 1 or args.batch_size < 1 or args.rounds < 1:
        raise ValueError(
            "--sizes must list positive row counts; --batch-size and --rounds must be positive."
        )
    delta = args.delta if args.delta is not None else privacy.default_delta(min(sizes))
    budget = _budget(args)
    hospitals = []
    for index, n in enumerate(sizes):
        rate = privacy.sample_rate(n, args.batch_size)
        steps = privacy.dp_steps(
            n, args.batch_size, steps=args.local_steps, epochs=args.local_epochs
        )
        noise = args.noise_multiplier
        if noise is None:
            noise = privacy.noise_for_target(
                args.target_epsilon, delta, rate, steps * args.rounds, args.accountant
            )

        def epsilon_at(
            r: int,
            noise: float = noise,
            rate: float = rate,
            steps: int = steps,
            before: list = spent[index],
        ):
            return privacy.epsilon_from_history(
                [*before, (noise, rate, steps * r)], delta, args.accountant
            )

        hospitals.append(
            {
                "hospital": names[index],
                "rows": n,
                "sample_rate": rate,
                "epsilon_spent": (
                    privacy.epsilon_from_history(spent[index], delta, args.accountant)
                    if spent[index]
                    else 0.0
                ),
                "steps_per_round": steps,
                "noise_multiplier": noise,
                "epsilon_per_round": [epsilon_at(r) for r in range(1, args.rounds + 1)],
                "rounds_affordable": _rounds_affordable(epsilon_at, budget, 100 * args.rounds),
            }
        )
    return {
        "delta": delta,
        "accountant": args.accountant,
        "budget": budget,
        "rounds": args.rounds,
        "batch_size": args.batch_size,
        "hospitals": hospitals,
        "evaluation_only": evaluation_only,
    }


def _print_plan(result: dict[str, Any]) -> None:
    budget = "-" if result["budget"] is None else f"{result['budget']:g}"
    print(f"delta {result['delta']:g}, {result['accountant']} accountant, budget {budget}")
    print(
        f"{'hospital':<12} {'rows':>6} {'rate':>7} {'steps':>6} {'noise':>7} {'spent':>7} "
        f"{'rounds ok':>9}"
    )
    for h in result["hospitals"]:
        ok = "-" if h["rounds_affordable"] is None else str(h["rounds_affordable"])
        print(
            f"{h['hospital']:<12} {h['rows']:>6} {h['sample_rate']:>7.4f} "
            f"{h['steps_per_round']:>6} {h['noise_multiplier']:>7.3f} "
            f"{h['epsilon_spent']:>7.3f} {ok:>9}"
        )
    print("\nepsilon after each round")
    names = [h["hospital"] for h in result["hospitals"]]
    print(f"{'round':>5}  " + "  ".join(f"{name:>12}" for name in names))
    for r in range(result["rounds"]):
        row = "  ".join(f"{h['epsilon_per_round'][r]:>12.4f}" for h in result["hospitals"])
        print(f"{r + 1:>5}  {row}")
    if result["evaluation_only"]:
        print(
            "\nevaluation only (role: evaluate; no training, no privacy budget spent): "
            + ", ".join(result["evaluation_only"])
        )
    affordable = [h for h in result["hospitals"] if h["rounds_affordable"] is not None]
    if affordable:
        first = min(affordable, key=lambda h: (h["rounds_affordable"], h["rows"]))
        print(
            f"\n{first['hospital']} ({first['rows']} rows) runs out first: "
            f"{first['rounds_affordable']} round(s) within the budget."
        )


def plan_main(argv: list[str] | None = None) -> int:
    """``medfed privacy plan``: 0 on success, 2 on a setting that cannot work, 1 when the
    data or a ledger cannot be read."""
    try:
        from medfed.models.searchpath import SearchPathError, split

        search, argv = split(list(argv or []))  # hydra.searchpath=[file://DIR]: custom tasks
        args = _plan_parser().parse_args(argv)
        args.search = search
    except SystemExit as exc:  # argparse printed the usage or the help
        return exc.code if isinstance(exc.code, int) else 2
    except SearchPathError as exc:
        print(f"medfed: error: {exc}", file=sys.stderr)
        return 2
    try:
        with warnings.catch_warnings():
            # Opacus notes when a tighter RDP bound needs more orders; the bound stays valid.
            warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
            result = plan(args)
    except (PlanSettingError, PolicyError) as error:
        print(f"medfed: error: {error}", file=sys.stderr)
        return EXIT_TAMPERED  # 2: a usage or configuration error
    except (ValueError, OSError, LedgerTampered) as error:
        print(f"medfed: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        print(json.dumps(result, indent=2, default=lambda v: None if math.isnan(v) else v))
    else:
        _print_plan(result)
    return EXIT_OK
