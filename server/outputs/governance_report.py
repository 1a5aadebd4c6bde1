"""The ``governance`` section of ``summary.json``: manifest, approvals, suppressed metrics.

``manifest`` is the hash every node checked, ``approved_by`` the hospitals that took part,
``absent`` every site of the manifest that did not with the reason (e.g. ``study not approved:
manifest 1a2b3c4d (approve it with medfed node approve)``), and ``suppressed`` the hospitals whose
per-site test metrics their node withheld under its ``min_cell_count`` (a test class with fewer
cases): they are left out of the global metrics too.
"""

from __future__ import annotations

import math
from typing import Any

SUPPRESSED = (
    "withheld by the node: a class of its test split has fewer cases than its policy's "
    "min_cell_count"
)


def governance_summary(result: Any) -> dict[str, Any]:
    """The section for a :class:`medfed.server.study.StudyResult`."""
    governance = dict(result.study.get("governance") or {})
    suppressed = {}
    for hospital in result.hospitals.values():
        metrics = result.final.hospital_metrics.get(hospital["name"])
        if (
            metrics
            and hospital["n_test"] > 0
            and all(isinstance(v, float) and math.isnan(v) for v in metrics.values())
        ):
            suppressed[hospital["name"]] = SUPPRESSED
    return {
        "manifest": governance.get("manifest"),
        "approved_by": governance.get("approved_by", []),
        "absent": governance.get("absent", {}),
        "suppressed": suppressed,
    }


def governance_markdown(section: dict[str, Any] | None) -> list[str]:
    """The report's governance lines: manifest, who approved, who is absent and why, and the
    hospitals whose metrics their node withheld."""
    if not section or not section.get("manifest"):
        return []
    lines = [
        "## Governance",
        "",
        f"Manifest `{section['manifest']}`; approved by and run at: "
        f"{', '.join(section['approved_by']) or 'none'}.",
    ]
    lines += [f"- absent: {site}: {why}" for site, why in section["absent"].items()]
    lines += [f"- {site}: per-site metrics {why}" for site, why in section["suppressed"].items()]
    return [*lines, ""]
