"""Scoring raw rows with a verified model bundle, exactly as the rows were encoded in training.

:func:`load_scorer` verifies the bundle (:func:`medfed.models.bundle.verify_bundle`) before it
reads a byte of it, rebuilds the task schema, the :class:`~medfed.models.encoding.Encoder` with the
stored statistics (global, or the site's own under per-site normalisation) and the network, and
:meth:`Scorer.score` turns frames in the data conventions of :mod:`medfed.models.ingest.cards` into
the
prediction columns of the task.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from medfed.models.encoding import Encoder, GlobalStats
from medfed.models.nets import build_model
from medfed.models.release.bundle import (
    PREPROCESSING,
    WEIGHTS,
    BundleError,
    Verified,
    verify_bundle,
)
from medfed.models.schema import TaskSchema, task_from_dict


class ScorerError(ValueError):
    """The bundle verified, but cannot score as asked (site, threshold); one line."""


@dataclass
class Scorer:
    """A bundle's model and encoder, ready to score frames (see :meth:`score`)."""

    schema: TaskSchema
    encoder: Encoder
    model: torch.nn.Module
    threshold: float
    threshold_source: str
    verified: Verified
    site: str | None

    def columns(self) -> list[str]:
        """The prediction columns :meth:`score` returns, in order."""
        target = self.schema.target
        if target.kind == "binary":
            return ["probability", "label"]
        if target.kind == "multiclass":
            return [f"p_{c}" for c in target.classes] + ["recommended"]
        return [f"expected_{target.name}"]

    def raw(self, frame: pd.DataFrame) -> np.ndarray:
        """The network's output for ``frame``: probabilities (binary: P(1); multiclass: one per
        class) or the expected value in the target's unit (float32)."""
        with torch.no_grad():
            out = self.model(torch.from_numpy(self.encoder.transform(frame)))
            kind = self.schema.target.kind
            out = (
                torch.sigmoid(out)
                if kind == "binary"
                else torch.softmax(out, dim=1)
                if kind == "multiclass"
                else torch.exp(out)
            )
        return out.numpy()

    def score(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        """Prediction columns (:meth:`columns`) for every row of ``frame``."""
        out = self.raw(frame)
        target = self.schema.target
        if target.kind == "binary":
            return {"probability": out, "label": (out >= self.threshold).astype(np.int64)}
        if target.kind == "multiclass":
            columns = {f"p_{c}": out[:, i] for i, c in enumerate(target.classes)}
            return {
                **columns,
                "recommended": np.asarray(target.classes, dtype=object)[out.argmax(axis=1)],
            }
        return {f"expected_{target.name}": out}


def _site_statistics(prep: dict[str, Any], site: str | None, path: Path) -> dict[str, Any]:
    """The statistics to encode with: the global ones, or the named site's own."""
    if prep["normalisation"] != "site":
        return prep["statistics"]
    sites = sorted(prep["site_statistics"])
    if site is None:
        raise ScorerError(
            f"{path} was trained with per-site normalisation "
            "(preprocessing.normalisation=site), so rows must be normalised with "
            f"their own site's statistics: pass --site NAME (one of {sites})"
        )
    if site not in prep["site_statistics"]:
        raise ScorerError(
            f"site '{site}' did not take part in the study behind {path}, so the "
            f"bundle has no statistics to normalise its rows as in training "
            f"(sites: {sites}); pass --site with one of them"
        )
    return prep["site_statistics"][site]


def _threshold(prep: dict[str, Any], schema: TaskSchema, given: float | None) -> tuple[float, str]:
    if given is None:
        return float(prep["threshold"]["value"]), str(prep["threshold"]["source"])
    if schema.target.kind != "binary":
        raise ScorerError(
            f"--threshold applies to a yes/no target; task '{schema.name}' "
            f"predicts {schema.target.kind} '{schema.target.name}'"
        )
    if not 0.0 < given < 1.0:
        raise ScorerError(f"--threshold must be a probability between 0 and 1, got {given:g}")
    return float(given), "given with --threshold"


def load_scorer(
    path: str | Path,
    *,
    key: str | Path | None = None,
    site: str | None = None,
    threshold: float | None = None,
) -> Scorer:
    """Verify the bundle at ``path`` and build its :class:`Scorer`.

    ``site`` selects the site's statistics under per-site normalisation (required then);
    ``threshold`` overrides the stored decision threshold of a yes/no target.

    Raises
    ------
    BundleError
        When the bundle does not verify (one line).
    ScorerError
        When the site or the threshold cannot be used (one line).
    """
    verified = verify_bundle(path, key)
    folder = verified.path
    prep = json.loads((folder / PREPROCESSING).read_bytes())
    schema = task_from_dict(prep["task"], source=str(folder / PREPROCESSING))
    stats = GlobalStats.from_dict(_site_statistics(prep, site, folder))
    encoder = Encoder(schema, stats, missing_indicators=bool(prep["missing_indicators"]))
    if list(encoder.column_names) != list(prep["columns"]):
        raise BundleError(
            f"{folder / PREPROCESSING}: the encoder's columns differ from the ones "
            "stored at training; this medfed version cannot score this bundle"
        )
    model = build_model(schema, encoder.n_inputs)
    state = torch.load(io.BytesIO((folder / WEIGHTS).read_bytes()), weights_only=True)
    model.load_state_dict(state["state_dict"])
    model.eval()
    value, source = _threshold(prep, schema, threshold)
    return Scorer(
        schema,
        encoder,
        model,
        value,
        source,
        verified,
        site if prep["normalisation"] == "site" else None,
    )
