"""The encoder to score rows with a saved model (``model.pt`` or a personalised model file).

A model trained with ``preprocessing.normalisation=site`` saw every site's rows encoded with that
site's own statistics: scoring a site's rows with the global statistics would feed the model
inputs on another scale and its predictions would be wrong without any error. So a file records
its ``normalisation``; ``model.pt`` then carries every site's statistics (``site_statistics``)
and a personalised model its own site's (``statistics``), and :func:`encoder_for` refuses to
guess when the site is not named or unknown.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from medfed.models.encoding import Encoder, GlobalStats, encoder_from_state
from medfed.models.schema import TaskSchema


def encoder_for(saved: Mapping[str, Any], schema: TaskSchema, site: str | None = None) -> Encoder:
    """The encoder for rows of ``site`` under the model file ``saved`` (``torch.load`` output).

    Raises
    ------
    ValueError
        One line naming the missing choice: a per-site ``model.pt`` without ``site``, or a site
        whose statistics the file does not hold.
    """
    if saved.get("normalisation") != "site" or "site_statistics" not in saved:
        return encoder_from_state(schema, saved["encoder"])
    known = sorted(saved["site_statistics"])
    if site is None:
        raise ValueError(
            "this model was trained with preprocessing.normalisation=site: name the "
            f"site whose statistics encode the rows (one of {', '.join(known)})"
        )
    if site not in saved["site_statistics"]:
        raise ValueError(
            f"this model holds no statistics for site {site!r} (trained with "
            f"preprocessing.normalisation=site on {', '.join(known)}); a new site "
            "needs its own statistics: fine-tune a personalised model there"
        )
    stats = GlobalStats.from_dict(saved["site_statistics"][site])
    return Encoder(schema, stats, missing_indicators=bool(saved["encoder"]["missing_indicators"]))
