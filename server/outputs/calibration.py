"""The calibration section of a yes/no study's report: reliability diagram, Brier score and one
sentence on over- or under-confidence, from the hospitals' summed histograms
(:mod:`medfed.models.calibration`): no prediction leaves a hospital."""

from __future__ import annotations

from pathlib import Path

from medfed.models.calibration import (
    brier_score,
    calibration_sentence,
    reliability,
)
from medfed.server.outputs.plot import line_chart
from medfed.server.study.loop import GLOBAL, StudyResult

PLOT = "calibration.png"
PERFECT = "perfect calibration"


def calibration_report(result: StudyResult, out: Path) -> tuple[str, str]:
    """Write ``out/calibration.png``; return the report section and the one-sentence verdict.

    Both are empty for other targets than yes/no, or when no hospital scored the final model.
    """
    stats = result.final.statistics.get(GLOBAL)
    if result.schema.target.kind != "binary" or not stats or "brier_sum" not in stats:
        return "", ""
    bins = reliability(stats["hist_pos"], stats["hist_neg"])
    brier = brier_score(stats)
    sentence = calibration_sentence(bins, brier)
    used = [b for b in bins if b.count]
    line_chart(
        {PERFECT: [(0.0, 0.0), (1.0, 1.0)], GLOBAL: [(b.predicted, b.observed) for b in used]},
        title="Reliability of the final model (all test rows)",
        xlabel="predicted probability (mean per bin of 0.1)",
        ylabel="observed share of positives",
        path=out / PLOT,
        highlight=GLOBAL,
    )
    rows = "\n".join(
        f"| {b.low:.1f}-{b.high:.1f} | {b.count} | {b.predicted:.3f} | {b.observed:.3f} |"
        for b in used
    )
    section = (
        f"## Calibration\n\n{sentence}\n\nBrier score {brier:.4f} (0 is perfect; "
        f"always predicting the base rate scores its variance).\n\n"
        "| predicted | rows | mean predicted | observed |\n|---|---|---|---|\n"
        f"{rows}\n\n![calibration]({PLOT})\n"
    )
    return section, sentence
