"""The exported ONNX graph (preprocessing inside) matches ``medfed predict`` on 1,000 rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest

from medfed.client.commands.model import model_main
from medfed.client.commands.predict import predict_main
from medfed.models.ingest.cardspec import DatasetCard
from medfed.models.ingest.export import export_synthetic
from medfed.models.ingest.score_rows import scoring_chunks
from medfed.models.release.onnx_export import input_columns, onnx_inputs
from medfed.models.release.scorer import load_scorer
from medfed.server.outputs.rundir import write_run

ROWS = 1000


def _rows(task: str, folder: Path) -> Path:
    """1,000 exported rows of ``task`` without the target, some cells blank (missing)."""
    cards = export_synthetic(task, 4, folder / "cards", seed=3)
    frame = pd.concat(
        [
            pd.read_csv(c.parent / f"{c.stem}-train.csv", dtype=str, keep_default_na=False)
            for c in cards
        ]
    ).head(ROWS)
    rng = np.random.default_rng(0)
    for column in frame.columns[:-1]:
        frame.loc[rng.random(ROWS) < 0.05, column] = ""
    path = folder / "rows.csv"
    frame.iloc[:, :-1].to_csv(path, index=False)
    return path


@pytest.mark.parametrize(
    "task, overrides",
    [
        ("diagnosis", ["preprocessing.missing_indicators=true"]),
        ("treatment", []),
        ("pricing", []),
    ],
)
def test_onnx_matches_predict_within_1e_5(
    task, overrides, small_study, run_inprocess, tmp_path, capsys
) -> None:
    study = small_study(f"task={task}", "rounds=2", *overrides, f"output_dir={tmp_path / 'run'}")
    write_run(run_inprocess(study))
    bundle, rows = tmp_path / "run" / "model", _rows(task, tmp_path)
    assert (
        predict_main(
            ["--model", str(bundle), "--dataset", str(rows), "--out", str(tmp_path / "p.csv")]
        )
        == 0
    )
    assert model_main(["export", "--format", "onnx", str(bundle), str(tmp_path / "m.onnx")]) == 0
    assert "wrote" in capsys.readouterr().out
    scorer = load_scorer(bundle)
    card = DatasetCard(path=rows, name="rows", task=task, train=rows)
    chunk = next(scoring_chunks(card, scorer.schema))
    assert len(chunk.rows) == ROWS and chunk.frame.isna().any().any()
    features = onnx_inputs(chunk.frame, scorer.schema)
    got = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"features": features})[0]
    predicted = pd.read_csv(tmp_path / "p.csv")
    expected = predicted[[c for c in scorer.columns() if c not in ("label", "recommended")]]
    if task == "pricing":  # costs of ~1e4 in float32: agreement to 1e-5 of the value
        np.testing.assert_allclose(got.reshape(ROWS, -1), expected.to_numpy(), rtol=1e-5)
    else:  # probabilities
        np.testing.assert_allclose(got.reshape(ROWS, -1), expected.to_numpy(), rtol=0, atol=1e-5)
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert json.loads(props["input_columns"]) == input_columns(scorer.schema)
    assert props["task"] == task


def test_export_never_overwrites_and_refuses_a_tampered_bundle(
    small_study, run_inprocess, tmp_path, capsys
) -> None:
    write_run(run_inprocess(small_study("rounds=1", f"output_dir={tmp_path / 'run'}")))
    bundle, out = tmp_path / "run" / "model", tmp_path / "m.onnx"
    out.write_text("keep")
    assert model_main(["export", "--format", "onnx", str(bundle), str(out)]) == 2
    assert out.read_text() == "keep"
    weights = bytearray((bundle / "weights.pt").read_bytes())
    weights[-20] ^= 0x01
    (bundle / "weights.pt").write_bytes(bytes(weights))
    assert model_main(["export", "--format", "onnx", str(bundle), str(tmp_path / "n.onnx")]) == 1
    assert "weights.pt: its SHA-256 does not match" in capsys.readouterr().err
    assert not (tmp_path / "n.onnx").exists()
