"""Reading exports: every line accounted for, broken quoting contained, files that are not what
the card says named precisely, local number formats, train/test overlap."""

from __future__ import annotations

import codecs
import gzip
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medfed.models.ingest.accounting import check_lines
from medfed.models.ingest.cards import CardError, load_card, read_card_data
from medfed.models.ingest.validation import ValidationReport
from medfed.models.schema import load_task

HEADER = "age,sex,cholesterol,cad"
TASK = """name: tiny
features:
  - {name: age, type: numeric, unit: years, range: [0, 120]}
  - {name: sex, type: categorical, categories: [female, male]}
  - {name: cholesterol, type: numeric, unit: mg/dL, range: [50, 1200]}
target: {name: cad, type: binary, classes: ["no", "yes"]}
model: {family: logreg, loss: bce}
metrics: [accuracy]
"""


def good(i: int) -> str:
    return f"{20 + i % 60},{['female', 'male'][i % 2]},{150 + i},{['no', 'yes'][i // 2 % 2]}"


def write(folder: Path, data: str | bytes, card: str = "", name: str = "data.csv") -> Path:
    (folder / "tiny.yaml").write_text(TASK, encoding="utf-8")
    target = folder / name
    if isinstance(data, bytes):
        target.write_bytes(data)
    else:
        target.write_text(data, encoding="utf-8", newline="")
    path = folder / "card.yaml"
    path.write_text(
        f"name: a\ntask: tiny.yaml\ntrain: {name}\nmin_cohort: 1\n"
        f"split: {{test_fraction: 0.25, seed: 1}}\n{card}",
        encoding="utf-8",
    )
    return path


def report_of(card: Path) -> ValidationReport:
    loaded = load_card(card)
    return read_card_data(loaded, load_task(str(card.parent / "tiny.yaml"))).report


def accounted(report: ValidationReport) -> None:
    assert report.unaccounted() == 0
    assert report.rows_kept + sum(report.dropped.values()) == report.rows_read


def test_a_stray_quote_costs_its_own_line_only(tmp_path: Path) -> None:
    lines = [HEADER, *(good(i) for i in range(10))]
    lines[3] = '22,"male,180,no'  # never closed: csv.reader would swallow every later row
    lines[6] = '23,fe"male",181,no'  # inside a field: kept as text, an unknown category
    report = report_of(write(tmp_path, "\n".join(lines) + "\n"))
    accounted(report)
    assert (report.lines_read, report.rows_kept) == (10, 8)
    assert report.dropped == {"stray or unbalanced quote": 1, "unknown category": 1}
    assert any("row 4: a stray or unbalanced quote" in w for w in report.warnings)


def test_a_line_break_inside_quotes_is_one_row_and_blank_lines_are_counted(tmp_path: Path) -> None:
    lines = [HEADER, good(0), "", '41,"ma', 'le",190,yes', "  ,  ,,", good(1)]
    report = report_of(write(tmp_path, "\r\n".join(lines)))
    accounted(report)
    assert (report.lines_read, report.rows_kept, report.blank_lines, report.continuation_lines) == (
        6,
        2,
        2,
        1,
    )
    assert report.dropped == {"unknown category": 1}  # "ma\nle" is no category
    assert any("(4) hold a line break" in n for n in report.notes)


def test_a_ragged_row_is_reported_with_its_line(tmp_path: Path) -> None:
    lines = [HEADER, good(0), "30,male,200,no,extra", good(1), "31,male"]
    report = report_of(write(tmp_path, "\n".join(lines)))
    accounted(report)
    assert report.dropped == {"wrong number of fields": 2}
    assert any("2 rows (3, 5)" in w for w in report.warnings)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    kinds=st.lists(
        st.sampled_from(["good", "blank", "quote", "ragged", "multi", "text"]),
        min_size=1,
        max_size=40,
    )
)
def test_every_line_is_accounted_for(tmp_path: Path, kinds: list[str]) -> None:
    pieces = {
        "good": good(7),
        "blank": "",
        "quote": '1,"x,2,no',
        "ragged": "1,male",
        "multi": '50,"fe\nmale",200,no',
        "text": "50,male,lots,no",
    }
    body = [pieces[k] for k in kinds]
    report = report_of(write(tmp_path, "\n".join([HEADER, *body, good(3)]) + "\n"))
    accounted(report)
    assert report.rows_kept == kinds.count("good") + 1
    assert report.lines_read == len(body) + 1 + kinds.count("multi")


@pytest.mark.parametrize("bom", [True, False])
@pytest.mark.parametrize("codec", ["utf-16-le", "utf-16-be"])
def test_utf16_is_read_with_or_without_a_byte_order_mark(
    tmp_path: Path, codec: str, bom: bool
) -> None:
    text = "\n".join([HEADER, *(good(i) for i in range(6))]) + "\n"
    mark = {"utf-16-le": codecs.BOM_UTF16_LE, "utf-16-be": codecs.BOM_UTF16_BE}[codec]
    report = report_of(write(tmp_path, (mark if bom else b"") + text.encode(codec)))
    assert report.rows_kept == 6 and report.usable
    expected = "csv.encoding: utf-16" if bom else f"csv.encoding: {codec}"
    assert any(expected in n for n in report.notes)


def test_gzip_is_read_whatever_its_name(tmp_path: Path) -> None:
    text = "\n".join([HEADER, *(good(i) for i in range(6))]) + "\n"
    report = report_of(write(tmp_path, gzip.compress(text.encode())))
    assert report.rows_kept == 6 and any("gzip" in n for n in report.notes)


def _xlsx() -> bytes:
    path = Path("/tmp") / "medfed-test.xlsx"
    with zipfile.ZipFile(path, "w") as book:
        book.writestr("[Content_Types].xml", "<Types/>")
        book.writestr("xl/workbook.xml", "<workbook>Zebulon</workbook>")
    data = path.read_bytes()
    path.unlink()
    return data


@pytest.mark.parametrize(
    ("data", "name", "phrase"),
    [
        (_xlsx(), "data.csv", "is an Excel workbook (.xlsx), not CSV text; export it"),
        (
            b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0Zebulon" * 64,
            "data.csv",
            "is an Excel 97-2003 workbook (.xls), not CSV text",
        ),
        (
            b"PAR1\x15\x04Zebulon" + b"\0" * 64,
            "data.csv",
            "is a Parquet file, not CSV text; rename",
        ),
        (b"age,sex\n" + b"Zebulon\x00\x01\x02\n" * 4, "data.csv", "holds binary data"),
        (f"{HEADER}\n{good(1)}\n".encode(), "data.parquet", "not a Parquet file"),
        (gzip.compress(b"Zebulon", mtime=0)[:12], "data.csv", "damaged gzip file"),
    ],
    ids=["xlsx", "xls", "parquet-named-csv", "binary", "csv-named-parquet", "damaged-gzip"],
)
def test_a_file_that_is_not_what_the_card_says(
    tmp_path: Path, data: bytes, name: str, phrase: str
) -> None:
    with pytest.raises(CardError, match=phrase.replace("(", r"\(").replace(")", r"\)")) as info:
        report_of(write(tmp_path, data, name=name))
    assert "Zebulon" not in str(info.value) and "\\x" not in str(info.value)
    assert "\n" not in str(info.value)


def test_decimal_commas_and_thousands_separators(tmp_path: Path) -> None:
    data = (
        'age;sex;cholesterol;cad\n"45,5";male;1.002,5;no\n50;female;"210,25";yes\n'
        "51;female;210.5;yes\n"
    )
    card = write(tmp_path, data, 'csv: {delimiter: ";", decimal: ",", thousands: "."}\n')
    card.write_text(card.read_text().replace("0.25", "0"), encoding="utf-8")
    data = read_card_data(load_card(card), load_task(str(tmp_path / "tiny.yaml")))
    assert data.train["age"].tolist() == [45.5, 50.0, 51.0]
    assert data.train["cholesterol"].tolist() == [1002.5, 210.25, 210.5]  # 210.5: not grouped
    assert not data.report.dropped


def test_a_bad_number_format_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(CardError, match="thousands must be one of .* not the decimal mark"):
        load_card(write(tmp_path, HEADER, 'csv: {decimal: ",", thousands: ","}\n'))


def test_a_test_file_sharing_rows_with_the_training_file(tmp_path: Path) -> None:
    train = "\n".join([HEADER, *(good(i) for i in range(20))]) + "\n"
    (tmp_path / "test.csv").write_text(
        "sex,age,cholesterol,cad\n"
        + "\n".join(
            f"{['female', 'male'][i % 2]},{20 + i % 60},{150 + i},{['no', 'yes'][i // 2 % 2]}"
            for i in range(15, 25)
        )
        + "\n",
        encoding="utf-8",
    )
    report = report_of(write(tmp_path, train, "test: test.csv\n"))
    assert any(
        "test.csv shares 5 of its 10 rows with the training file" in w for w in report.warnings
    )
    (tmp_path / "test.csv").write_text(train, encoding="utf-8")
    report = report_of(tmp_path / "card.yaml")
    assert any("test.csv holds the same rows as the training file" in w for w in report.warnings)


def test_chunks_merge_into_one_message_per_problem(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("medfed.models.ingest.tables.CHUNK_ROWS", 7)
    lines = [HEADER, *(good(i) for i in range(30))]
    for line in (3, 12, 25):
        lines[line] = f"{line},male,Zebulon,no"
    lines[20] = lines[5]  # a duplicate across chunks
    report = report_of(write(tmp_path, "\n".join(lines) + "\n"))
    accounted(report)
    problems = [w for w in report.warnings if "text where a number" in w]
    assert len(problems) == 1 and "3 rows (4, 13, 26)" in problems[0]
    assert any("row 21 repeats row 6" in w for w in report.warnings)
    assert report.cell_values[problems[0]] == ["Zebulon"]
    assert not any("Zebulon" in m for m in report.warnings + report.errors + report.notes)


def test_read_card_data_frames_match_a_single_chunk(tmp_path: Path, monkeypatch) -> None:
    card = write(tmp_path, "\n".join([HEADER, *(good(i) for i in range(40))]) + "\n")
    whole = read_card_data(load_card(card), load_task(str(tmp_path / "tiny.yaml")))
    monkeypatch.setattr("medfed.models.ingest.tables.CHUNK_ROWS", 3)
    chunked = read_card_data(load_card(card), load_task(str(tmp_path / "tiny.yaml")))
    pd.testing.assert_frame_equal(whole.train, chunked.train)
    pd.testing.assert_frame_equal(whole.test, chunked.test)


def test_a_header_that_is_a_patient_row_is_refused_without_echoing_it(tmp_path: Path) -> None:
    data = "63,male,Zebulon Quackenbush,no\n" + "\n".join(good(i) for i in range(5)) + "\n"
    with pytest.raises(
        CardError,
        match=r"row 1: none of the header's 4 names .* csv.header: "
        "false",
    ) as info:
        report_of(write(tmp_path, data))
    assert "Zebulon" not in str(info.value) and "63" not in str(info.value)


def test_a_line_not_accounted_for_is_an_error() -> None:
    report = ValidationReport(
        card="card.yaml",
        lines_read=10,
        rows_read=9,
        rows_kept=8,
        dropped={"out of range": 1},
        blank_lines=0,
    )
    check_lines(report)
    assert report.errors == [
        "card.yaml: 1 of 10 data lines are neither kept, dropped, blank nor "
        "part of a multi-line row; the data cannot be trusted: please "
        "report it"
    ]


def test_a_repeated_header_name_is_named_by_position(tmp_path: Path) -> None:
    data = "63,male,Zebulon,male\n" + "\n".join(good(i) for i in range(5)) + "\n"
    with pytest.raises(
        CardError,
        match=r"row 1: the header repeats a column name \(columns 2, "
        r"4\)",
    ) as info:
        report_of(write(tmp_path, data))
    assert "male" not in str(info.value).split("columns 2, 4")[0].split("data.csv")[1]


def test_a_test_file_that_is_the_training_file(tmp_path: Path) -> None:
    report = report_of(
        write(
            tmp_path, "\n".join([HEADER, *(good(i) for i in range(8))]) + "\n", "test: data.csv\n"
        )
    )
    assert [w for w in report.warnings if "repeat" in w] == []
    assert any("data.csv holds the same rows as the training file" in w for w in report.warnings)
