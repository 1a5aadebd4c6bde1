"""The derived-column expression language: parsing, types, whole-column evaluation, errors."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from medfed.models.ingest.derive import DATE, NUMBER, DeriveError, as_days, evaluate, inputs, parse

NAN = math.nan


def run(text: str, **columns: list[float]) -> list[float]:
    values = evaluate(parse(text), {k: np.asarray(v, dtype=float) for k, v in columns.items()})
    return np.broadcast_to(values, (len(next(iter(columns.values()))),)).tolist()


def same(got: list[float], expected: list[float]) -> bool:
    return all(
        (math.isnan(g) and math.isnan(e)) or g == pytest.approx(e)
        for g, e in zip(got, expected, strict=True)
    )


def test_sum_of_three_columns_by_hand() -> None:
    got = run(
        "number_outpatient + number_emergency + number_inpatient",
        number_outpatient=[1, 0, 2],
        number_emergency=[0, 3, 1],
        number_inpatient=[2, 1, 0],
    )
    assert got == [3, 4, 3]


def test_precedence_parentheses_and_unary_minus() -> None:
    assert run("a + b * 2", a=[1], b=[3]) == [7]
    assert run("(a + b) * 2", a=[1], b=[3]) == [8]
    assert run("-a - -b", a=[1], b=[3]) == [2]
    assert run("a / b / 2", a=[8], b=[2]) == [2]


def test_functions_by_hand() -> None:
    assert run("min(a, b, 5)", a=[1, 9], b=[4, 7]) == [1, 5]
    assert run("max(a, b)", a=[1, 9], b=[4, 7]) == [4, 9]
    assert run("clip(a, 0, 10)", a=[-3, 4, 12]) == [0, 4, 10]
    assert same(run("log1p(a)", a=[0, math.e - 1, -2]), [0, 1, NAN])


def test_comparisons_give_one_or_zero_and_keep_missing() -> None:
    assert same(run("a >= 120", a=[119, 120, NAN]), [0, 1, NAN])
    assert same(run("a != b", a=[1, 2], b=[1, 3]), [0, 1])


def test_missing_propagates_and_division_by_zero_is_missing() -> None:
    assert same(run("a + b", a=[1, NAN], b=[2, 2]), [3, NAN])
    assert same(run("a / b", a=[1, 1], b=[0, 4]), [NAN, 0.25])


def test_date_difference_in_days() -> None:
    admitted = as_days(np.array(["2021-01-30", "2021-02-27", None], dtype=object))
    discharged = as_days(np.array(["2021-02-02", "2021-03-01", "2021-03-01"], dtype=object))
    for text in (
        "days(discharge_date - admission_date)",
        "days_between(admission_date, discharge_date)",
    ):
        got = evaluate(parse(text), {"admission_date": admitted, "discharge_date": discharged})
        assert same(got.tolist(), [3, 2, NAN])


def test_inputs_know_which_columns_are_dates() -> None:
    tree = parse("days(out - in) + `prior visits` * 2")
    assert inputs(tree) == {"out": DATE, "in": DATE, "prior visits": NUMBER}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a +", "expected 'a value' but found the end"),
        ("a $ b", "cannot read '$ b' (character 3)"),
        ("sqrt(a)", "unknown function sqrt()"),
        ("clip(a, 1)", "clip() takes 3 argument(s), got 2"),
        ("log1p(a, b)", "log1p() takes 1 argument(s), got 2"),
        ("a b", "unexpected 'b' after a complete expression"),
        ("days(a + b)", "type error: days() takes a difference of two date columns"),
        ("days(a - 3)", "type error: a date difference takes two date columns"),
        ("", "it is empty"),
    ],
)
def test_bad_expressions_are_one_line_naming_the_expression(text: str, message: str) -> None:
    with pytest.raises(DeriveError) as err:
        parse(text)
    assert message in str(err.value)
    assert f"expression {text!r}" in str(err.value)
    assert "\n" not in str(err.value)


def test_no_python_eval_names_are_just_columns() -> None:
    tree = parse("__import__ + os")
    assert inputs(tree) == {"__import__": NUMBER, "os": NUMBER}


@given(
    st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=20),
    st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=20),
)
def test_arithmetic_matches_numpy(a: list[float], b: list[float]) -> None:
    n = min(len(a), len(b))
    x, y = np.array(a[:n]), np.array(b[:n])
    got = evaluate(parse("max(a, b) - min(a, b) + a * 2"), {"a": x, "b": y})
    np.testing.assert_allclose(got, np.maximum(x, y) - np.minimum(x, y) + x * 2)


def test_as_days_reads_iso_dates_times_time_zones_and_leaves_the_rest_missing() -> None:
    cells = np.array(
        [
            "1970-01-11",
            "1970-01-11T12:00",
            "01/03/1970",
            "soon",
            None,
            pd.Timestamp("1970-01-11 01:00", tz="Europe/Paris"),
        ],
        dtype=object,
    )
    assert same(as_days(cells).tolist(), [10, 10.5, 2, NAN, NAN, 10])
