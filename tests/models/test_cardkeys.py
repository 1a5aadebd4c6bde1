"""The card keys for real multi-centre exports: column_missing, derive (+ fill), drop, role.

Each key: what it does on a small hand-made export, and a bad value with its one-line message.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medfed.models.ingest.cards import CardError, load_card, read_card_data
from medfed.models.schema import load_task

HEADER = "age,sex,cp,bp,chol,fbs,ecg,hr,angina,st_raw,vessels,cad"
BASE = """\
name: site
task: diagnosis
train: data.csv
split: {test_fraction: 0.25, seed: 1}
rename: {cp: chest_pain, bp: resting_bp, chol: cholesterol, fbs: fasting_blood_sugar_high,
         ecg: resting_ecg, hr: max_heart_rate, angina: exercise_angina, vessels: major_vessels,
         st_raw: st_depression}
values: {sex: {F: female, M: male}, cp: {1: typical_angina, 2: atypical_angina, 3: non_anginal,
         4: asymptomatic}, ecg: {0: normal, 1: st_t_abnormality, 2: lv_hypertrophy}}
"""
DIAGNOSIS = load_task("diagnosis")
DERIVING = BASE.replace(",\n         st_raw: st_depression}", "}")


def _rows(n: int = 32, single_class: bool = False) -> list[list[str]]:
    rows = []
    for i in range(n):
        cad = 0 if single_class else i % 2
        rows.append(
            [
                str(40 + i),
                "FM"[i % 2],
                str(1 + i % 4),
                str(120 + i),
                str(200 + i),
                str(i % 2),
                str(i % 3),
                str(150 + i),
                str((i + 1) % 2),
                str(i % 10),
                str(i % 4),
                str(cad),
            ]
        )
    return rows


def write(
    tmp_path: Path, card: str = BASE, rows: list[list[str]] | None = None, header: str = HEADER
) -> Path:
    lines = [header] + [",".join(r) for r in (rows if rows is not None else _rows())]
    (tmp_path / "data.csv").write_text("\n".join(lines) + "\n")
    path = tmp_path / "site.yaml"
    path.write_text(card)
    return path


def read(path: Path):
    return read_card_data(load_card(path), DIAGNOSIS)


def with_zero_cholesterol() -> list[list[str]]:
    rows = _rows()
    for i in (0, 1, 2):
        rows[i][4] = "0"
    return rows


# -- column_missing ---------------------------------------------------------------------------


def test_column_missing_turns_a_columns_zero_into_missing_before_the_range_check(
    tmp_path: Path,
) -> None:
    without = read(write(tmp_path, BASE, with_zero_cholesterol())).report
    assert without.rows_kept == 29 and without.out_of_range["cholesterol"] == 3

    report = read(
        write(tmp_path, BASE + "column_missing: {chol: [0]}\n", with_zero_cholesterol())
    ).report
    assert report.rows_kept == 32 and report.out_of_range["cholesterol"] == 0
    assert report.missing["cholesterol"] == pytest.approx(3 / 32)
    assert report.missing["major_vessels"] == 0  # 0 stays a value in the other columns


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("[chol]", "column_missing must map export column names to lists of codes"),
        ("{chol: []}", "column_missing.chol must be a code or a non-empty list of codes"),
    ],
)
def test_column_missing_bad_value(tmp_path: Path, value: str, message: str) -> None:
    with pytest.raises(CardError, match=message):
        load_card(write(tmp_path, BASE + f"column_missing: {value}\n"))


def test_column_missing_of_an_absent_column_is_one_error(tmp_path: Path) -> None:
    report = read(write(tmp_path, BASE + "column_missing: {chol_mmol: [0]}\n")).report
    assert any("column_missing names column(s) ['chol_mmol'], which" in e for e in report.errors)


# -- derive (+ fill) --------------------------------------------------------------------------


def test_derive_computes_a_feature_from_export_columns(tmp_path: Path) -> None:
    data = read(write(tmp_path, DERIVING + 'derive: {st_depression: "st_raw / 10"}\n'))
    assert data.report.usable
    both = np.concatenate([data.train["st_depression"], data.test["st_depression"]])
    assert sorted(both.tolist()) == sorted(i % 10 / 10 for i in range(32))
    assert not data.report.ignored  # st_raw is used by the expression


def test_derive_is_missing_when_an_input_is_missing_unless_fill(tmp_path: Path) -> None:
    rows = _rows()
    rows[0][9] = ""
    plain = read(write(tmp_path, DERIVING + 'derive: {st_depression: "st_raw / 10"}\n', rows))
    assert plain.report.missing["st_depression"] == pytest.approx(1 / 32)
    filled = read(
        write(
            tmp_path, DERIVING + 'derive: {st_depression: {expr: "st_raw / 10", fill: 0}}\n', rows
        )
    )
    assert filled.report.missing["st_depression"] == 0


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('{st_depression: "st_raw /"}', "derive.st_depression: expression 'st_raw /': expected"),
        ('{st_depression: "sqrt(st_raw)"}', "unknown function sqrt()"),
        ('{st_depression: "days(st_raw + 1)"}', "type error: days() takes a difference"),
        (
            "{st_depression: {expr: st_raw, fill: yes}}",
            "derive.st_depression.fill must be a number",
        ),
        ("{st_depression: {expr: st_raw, default: 0}}", "unknown key(s) ['default']"),
        ("[st_raw]", "derive must map feature names to expressions"),
    ],
)
def test_derive_bad_value(tmp_path: Path, value: str, message: str) -> None:
    with pytest.raises(CardError) as err:
        load_card(write(tmp_path, DERIVING + f"derive: {value}\n"))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_derive_of_an_unknown_column_is_one_card_error(tmp_path: Path) -> None:
    with pytest.raises(CardError) as err:
        read(write(tmp_path, DERIVING + 'derive: {st_depression: "st_mm / 10"}\n'))
    assert str(err.value).startswith(
        f"{tmp_path / 'site.yaml'}: derive.st_depression: expression 'st_mm / 10' uses unknown "
        f"column(s) ['st_mm']; {tmp_path / 'data.csv'} has: age, sex, cp,"
    )


def test_derive_of_a_name_the_task_does_not_have_is_one_error(tmp_path: Path) -> None:
    report = read(write(tmp_path, BASE + 'derive: {bmi: "hr / 2"}\n')).report
    assert report.errors == [
        f"{tmp_path / 'site.yaml'}: derive defines 'bmi', which is not a feature of task "
        "'diagnosis' (features: " + ", ".join(DIAGNOSIS.feature_names) + ")"
    ]


def test_derive_text_in_an_input_drops_the_row_naming_the_column(tmp_path: Path) -> None:
    rows = _rows()
    rows[3][9] = "n/a"
    report = read(
        write(tmp_path, DERIVING + 'derive: {st_depression: "st_raw / 10"}\n', rows)
    ).report
    assert report.rows_kept == 31
    assert any(
        "row 5, column 'st_raw': text where a number is expected" in w for w in report.warnings
    )


# -- drop and the columns the task does not use ----------------------------------------------


def test_unused_columns_are_one_summary_line_and_drop_silences_them(tmp_path: Path) -> None:
    extra = [f"x{k}" for k in range(7)]
    rows = [r + ["1"] * 7 + ["free text"] for r in _rows()]
    header = HEADER + "," + ",".join(extra) + ",notes"
    report = read(write(tmp_path, BASE + "drop: [notes]\n", rows, header)).report
    lines = [w for w in report.warnings if "the task does not use" in w]
    assert lines == [
        f"{tmp_path / 'data.csv'}: ignored 7 columns the task does not use: x0, "
        "x1, x2, x3, x4, ... (list with --verbose)"
    ]
    assert report.ignored == extra


def test_drop_makes_a_feature_column_absent(tmp_path: Path) -> None:
    data = read(write(tmp_path, BASE + "drop: [vessels]\n"))
    assert data.report.usable and "major_vessels" in data.report.absent


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("notes", "drop must be a non-empty list of column names"),
        ("[notes, notes]", "drop names column(s) ['notes'] more than once"),
    ],
)
def test_drop_bad_value(tmp_path: Path, value: str, message: str) -> None:
    with pytest.raises(
        CardError,
        match=message.replace("(", r"\(")
        .replace(")", r"\)")
        .replace("[", r"\[")
        .replace("]", r"\]"),
    ):
        load_card(write(tmp_path, BASE + f"drop: {value}\n"))


def test_drop_of_an_absent_column_is_one_error(tmp_path: Path) -> None:
    report = read(write(tmp_path, BASE + "drop: [notes]\n")).report
    assert any("drop names column(s) ['notes'], which" in e for e in report.errors)


# -- role -------------------------------------------------------------------------------------


def test_a_single_class_training_split_is_told_to_use_role_evaluate(tmp_path: Path) -> None:
    report = read(write(tmp_path, BASE, _rows(single_class=True))).report
    assert not report.usable
    assert report.errors[-1].endswith(
        "; to use its test rows for evaluation only, set role: evaluate in the card"
    )


def test_a_small_cohort_is_told_to_use_role_evaluate(tmp_path: Path) -> None:
    report = read(write(tmp_path, BASE + "min_cohort: 100\n")).report
    assert "fewer than the minimum cohort of 100" in report.errors[-1]
    assert "set role: evaluate in the card" in report.errors[-1]


def test_role_evaluate_makes_such_a_site_usable(tmp_path: Path) -> None:
    card = write(tmp_path, BASE + "role: evaluate\nmin_cohort: 100\n", _rows(single_class=True))
    assert load_card(card).role == "evaluate"
    report = read(card).report
    assert report.usable
    assert sum("fine for an evaluation-only site (role: evaluate)" in n for n in report.notes) == 2


def test_role_defaults_to_train(tmp_path: Path) -> None:
    assert load_card(write(tmp_path)).role == "train"


def test_role_bad_value(tmp_path: Path) -> None:
    with pytest.raises(CardError, match="role must be train or evaluate, got 'test'"):
        load_card(write(tmp_path, BASE + "role: test\n"))


def test_unknown_keys_are_still_errors(tmp_path: Path) -> None:
    with pytest.raises(CardError, match=r"unknown key\(s\) \['derived'\]"):
        load_card(write(tmp_path, BASE + "derived: {}\n"))


def test_the_readme_card_shows_and_parses_every_new_key(tmp_path: Path) -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    block = readme.split("# ward7.yaml, next to ward7_export.csv\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "ward7.yaml"
    path.write_text(block)
    card = load_card(path)
    assert card.column_missing["labs"] >= {"0"} and card.column_missing["n_diag"] >= {"-9"}
    assert card.derive["prior_visits"].fill == 0
    assert card.derive["time_in_hospital"].expr == "days(discharge_date - admission_date)"
    assert card.drop == ("free_text", "ward_phone") and card.role == "train"
