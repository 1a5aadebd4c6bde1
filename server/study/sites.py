"""The hospitals of a ``federation=sites`` study, checked before round 1.

Every dataset card is read and validated as the node will read it (``medfed node check``): a card
listed twice, two cards with one site name, or a card whose data cannot be used end the study
before anyone trains, in one sentence naming the card. With ``federation.allow_missing_sites=true``
an unusable card is left out instead, and ``summary.json`` records it under ``missing_sites``.
Reasons name the card and count problems; they never quote the data.
"""

from __future__ import annotations

from typing import Any

from medfed.models.schema import TaskSchema, task_from_dict
from medfed.models.settings import card_duplicates, duplicates


def _card_problem(path: str, schema: TaskSchema) -> tuple[str | None, str | None]:
    """``(site name, None)`` for a usable card, ``(name or None, reason)`` otherwise."""
    from medfed.models.ingest.cards import CardError, check_task, read_card_data
    from medfed.models.ingest.cardspec import load_card

    try:
        card = load_card(path)
        check_task(card, schema)
        data = read_card_data(card, schema)
    except (CardError, OSError, ValueError) as exc:
        return None, str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if not data.report.usable:
        return card.name, (
            f"{path}: site {card.name} is not usable ({len(data.report.errors)} "
            f"error(s); `medfed node check --dataset {path}` lists them)"
        )
    return card.name, None


def check_sites(study: dict[str, Any]) -> str | None:
    """The first reason the study's cards cannot run, or None; drops unusable cards (recorded
    in ``federation.missing_sites``) when ``federation.allow_missing_sites`` is true."""
    federation = study["federation"]
    if federation.get("name") != "sites" or not isinstance(federation.get("cards"), list):
        return None
    cards = [str(c) for c in federation["cards"]]
    if error := card_duplicates(cards):
        return error
    usable, names, missing = [], [], []
    schema = task_from_dict(study["task"], source=f"task '{study['task'].get('name')}'")
    for path in cards:
        name, reason = _card_problem(path, schema)
        if reason is None:
            usable.append(path)
            names.append(str(name))
        elif federation.get("allow_missing_sites"):
            missing.append({"card": path, "site": name, "reason": reason})
        else:
            return (
                f"{reason}; fix it, drop it from federation.cards, or run without it: "
                "federation.allow_missing_sites=true"
            )
    if error := duplicates("federation.cards: the site name", names):
        return error
    if missing:
        federation["cards"] = usable
        federation["missing_sites"] = missing + list(federation.get("missing_sites") or [])
    return None
