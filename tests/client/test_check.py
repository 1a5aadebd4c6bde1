"""`medfed node check`: one clear message per bad input (file, row, column), never a traceback."""

from __future__ import annotations

import codecs
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from medfed.client.commands.check import check_dataset, node_main
from medfed.models.ingest.export import export_synthetic, synth_main
from medfed.models.ingest.sources import federation_size, load_site
from medfed.models.schema import load_task

HEADER = [
    "age",
    "sex",
    "chest_pain",
    "resting_bp",
    "cholesterol",
    "fasting_blood_sugar_high",
    "resting_ecg",
    "max_heart_rate",
    "exercise_angina",
    "st_depression",
    "cad",
]
PAIN = ["typical_angina", "atypical_angina", "non_anginal", "asymptomatic"]
ECG = ["normal", "st_t_abnormality", "lv_hypertrophy"]
CARD = "name: site-a\ntask: diagnosis\ntrain: data.csv\nsplit: {test_fraction: 0.25, seed: 1}\n"


def good_row(i: int) -> list[str]:
    """A valid, unique diagnosis row; the target alternates in pairs."""
    return [
        str(40 + i % 30),
        ["female", "male"][i % 2],
        PAIN[i % 4],
        str(120 + i % 30),
        str(200 + i),
        str(i % 2),
        ECG[i % 3],
        str(140 + i % 40),
        str(i // 2 % 2),
        f"{i % 5 / 2:.1f}",
        str(i // 3 % 2),
    ]


def rows(n: int = 40) -> list[list[str]]:
    return [HEADER, *(good_row(i) for i in range(n))]


def csv_text(table: list[list[str]], sep: str = ",", newline: str = "\n") -> str:
    return newline.join(sep.join(r) for r in table) + newline


Site = Callable[..., Path]


@pytest.fixture
def site(tmp_path: Path) -> Site:
    """Write ``data.csv`` (text or bytes) and a card (CARD + ``extra``); return the card path."""

    def write(data: str | bytes | None = None, extra: str = "", card: str | None = None) -> Path:
        data = csv_text(rows()) if data is None else data
        target = tmp_path / "data.csv"
        if isinstance(data, bytes):
            target.write_bytes(data)
        else:
            target.write_text(data, encoding="utf-8", newline="")
        path = tmp_path / "card.yaml"
        path.write_text((CARD if card is None else card) + extra, encoding="utf-8")
        return path

    return write


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """Run `medfed node ...` in-process; the output must never hold a traceback."""
    code = node_main(list(argv))
    out = capsys.readouterr()
    text = out.out + out.err
    assert "Traceback" not in text
    return code, text


def check(capsys: pytest.CaptureFixture[str], card: Path, *extra: str) -> tuple[int, str]:
    return run(capsys, "check", "--dataset", str(card), *extra)


def line_with(text: str, *needles: str) -> str:
    """The one output line that holds every needle."""
    found = [line for line in text.splitlines() if all(n in line for n in needles)]
    assert found, f"no line holds {needles} in:\n{text}"
    return found[0]


def test_a_clean_export_is_usable(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = check(capsys, site())
    assert code == 0
    assert "read 40, kept 40, dropped 0" in out
    assert "train 30 rows, test 10 rows" in out
    assert "result: usable" in out
    assert "error:" not in out and "warning:" not in out


def test_empty_file(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = check(capsys, site(""))
    assert code == 2
    assert "data.csv is empty" in line_with(out, "error:")


def test_header_only(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = check(capsys, site(csv_text(rows(0))))
    assert code == 2
    assert "data.csv has a header row but no data rows" in out


def test_wrong_delimiter(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = check(capsys, site(csv_text(rows(), sep=";")))
    assert code == 2
    line = line_with(out, "data.csv row 1")
    assert "csv.delimiter: ';'" in line


def test_missing_required_column(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    table = [r[:4] + r[5:] for r in rows()]
    code, out = check(capsys, site(csv_text(table)))
    assert code == 1
    assert "data.csv" in line_with(out, "error:", "required column 'cholesterol'")


def test_unknown_extra_column_is_a_warning(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    table = [r + [("ward" if i == 0 else "B")] for i, r in enumerate(rows())]
    code, out = check(capsys, site(csv_text(table)))
    assert code == 0
    assert "data.csv" in line_with(out, "warning:", "ignored 1 column the task does not use: ward")


def test_text_in_a_numeric_column(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    table = rows()
    table[5][0] = "fifty"
    code, out = check(capsys, site(csv_text(table)))
    assert code == 0
    line = line_with(out, "warning:", "data.csv row 6, column 'age'")
    assert "text where a number is expected" in line and "dropped" in line
    assert "fifty" not in out
    code, out = check(capsys, site(csv_text(table), extra="on_invalid_row: fail\n"))
    assert code == 1
    assert "set on_invalid_row: drop" in line_with(out, "error:", "row 6, column 'age'")


def test_out_of_range_values(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    table = rows()
    table[2][0] = "-3"
    table[7][3] = "999"
    code, out = check(capsys, site(csv_text(table)))
    assert code == 0
    assert "[18, 100] years" in line_with(out, "data.csv row 3, column 'age'", "outside")
    assert "[70, 250] mmHg" in line_with(out, "data.csv row 8, column 'resting_bp'", "outside")
    assert "read 40, kept 38, dropped 2" in out
    assert "out of range: 2" in out


def test_unknown_category_code(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    table = rows()
    table[4][2] = "9"
    code, out = check(capsys, site(csv_text(table)))
    assert code == 0
    line = line_with(out, "data.csv row 5, column 'chest_pain'")
    assert "unknown code(s) for 'chest_pain'" in line and "values.chest_pain" in line
    assert "'9'" not in out


def test_a_column_that_is_all_missing(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    table = [r[:4] + ([r[4]] if i == 0 else [""]) + r[5:] for i, r in enumerate(rows())]
    code, out = check(capsys, site(csv_text(table)))
    assert code == 1
    assert "data.csv" in line_with(out, "error:", "column 'cholesterol' is missing in every")


def test_a_training_split_with_a_single_class(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    table = [r[:-1] + ["0"] if i else r for i, r in enumerate(rows())]
    code, out = check(capsys, site(csv_text(table)))
    assert code == 1
    assert "data.csv" in line_with(out, "error:", "single class")


def test_duplicated_rows_are_a_warning(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    table = rows()
    table.insert(12, list(table[3]))
    code, out = check(capsys, site(csv_text(table)))
    assert code == 0
    assert "row 13 repeats row 4" in line_with(out, "warning:", "data.csv", "repeat")


def test_latin1_bytes_in_a_utf8_file(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    table = rows()
    table[3][6] = "normal\xe9"
    code, out = check(capsys, site(csv_text(table).encode("latin-1")))
    assert code == 2
    line = line_with(out, "data.csv row 4, column 'resting_ecg'")
    assert "0xe9" in line and "csv.encoding" in line


def test_windows_line_endings(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = check(capsys, site(csv_text(rows(), newline="\r\n")))
    assert code == 0
    assert "data.csv" in line_with(out, "note:", "CRLF")
    assert "kept 40" in out and "warning:" not in out


def test_a_byte_order_mark(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = check(capsys, site(codecs.BOM_UTF8 + csv_text(rows()).encode()))
    assert code == 0
    assert "data.csv" in line_with(out, "note:", "byte-order mark")
    assert "kept 40" in out and "warning:" not in out


@pytest.mark.parametrize("value", ["inf", "1e308", "-Infinity"])
def test_inf_or_a_huge_number(site: Site, capsys: pytest.CaptureFixture[str], value: str) -> None:
    table = rows()
    table[9][9] = value
    code, out = check(capsys, site(csv_text(table)))
    assert code == 0
    assert "too large" in line_with(out, "data.csv row 10, column 'st_depression'")


def test_a_missing_target(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    table = rows()
    table[11][-1] = ""
    code, out = check(capsys, site(csv_text(table)))
    assert code == 0
    assert "target 'cad' is missing" in line_with(out, "data.csv row 12, column 'cad'")
    assert "missing target: 1" in out


def test_a_cohort_below_the_minimum(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = check(capsys, site(csv_text(rows(20))))
    assert code == 1
    assert "data.csv" in line_with(out, "error:", "15 valid rows", "minimum cohort of 20")
    code, out = check(capsys, site(csv_text(rows(20))), "--min-cohort", "10")
    assert code == 0


def test_a_parquet_column_of_the_wrong_dtype(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frame = pd.DataFrame(rows()[1:], columns=HEADER)
    for name in (
        "resting_bp",
        "cholesterol",
        "max_heart_rate",
        "st_depression",
        "cad",
        "fasting_blood_sugar_high",
        "exercise_angina",
    ):
        frame[name] = frame[name].astype(float)
    frame.to_parquet(tmp_path / "data.parquet")
    card = tmp_path / "card.yaml"
    card.write_text("task: diagnosis\ntrain: data.parquet\n", encoding="utf-8")
    code, out = check(capsys, card)
    assert code == 1
    line = line_with(out, "error:", "data.parquet column 'age'")
    assert "Parquet type" in line and "int or float" in line
    frame["age"] = frame["age"].astype(int)
    frame.to_parquet(tmp_path / "data.parquet")
    assert check(capsys, card)[0] == 0


def test_a_card_pointing_to_a_missing_file(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    card = site(card=CARD.replace("data.csv", "nowhere.csv"))
    code, out = check(capsys, card)
    assert code == 2
    assert "nowhere.csv does not exist" in line_with(out, "error:")


def test_a_yaml_syntax_error_in_the_card(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    card = site(extra="csv: {header: true\nunits: [\n")
    code, out = check(capsys, card)
    assert code == 2
    line = line_with(out, "error:", "card.yaml", "not valid YAML")
    assert "line 6" in line


def test_an_unknown_task(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = check(capsys, site(card=CARD.replace("diagnosis", "dermatology")))
    assert code == 2
    assert "task 'dermatology'" in line_with(out, "error:", "card.yaml")
    code, out = check(capsys, site(), "--task", "pricing")
    assert code == 2
    assert "'pricing'" in line_with(out, "error:", "card.yaml", "diagnosis")


def test_an_unknown_card_key(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = check(capsys, site(extra="delimiter: ';'\n"))
    assert code == 2
    assert "['delimiter']" in line_with(out, "error:", "card.yaml", "unknown key")


def test_check_dataset_returns_the_status_and_the_report(site: Site) -> None:
    code, text = check_dataset(site(), task="diagnosis", min_cohort=50)
    assert code == 1
    assert "minimum cohort of 50" in text


def test_bad_arguments_give_usage_not_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "check")[0] == 2
    assert run(capsys, "check", "--dataset", "x.yaml", "--min-cohort", "0")[0] == 2
    assert run(capsys, "start")[0] == 2


def test_synthetic_export_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = synth_main(["export", "--task", "diagnosis", "--hospitals", "4", str(tmp_path)])
    assert code == 0
    cards = sorted(tmp_path.glob("*.yaml"))
    assert [c.name for c in cards] == [f"hospital-{i}.yaml" for i in range(4)]
    capsys.readouterr()
    for card in cards:
        assert check(capsys, card)[0] == 0
    federation = {"name": "sites", "cards": [str(c) for c in cards]}
    schema = load_task("diagnosis")
    assert federation_size(federation) == 4
    for i in range(len(cards)):
        loaded = load_site(schema, federation, i, seed=0)
        assert loaded.name == f"hospital-{i}"
        for part, frame in (("train", loaded.train), ("test", loaded.test)):
            assert len(frame) == len(pd.read_csv(tmp_path / f"hospital-{i}-{part}.csv"))
        assert loaded.test_oracle is None


def test_export_synthetic_returns_the_cards(tmp_path: Path) -> None:
    cards = export_synthetic("pricing", 2, tmp_path / "out", seed=3)
    assert cards == [tmp_path / "out" / "hospital-0.yaml", tmp_path / "out" / "hospital-1.yaml"]
    assert all(check_dataset(c)[0] == 0 for c in cards)


def test_every_line_is_accounted_for_in_the_report(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    table = rows()
    table[5][6] = '"st_t_\nabnormality"'  # a line break inside quotes: one row (an unknown code)
    text = csv_text(table).replace("\n" + ",".join(table[9]), "\n\n" + ",".join(table[9]))
    code, out = check(capsys, site(text.replace(",".join(table[20]), '1,"2,3')))
    assert code == 0
    assert "lines     42 data lines = 38 kept + 2 dropped + 1 blank + 1 inside quoted fields" in out
    assert "unknown category: 1, stray or unbalanced quote: 1" in out
    assert "data.csv" in line_with(out, "note:", "(6) hold a line break inside a quoted field")
    assert "data.csv" in line_with(out, "warning:", "row 23: a stray or unbalanced quote")


def test_an_unexpected_error_text_is_shown_only_with_show_values(
    site: Site, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("could not convert string to float: 'Zebulon Quackenbush'")

    monkeypatch.setattr("medfed.client.commands.check.read_card_data", broken)
    card = site()
    code, out = check(capsys, card)
    assert code == 2 and "Zebulon" not in out
    assert "ValueError: text withheld" in line_with(out, "error:", "unexpected problem")
    code, out = check(capsys, card, "--show-values")
    assert code == 2 and "'Zebulon Quackenbush'" in out
