"""Dataset cards: parsing, codes, units, splits, and a header-less Cleveland-style export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medfed.models.ingest.cards import (
    CardError,
    canonical_code,
    check_task,
    load_card,
    read_card_data,
    split_rows,
)
from medfed.models.ingest.sources import DataConfigError, federation_size, load_site
from medfed.models.ingest.units import converter
from medfed.models.schema import load_task

# Cleveland layout: age sex cp trestbps chol fbs restecg thalach exang oldpeak slope ca thal num
CLEVELAND = """\
63.0,1.0,1.0,145.0,6.0,1.0,2.0,150.0,0.0,2.3,3.0,0.0,6.0,0
67.0,1.0,4.0,160.0,7.5,0.0,2.0,108.0,1.0,1.5,2.0,3.0,3.0,2
67.0,1.0,4.0,120.0,5.9,0.0,2.0,129.0,1.0,2.6,2.0,2.0,7.0,1
37.0,1.0,3.0,130.0,6.5,0.0,0.0,187.0,0.0,3.5,3.0,0.0,3.0,0
41.0,0.0,2.0,130.0,5.3,0.0,2.0,172.0,0.0,1.4,1.0,0.0,3.0,0
56.0,1.0,2.0,120.0,6.4,0.0,0.0,178.0,0.0,0.8,1.0,0.0,3.0,0
62.0,0.0,4.0,140.0,7.3,0.0,2.0,160.0,0.0,3.6,3.0,2.0,3.0,3
57.0,0.0,4.0,120.0,9.1,0.0,0.0,163.0,1.0,0.6,1.0,0.0,3.0,0
63.0,1.0,4.0,130.0,6.9,0.0,2.0,147.0,0.0,1.4,2.0,1.0,7.0,2
53.0,1.0,4.0,140.0,5.4,1.0,2.0,155.0,1.0,3.1,3.0,0.0,7.0,1
57.0,1.0,4.0,140.0,4.9,0.0,0.0,148.0,0.0,0.4,2.0,0.0,6.0,0
56.0,0.0,2.0,140.0,7.4,1.0,2.0,153.0,0.0,1.3,2.0,0.0,3.0,0
56.0,1.0,3.0,130.0,6.5,1.0,2.0,142.0,1.0,0.6,2.0,1.0,6.0,2
44.0,1.0,2.0,120.0,6.1,0.0,0.0,173.0,0.0,0.0,1.0,0.0,?,0
52.0,1.0,3.0,172.0,5.1,1.0,0.0,162.0,0.0,0.5,1.0,0.0,7.0,0
57.0,1.0,3.0,150.0,4.6,0.0,0.0,174.0,0.0,1.6,1.0,?,3.0,0
"""

CLEVELAND_CARD = """\
name: cleveland
task: diagnosis
train: processed.cleveland.data
test: null
split: {test_fraction: 0.25, seed: 43, stratify: true}
csv: {header: false, delimiter: ",", missing: ["?"], encoding: utf-8}
columns: [age, sex, cp, trestbps, chol, fbs, restecg, thalach, exang, oldpeak, slope, ca, thal, num]
rename: {cp: chest_pain, trestbps: resting_bp, chol: cholesterol, fbs: fasting_blood_sugar_high,
         restecg: resting_ecg, thalach: max_heart_rate, exang: exercise_angina,
         oldpeak: st_depression, slope: st_slope, ca: major_vessels}
values:
  sex: {0: female, 1: male}
  cp: {1: typical_angina, 2: atypical_angina, 3: non_anginal, 4: asymptomatic}
  restecg: {0: normal, 1: st_t_abnormality, 2: lv_hypertrophy}
  slope: {1: upsloping, 2: flat, 3: downsloping}
  thal: {3: normal, 6: fixed_defect, 7: reversible_defect}
units: {chol: mmol/L}
target: {column: num, map: {0: 0, 1: 1, 2: 1, 3: 1, 4: 1}}
on_invalid_row: fail
min_cohort: 5
"""


@pytest.fixture
def cleveland(tmp_path: Path) -> Path:
    (tmp_path / "processed.cleveland.data").write_text(CLEVELAND, encoding="utf-8")
    card = tmp_path / "cleveland.yaml"
    card.write_text(CLEVELAND_CARD, encoding="utf-8")
    return card


def test_a_headerless_cleveland_export_maps_onto_the_diagnosis_schema(cleveland: Path) -> None:
    schema = load_task("diagnosis")
    data = read_card_data(load_card(cleveland), schema)
    report = data.report
    assert report.usable, report.errors
    assert (report.rows_read, report.rows_kept, report.train_size, report.test_size) == (
        16,
        16,
        11,
        5,
    )
    rows = pd.concat([data.train, data.test]).sort_values("max_heart_rate")
    first = rows[rows.max_heart_rate == 150].iloc[0]
    assert first.sex == "male" and first.chest_pain == "typical_angina"
    assert first.resting_ecg == "lv_hypertrophy" and first.thal == "fixed_defect"
    assert first.st_slope == "downsloping" and first.fasting_blood_sugar_high == 1.0
    assert first.cholesterol == pytest.approx(6.0 * 38.67)
    assert first.cad == 0
    assert list(data.train.columns) == [*schema.feature_names, "cad"]
    assert data.train.cad.dtype == np.int64 and data.train.sex.dtype == object
    assert report.missing["thal"] == pytest.approx(1 / 16)
    assert report.missing["major_vessels"] == pytest.approx(1 / 16)
    assert rows.thal.isna().sum() == 1 and rows.thal.map(type).eq(str).sum() == 15
    # stratified: round(10 * 0.25) = 3 of the 10 negatives and round(6 * 0.25) = 2 positives
    assert report.classes["train"] == {"no": 7, "yes": 4}
    assert report.classes["test"] == {"no": 3, "yes": 2}


def test_the_split_is_seeded_and_stratified(cleveland: Path) -> None:
    schema = load_task("diagnosis")
    a = read_card_data(load_card(cleveland), schema)
    b = read_card_data(load_card(cleveland), schema)
    pd.testing.assert_frame_equal(a.test, b.test)
    train, test = split_rows(np.array([0] * 30 + [1] * 10), 40, 0.25, seed=1)
    assert len(test) == 11 and len(train) == 29  # 7.5 and 2.5 round half up to 8 and 3
    assert np.isin(test, np.arange(30)).sum() == 8
    assert set(train) | set(test) == set(range(40))


def test_a_card_for_another_task_is_refused(cleveland: Path) -> None:
    with pytest.raises(CardError, match="cleveland.yaml describes data for task 'diagnosis'"):
        check_task(load_card(cleveland), load_task("pricing"))


def test_sites_federation_reads_cards(cleveland: Path) -> None:
    federation = {"name": "sites", "cards": [str(cleveland)], "min_cohort": None}
    assert federation_size(federation) == 1
    site = load_site(load_task("diagnosis"), federation, 0, seed=0)
    assert (site.name, len(site.train), len(site.test)) == ("cleveland", 11, 5)
    with pytest.raises(DataConfigError, match="study's task is 'pricing'"):
        load_site(load_task("pricing"), federation, 0, seed=0)
    with pytest.raises(DataConfigError, match="minimum cohort of 50.*node check"):
        load_site(load_task("diagnosis"), dict(federation, min_cohort=50), 0, seed=0)
    with pytest.raises(DataConfigError, match="needs a list of dataset cards"):
        federation_size({"name": "sites", "cards": []})


NONE_TASK = """\
name: smoking
features:
  - {name: age, type: numeric, unit: years, range: [0, 120]}
  - {name: smoking, type: categorical, categories: ["None", current, former]}
  - {name: smoker_flag, type: binary}
target: {name: outcome, type: binary, classes: ["no", "yes"]}
"""


def test_none_is_a_category_and_only_listed_markers_are_missing(tmp_path: Path) -> None:
    (tmp_path / "smoking.yaml").write_text(NONE_TASK, encoding="utf-8")
    lines = [
        "age,smoking,smoker_flag,outcome",
        "50,None,no,yes",
        "60,?,yes,no",
        "70,current,TRUE,yes",
        "55,Former,,no",
        "45,NA,false,no",
    ]
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "card.yaml").write_text(
        "task: smoking.yaml\ntrain: d.csv\nsplit: {test_fraction: 0}\n"
        "csv: {missing: ['?', 'NA']}\nvalues: {smoking: {Former: former},"
        " smoker_flag: {yes: 1, no: 0, true: 1, false: 0}}\nmin_cohort: 1\n",
        encoding="utf-8",
    )
    card = load_card(tmp_path / "card.yaml")
    assert card.values["smoker_flag"]["yes"] == "1" and card.values["smoker_flag"]["TRUE"] == "1"
    data = read_card_data(card, load_task(tmp_path / "smoking.yaml"))
    assert data.report.usable, data.report.errors
    assert data.train.smoking.tolist() == ["None", None, "current", "former", None]
    assert data.train.smoker_flag.tolist()[:3] == [0.0, 1.0, 1.0]
    assert np.isnan(data.train.smoker_flag[3]) and data.train.smoker_flag[4] == 0.0
    assert data.train.outcome.tolist() == [1, 0, 1, 0, 0]


@pytest.mark.parametrize(
    ("value", "code"),
    [
        (1, "1"),
        (1.0, "1"),
        ("1.0", "1"),
        (" 01 ", "1"),
        ("1.50", "1.5"),
        (True, "true"),
        ("None", "None"),
        ("", ""),
        (float("nan"), None),
        (None, None),
        (np.int64(4), "4"),
    ],
)
def test_canonical_codes(value: object, code: str | None) -> None:
    assert canonical_code(value) == code


@pytest.mark.parametrize(
    ("feature", "local", "unit", "value", "expected"),
    [
        ("cholesterol", "chol", "mmol/L", 5.0, 5.0 * 38.67),
        ("glucose", "glu", "mmol/L", 5.0, 5.0 * 18.016),
        ("temperature", "temp", "F", 98.6, 37.0),
        ("weight", "wt", "lb", 100.0, 45.359237),
        ("height", "ht", "in", 10.0, 25.4),
    ],
)
def test_unit_conversions(
    feature: str, local: str, unit: str, value: float, expected: float
) -> None:
    target = {
        "cholesterol": "mg/dL",
        "glucose": "mg/dL",
        "temperature": "°C",
        "weight": "kg",
        "height": "cm",
    }[feature]
    convert = converter(feature, local, unit, target, "card.yaml")
    assert convert(np.array([value]))[0] == pytest.approx(expected)


def test_an_unknown_conversion_names_the_column_and_both_units() -> None:
    with pytest.raises(
        ValueError,
        match=r"card.yaml: cannot convert column 'cost' from 'EUR' "
        r"to 'USD'",
    ):
        converter("charges", "cost", "EUR", "USD", "card.yaml")
    with pytest.raises(ValueError, match="column 'x' from 'mmol/L' to 'mg/dL'"):
        converter("sodium", "x", "mmol/L", "mg/dL", "card.yaml")


def test_a_bad_unit_is_a_report_error(cleveland: Path) -> None:
    cleveland.write_text(CLEVELAND_CARD.replace("chol: mmol/L", "chol: stones"), encoding="utf-8")
    report = read_card_data(load_card(cleveland), load_task("diagnosis")).report
    assert not report.usable
    assert (
        "cleveland.yaml: cannot convert column 'chol' from 'stones' to 'mg/dL'" in report.errors[0]
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("csv: {header: false, delimiter: ',', quote: x}", r"csv: unknown key\(s\) \['quote'\]"),
        ("csv: {header: false}\ncolumns: null", "csv.header is false, so list"),
        ("on_invalid_row: skip", "on_invalid_row must be drop or fail"),
        ("split: {test_fraction: 1.5}", r"test_fraction must be a number in \[0, 1\)"),
        ("csv: {encoding: klingon}", "unknown encoding 'klingon'"),
        ("target: {column: num, map: []}", "target.map must be a non-empty mapping"),
        ("min_cohort: 0", "min_cohort must be a positive integer"),
        ("colour: blue", r"unknown key\(s\) \['colour'\]"),
    ],
)
def test_card_mistakes_name_the_card_and_the_key(
    cleveland: Path, change: str, message: str
) -> None:
    key = change.split(":")[0]
    kept = [line for line in CLEVELAND_CARD.splitlines() if not line.startswith(key + ":")]
    cleveland.write_text("\n".join(kept) + "\n" + change + "\n", encoding="utf-8")
    with pytest.raises(CardError, match=message) as info:
        load_card(cleveland)
    assert str(cleveland) in str(info.value)


def test_a_rename_to_nowhere_is_an_error(cleveland: Path) -> None:
    cleveland.write_text(CLEVELAND_CARD.replace("cp: chest_pain", "cp: pain"), encoding="utf-8")
    report = read_card_data(load_card(cleveland), load_task("diagnosis")).report
    assert any("rename maps 'cp' to 'pain'" in e and str(cleveland) in e for e in report.errors)


def test_a_multiclass_target_by_class_name_or_index(tmp_path: Path) -> None:
    schema = load_task("treatment")
    labels = ["No", "Steady", "Up", "Down", "2", "7"] * 5
    lines = [
        ",".join([*schema.feature_names, "insulin"]),
        *(
            f"50-70,female,urgent,transfer,3,40,12,7,norm,none,{i},{label}"
            for i, label in enumerate(labels)
        ),
    ]
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "card.yaml").write_text("task: treatment\ntrain: t.csv\n", encoding="utf-8")
    data = read_card_data(load_card(tmp_path / "card.yaml"), schema)
    assert data.report.dropped == {"invalid target": 5}
    assert data.report.dropped_rows["invalid target"] == [
        (str(tmp_path / "t.csv"), 7 + 6 * k) for k in range(5)
    ]
    assert sorted(pd.concat([data.train, data.test]).insulin.tolist()) == sorted(
        [0, 1, 2, 3, 2] * 5
    )


def test_a_continuous_target_and_parquet_input(tmp_path: Path) -> None:
    schema = load_task("pricing")
    n = 30
    frame = pd.DataFrame(
        {
            "age": np.arange(20, 20 + n),
            "sex": ["female", "male"] * (n // 2),
            "bmi": np.linspace(18, 40, n),
            "children": [0, 1, None] * (n // 3),
            "smoker": [True, False, False] * (n // 3),
            "region": ["northeast", "southwest", "southeast"] * (n // 3),
            "cost": np.linspace(1000, 30000, n),
        }
    )
    frame.loc[3, "cost"] = -5.0
    frame.to_parquet(tmp_path / "p.parquet")
    (tmp_path / "card.yaml").write_text(
        "task: pricing\ntrain: p.parquet\ntarget: {column: cost}\n", encoding="utf-8"
    )
    data = read_card_data(load_card(tmp_path / "card.yaml"), schema)
    report = data.report
    assert report.usable, report.errors
    assert report.dropped == {"invalid target": 1}
    assert report.dropped_rows["invalid target"] == [(str(tmp_path / "p.parquet"), 4)]
    assert (report.train_size, report.test_size) == (22, 7)
    assert report.missing["children"] == pytest.approx(10 / 29)
    assert set(data.train.smoker.dropna()) <= {0.0, 1.0}
    assert data.train.charges.dtype == np.float64
    assert 1000 <= report.target_range["min"] <= report.target_range["max"] <= 30000


def test_columns_that_do_not_fit_a_headerless_file(cleveland: Path) -> None:
    cleveland.write_text(
        CLEVELAND_CARD.replace("thal, num]", "thal, num, extra]"), encoding="utf-8"
    )
    with pytest.raises(
        CardError,
        match=r"processed.cleveland.data: no data row has the 15 fields "
        r"the card's columns name \(row 1 has 14\)",
    ):
        read_card_data(load_card(cleveland), load_task("diagnosis"))


def test_tab_separated_with_a_trailing_delimiter(cleveland: Path) -> None:
    data = cleveland.parent / "processed.cleveland.data"
    data.write_text(CLEVELAND.replace(",", "\t").replace("\n", "\t\n"), encoding="utf-8")
    cleveland.write_text(
        CLEVELAND_CARD.replace('delimiter: ","', 'delimiter: "\\t"'), encoding="utf-8"
    )
    report = read_card_data(load_card(cleveland), load_task("diagnosis")).report
    assert report.usable, report.errors
    assert report.rows_kept == 16
