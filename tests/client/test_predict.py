"""``medfed predict``: a finished study's bundle scores a hospital's export, row by row, as in
training; what cannot be scored is listed with its reason and no cell value."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from medfed.client.commands.predict import predict_main, unscorable_path
from medfed.models.ingest.cards import load_card, read_card_data
from medfed.models.ingest.export import export_synthetic
from medfed.models.release.scorer import load_scorer
from medfed.server.outputs.rundir import write_run


@pytest.fixture(scope="module")
def study(small_study, run_inprocess, tmp_path_factory) -> tuple[Path, list[Path]]:
    """A finished 2-round diagnosis study (its bundle) and two hospitals' cards."""
    root = tmp_path_factory.mktemp("predict")
    study = small_study("rounds=2", f"output_dir={root / 'run'}")
    write_run(run_inprocess(study))
    return root / "run" / "model", export_synthetic("diagnosis", 2, root / "cards", seed=5)


def _predict(*args: object, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    status = predict_main([str(a) for a in args])
    out = capsys.readouterr()
    return status, out.out + out.err


def test_every_row_is_scored_exactly_as_training_encodes_it(study, tmp_path, capsys) -> None:
    bundle, cards = study
    status, said = _predict(
        "--model", bundle, "--dataset", cards[0], "--out", tmp_path / "p.csv", capsys=capsys
    )
    assert status == 0, said
    predictions = pd.read_csv(tmp_path / "p.csv")
    rows = read_card_data(load_card(cards[0]), load_task_of(bundle)).train
    assert len(predictions) == len(rows) and said.startswith(f"scored {len(rows)} rows")
    assert predictions["row"].tolist() == list(range(2, len(rows) + 2))  # the header is row 1
    scorer = load_scorer(bundle)
    with torch.no_grad():
        logits = scorer.model(torch.from_numpy(scorer.encoder.transform(rows)))
    np.testing.assert_allclose(
        predictions["probability"], torch.sigmoid(logits).numpy(), rtol=0, atol=1e-7
    )
    assert (predictions["label"] == (predictions["probability"] >= 0.5)).all()
    assert pd.read_csv(unscorable_path(tmp_path / "p.csv")).empty


def load_task_of(bundle: Path):
    return load_scorer(bundle).schema


def _damaged_export(card: Path, tmp_path: Path) -> Path:
    """The card's export with five broken rows (no target column: new patients)."""
    frame = pd.read_csv(card.parent / "hospital-0-train.csv", dtype=str, keep_default_na=False)
    frame = frame.drop(columns=["cad"]).head(30)
    frame.loc[3, "age"] = "1234.5678"  # out of range
    frame.loc[7, "cholesterol"] = "SECRET-VALUE"  # text in a numeric column
    frame.loc[11, "sex"] = "unknown-sex-code"  # unknown category
    frame.loc[12, "age"] = "2345.6789"
    frame.loc[12, "thal"] = "odd-thal"
    path = tmp_path / "new-patients.csv"
    frame.to_csv(path, index=False)
    with path.open("a") as handle:
        handle.write("1,2,3\n")  # a row with the wrong number of fields: row 32
    return path


def test_unscorable_rows_are_listed_with_reasons_and_no_cell_value(study, tmp_path, capsys) -> None:
    bundle, cards = study
    data = _damaged_export(cards[0], tmp_path)
    status, said = _predict(
        "--model",
        bundle,
        "--dataset",
        data,
        "--out",
        tmp_path / "p.csv",
        "--chunk-rows",
        7,
        capsys=capsys,
    )
    assert status == 0, said
    listed = list(csv.DictReader(unscorable_path(tmp_path / "p.csv").open()))
    assert {int(r["row"]): r["reason"] for r in listed} == {
        5: "out of range",
        9: "text in a numeric column",
        13: "unknown category",
        14: "out of range; unknown category",
        32: "wrong number of fields",
    }
    scored = pd.read_csv(tmp_path / "p.csv")
    assert len(scored) == 26 and not set(scored["row"]) & {5, 9, 13, 14, 32}
    written = (tmp_path / "p.csv").read_text() + unscorable_path(tmp_path / "p.csv").read_text()
    for secret in ("SECRET", "unknown-sex-code", "odd-thal", "1234.5678", "2345.6789"):
        assert secret not in written + said
    assert "5 row(s) could not be scored" in said.splitlines()[0]


def test_chunked_scoring_equals_scoring_in_one_piece(study, tmp_path, capsys) -> None:
    bundle, cards = study
    for name, chunk in (("one.csv", 1_000_000), ("many.csv", 13)):
        status, said = _predict(
            "--model",
            bundle,
            "--dataset",
            cards[1],
            "--out",
            tmp_path / name,
            "--chunk-rows",
            chunk,
            capsys=capsys,
        )
        assert status == 0, said
    one, many = pd.read_csv(tmp_path / "one.csv"), pd.read_csv(tmp_path / "many.csv")
    assert one["row"].tolist() == many["row"].tolist() and len(one) > 13 * 5
    # float32 products of other batch shapes round differently in the last bit
    np.testing.assert_allclose(one["probability"], many["probability"], rtol=0, atol=1e-6)


def test_the_cards_id_column_names_the_rows(study, tmp_path, capsys) -> None:
    bundle, cards = study
    frame = pd.read_csv(cards[0].parent / "hospital-0-train.csv").head(10)
    frame.insert(0, "patient_id", [f"P{i:03d}" for i in range(10)])
    frame.to_csv(tmp_path / "ids.csv", index=False)
    card = tmp_path / "ids.yaml"
    card.write_text(
        "name: hospital-0\ntask: diagnosis\ntrain: ids.csv\nid_column: patient_id\n"
        "target: {column: cad}\n"
    )
    status, said = _predict(
        "--model",
        bundle,
        "--dataset",
        card,
        "--out",
        tmp_path / "p.csv",
        "--threshold",
        0.2,
        capsys=capsys,
    )
    assert status == 0, said
    predictions = pd.read_csv(tmp_path / "p.csv")
    assert list(predictions.columns) == ["patient_id", "probability", "label"]
    assert predictions["patient_id"].tolist() == [f"P{i:03d}" for i in range(10)]
    assert (predictions["label"] == (predictions["probability"] >= 0.2)).all()


def test_a_card_of_another_task_is_refused_in_one_line(study, tmp_path, capsys) -> None:
    bundle, _ = study
    cards = export_synthetic("pricing", 1, tmp_path / "pricing")
    status, said = _predict(
        "--model", bundle, "--dataset", cards[0], "--out", tmp_path / "p.csv", capsys=capsys
    )
    assert status == 2 and said.count("\n") == 1
    assert "describes data for task 'pricing', but the model predicts task 'diagnosis'" in said
    assert not (tmp_path / "p.csv").exists()


def test_a_tampered_bundle_scores_nothing(study, tmp_path, capsys) -> None:
    bundle, cards = study
    copy = tmp_path / "model"
    copy.mkdir()
    for path in bundle.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    data = bytearray((copy / "preprocessing.json").read_bytes())
    data[data.index(b'"means"') + 12] ^= 0x01  # one byte of the normalisation statistics
    (copy / "preprocessing.json").write_bytes(bytes(data))
    status, said = _predict(
        "--model", copy, "--dataset", cards[0], "--out", tmp_path / "p.csv", capsys=capsys
    )
    assert status == 1 and "preprocessing.json: its SHA-256 does not match" in said
    assert not list(tmp_path.glob("*.csv")) and said.count("\n") == 1


def test_existing_predictions_are_never_overwritten(study, tmp_path, capsys) -> None:
    bundle, cards = study
    (tmp_path / "p.csv").write_text("keep me")
    status, said = _predict(
        "--model", bundle, "--dataset", cards[0], "--out", tmp_path / "p.csv", capsys=capsys
    )
    assert status == 2 and "exists already" in said
    assert (tmp_path / "p.csv").read_text() == "keep me"
    status, said = _predict(
        "--model",
        bundle,
        "--dataset",
        cards[0],
        "--out",
        tmp_path / "q.csv",
        "--threshold",
        1.5,
        capsys=capsys,
    )
    assert status == 2 and "--threshold must be a probability between 0 and 1" in said


def test_per_site_normalisation_needs_the_sites_statistics(
    small_study, run_inprocess, tmp_path, capsys
) -> None:
    study = small_study(
        "rounds=1", "preprocessing.normalisation=site", f"output_dir={tmp_path / 'run'}"
    )
    result = run_inprocess(study)
    write_run(result)
    bundle = tmp_path / "run" / "model"
    data = tmp_path / "rows.csv"
    result_site = result.hospitals[min(result.hospitals)]["name"]
    pd.DataFrame(
        {
            "age": [50.0],
            "sex": ["male"],
            "chest_pain": ["non_anginal"],
            "resting_bp": [130.0],
            "cholesterol": [240.0],
            "fasting_blood_sugar_high": [0.0],
            "resting_ecg": ["normal"],
            "max_heart_rate": [150.0],
            "exercise_angina": [0.0],
            "st_depression": [1.0],
        }
    ).to_csv(data, index=False)
    status, said = _predict(
        "--model", bundle, "--dataset", data, "--out", tmp_path / "p.csv", capsys=capsys
    )
    assert status == 2 and "pass --site NAME" in said and said.count("\n") == 1
    status, said = _predict(
        "--model",
        bundle,
        "--dataset",
        data,
        "--out",
        tmp_path / "p.csv",
        "--site",
        result_site,
        capsys=capsys,
    )
    assert status == 0, said
    site_stats = load_scorer(bundle, site=result_site).encoder.stats
    assert site_stats.means["age"] != result.statistics.means["age"]  # the site's own


def test_a_coded_headerless_export_is_read_through_its_card_as_in_training(
    study, tmp_path, capsys
) -> None:
    """Codes, renames, units and a target map (whose column new patients may lack) all apply."""
    bundle, cards = study
    frame = pd.read_csv(cards[0].parent / "hospital-0-train.csv").head(40)
    frame["sex"] = frame["sex"].map({"female": 0, "male": 1})
    frame["cholesterol"] = (frame["cholesterol"] / 38.67).round(4)  # mmol/L
    frame["cad"] = frame["cad"] * 2  # local codes 0 and 2
    frame.columns = [{"cholesterol": "chol", "cad": "num"}.get(c, c) for c in frame.columns]
    frame.to_csv(tmp_path / "coded.data", header=False, index=False)
    card = tmp_path / "coded.yaml"
    card.write_text(
        "name: coded\ntask: diagnosis\ntrain: coded.data\nsplit: {test_fraction: 0}\n"
        f"csv: {{header: false, missing: ['']}}\ncolumns: {list(frame.columns)}\n"
        "rename: {chol: cholesterol}\nvalues: {sex: {0: female, 1: male}}\n"
        "units: {chol: mmol/L}\ntarget: {column: num, map: {0: 0, 2: 1}}\n"
    )
    status, said = _predict(
        "--model", bundle, "--dataset", card, "--out", tmp_path / "p.csv", capsys=capsys
    )
    assert status == 0, said
    rows = read_card_data(load_card(card), load_task_of(bundle)).train
    expected = load_scorer(bundle).raw(rows)
    predictions = pd.read_csv(tmp_path / "p.csv")
    assert len(predictions) == len(rows) == 40
    np.testing.assert_allclose(predictions["probability"], expected, rtol=0, atol=1e-7)
    frame.drop(columns=["num"]).to_csv(tmp_path / "coded.data", header=False, index=False)
    card.write_text(card.read_text().replace(", 'num']", "]"))  # new patients: no outcome yet
    status, said = _predict(
        "--model", bundle, "--dataset", card, "--out", tmp_path / "q.csv", capsys=capsys
    )
    assert status == 0, said
    np.testing.assert_allclose(pd.read_csv(tmp_path / "q.csv")["probability"], expected, atol=1e-7)
    card.write_text(card.read_text().replace("columns: [", "columns: ['extra', "))  # too many
    status, said = _predict(
        "--model", bundle, "--dataset", card, "--out", tmp_path / "r.csv", capsys=capsys
    )
    assert status == 2 and "no data row has the 14 fields the card's columns name" in said, said


def test_a_parquet_export_is_scored_with_row_numbers_from_one(study, tmp_path, capsys) -> None:
    bundle, cards = study
    frame = pd.read_csv(cards[0].parent / "hospital-0-train.csv").drop(columns=["cad"]).head(20)
    frame.loc[3, "age"] = 500.0
    frame.to_parquet(tmp_path / "rows.parquet")
    status, said = _predict(
        "--model", bundle, "--dataset", tmp_path / "rows.parquet", "--out", tmp_path / "p.csv",
        "--chunk-rows", 6, capsys=capsys,
    )  # fmt: skip
    assert status == 0, said
    assert pd.read_csv(tmp_path / "p.csv")["row"].tolist() == [1, 2, 3, *range(5, 21)]
    assert unscorable_path(tmp_path / "p.csv").read_text() == "row,reason\n4,out of range\n"
