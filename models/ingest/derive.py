"""Derived columns of a dataset card: a tiny expression language evaluated on whole columns.

A card's ``derive`` section defines a schema feature from columns of the export::

    derive:
      prior_visits: "number_outpatient + number_emergency + number_inpatient"
      time_in_hospital: {expr: "days(discharge_date - admission_date)", fill: null}
      lab_ratio: {expr: "clip(hdl / ldl, 0, 10)", fill: 0}

Syntax (numbers and export column names; a name with spaces or symbols is written in backquotes,
```first visit```):

* arithmetic ``+ - * /``, unary ``-``, parentheses; comparisons ``< <= > >= == !=`` give 1 or 0;
* ``min(a, b, ...)``, ``max(a, b, ...)``, ``log1p(x)``, ``clip(x, low, high)``;
* dates: ``days(later - earlier)`` or ``days_between(earlier, later)``: the difference of two date
  columns in days (only there are columns read as dates; any other use of a column reads numbers).

A derived value is missing when any input is missing, unless ``fill`` gives the number that
replaces a missing (numeric) input. A division by zero gives a missing value.

Python's ``eval`` is never used: :func:`parse` turns the text into a tree of :class:`Node` with a
hand-written tokenizer and recursive-descent parser (the language is eight lines of grammar, and a
general expression library would accept far more than a declarative card should), and
:func:`evaluate` walks the tree with numpy. Every error is a :class:`DeriveError` of one line
naming the expression.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

_TOKEN = re.compile(
    r"\s*(?:(?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)|(?P<name>[A-Za-z_]"
    r"[A-Za-z0-9_.]*)|`(?P<quoted>[^`]+)`|(?P<op><=|>=|==|!=|[-+*/<>(),]))"
)
_COMPARE = {
    "<": np.less,
    "<=": np.less_equal,
    ">": np.greater,
    ">=": np.greater_equal,
    "==": np.equal,
    "!=": np.not_equal,
}
_ARITH = {"+": np.add, "-": np.subtract, "*": np.multiply, "/": np.divide}
_ARITY = {
    "min": (2, None),
    "max": (2, None),
    "log1p": (1, 1),
    "clip": (3, 3),
    "days": (1, 1),
    "days_between": (2, 2),
}
NUMBER, DATE = "number", "date"


class DeriveError(ValueError):
    """An expression cannot be parsed or evaluated; the one-line message names it."""


@dataclass(frozen=True)
class Node:
    """One node of an expression tree: ``kind`` is num, col, neg, op or call."""

    kind: str
    value: str | float = ""
    args: tuple[Node, ...] = ()


class _Parser:
    """Recursive descent over: compare := sum [cmp sum]; sum := term {(+|-) term};
    term := unary {(*|/) unary}; unary := -unary | atom; atom := num | name | name(args) | (e)."""

    def __init__(self, text: str) -> None:
        self.text, self.tokens, self.at = text, _tokens(text), 0

    def fail(self, why: str) -> DeriveError:
        return DeriveError(f"expression {self.text!r}: {why}")

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def take(self, op: str | None = None) -> tuple[str, str]:
        token = self.peek()
        if token is None or (op is not None and token != ("op", op)):
            found = "the end" if token is None else repr(token[1])
            raise self.fail(f"expected {op or 'a value'!r} but found {found}")
        self.at += 1
        return token

    def compare(self) -> Node:
        left = self.sum()
        token = self.peek()
        if token and token[0] == "op" and token[1] in _COMPARE:
            self.take()
            return Node("op", token[1], (left, self.sum()))
        return left

    def sum(self) -> Node:
        node = self.term()
        while (token := self.peek()) in (("op", "+"), ("op", "-")):
            self.take()
            node = Node("op", token[1], (node, self.term()))
        return node

    def term(self) -> Node:
        node = self.unary()
        while (token := self.peek()) in (("op", "*"), ("op", "/")):
            self.take()
            node = Node("op", token[1], (node, self.unary()))
        return node

    def unary(self) -> Node:
        if self.peek() == ("op", "-"):
            self.take()
            return Node("neg", "", (self.unary(),))
        return self.atom()

    def atom(self) -> Node:
        kind, value = self.take()
        if kind == "num":
            return Node("num", float(value))
        if kind == "op" and value == "(":
            node = self.compare()
            self.take(")")
            return node
        if kind == "op":
            raise self.fail(f"unexpected {value!r}")
        if kind == "name" and self.peek() == ("op", "("):
            return self.call(value)
        return Node("col", value)

    def call(self, name: str) -> Node:
        if name not in _ARITY:
            raise self.fail(f"unknown function {name}(); use one of {sorted(_ARITY)}")
        self.take("(")
        args = [self.compare()]
        while self.peek() == ("op", ","):
            self.take()
            args.append(self.compare())
        self.take(")")
        low, high = _ARITY[name]
        if len(args) < low or (high is not None and len(args) > high):
            want = f"{low}" if low == high else f"at least {low}"
            raise self.fail(f"{name}() takes {want} argument(s), got {len(args)}")
        return Node("call", name, tuple(args))


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    at = 0
    while at < len(text.rstrip()):
        match = _TOKEN.match(text, at)
        if match is None or match.end() == at:
            where = len(text) - len(text[at:].lstrip()) + 1
            raise DeriveError(
                f"expression {text!r}: cannot read {text[at:].strip()[:10]!r} (character {where})"
            )
        kind = match.lastgroup or ""
        out.append(("name" if kind == "quoted" else kind, match.group(kind)))
        at = match.end()
    return out


def parse(text: str) -> Node:
    """The tree of ``text``, its types checked (dates only as differences inside ``days``)."""
    if not text.strip():
        raise DeriveError("expression '': it is empty; write e.g. \"a + b\"")
    parser = _Parser(text)
    node = parser.compare()
    extra = parser.peek()
    if extra is not None:
        raise parser.fail(f"unexpected {extra[1]!r} after a complete expression")
    _check(node, NUMBER, text)
    return node


def _check(node: Node, want: str, text: str) -> None:
    """Types: a column is a date only as an operand of a date difference (days/days_between)."""

    def fail(why: str) -> DeriveError:
        return DeriveError(f"expression {text!r}: type error: {why}")

    if want == DATE and node.kind != "col":
        raise fail(
            "a date difference takes two date columns, e.g. days(discharge_date - admission_date)"
        )
    if node.kind == "call" and node.value == "days":
        inner = node.args[0]
        if inner.kind != "op" or inner.value != "-":
            raise fail(
                "days() takes a difference of two date columns, e.g. "
                "days(discharge_date - admission_date)"
            )
        for arg in inner.args:
            _check(arg, DATE, text)
        return
    for arg in node.args:
        _check(arg, DATE if node.value == "days_between" else NUMBER, text)


def inputs(node: Node) -> dict[str, str]:
    """The export columns the tree reads, each as ``number`` or ``date``."""
    out: dict[str, str] = {}

    def walk(n: Node, kind: str) -> None:
        if n.kind == "col":
            out[str(n.value)] = DATE if kind == DATE or out.get(str(n.value)) == DATE else NUMBER
        dated = n.value in ("days", "days_between") and n.kind == "call"
        for arg in n.args:
            walk(arg, DATE if dated or (kind == DATE and n.kind == "op") else NUMBER)

    walk(node, NUMBER)
    return out


Columns = Mapping[str, np.ndarray]


def evaluate(node: Node, columns: Columns) -> np.ndarray:
    """The expression's values per row (float64, NaN where missing).

    ``columns`` holds every input as float64 (NaN for missing); date inputs are in days since
    1970-01-01 (see :func:`as_days`).
    """
    if node.kind == "num":
        return np.asarray(float(node.value))
    if node.kind == "col":
        return columns[str(node.value)]
    args = [evaluate(arg, columns) for arg in node.args]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return _apply(node, args)


def _apply(node: Node, args: list[np.ndarray]) -> np.ndarray:
    if node.kind == "neg":
        return -args[0]
    if node.kind == "op" and node.value in _COMPARE:
        result = _COMPARE[str(node.value)](args[0], args[1]).astype(np.float64)
        return np.where(np.isnan(args[0]) | np.isnan(args[1]), np.nan, result)
    if node.kind == "op":
        result = _ARITH[str(node.value)](args[0], args[1])
        return np.where(np.isfinite(result), result, np.nan)
    functions: dict[str, Callable[..., np.ndarray]] = {
        "min": lambda *a: np.minimum.reduce(np.broadcast_arrays(*a)),
        "max": lambda *a: np.maximum.reduce(np.broadcast_arrays(*a)),
        "log1p": lambda x: np.where(x > -1, np.log1p(np.where(x > -1, x, 0.0)), np.nan),
        "clip": lambda x, low, high: np.clip(x, low, high),
        "days": lambda x: x,
        "days_between": lambda a, b: b - a,
    }
    return np.asarray(functions[str(node.value)](*args), dtype=np.float64)


def as_days(values: np.ndarray) -> np.ndarray:
    """Date cells (text or datetimes; missing as None/NaN) as days since 1970-01-01 UTC, NaN
    where missing or not a date. ISO dates (2020-01-31, with or without a time) are read fast;
    other text is read by pandas' mixed-format parser, month first (01/02/2020 is 2 January)."""
    import pandas as pd

    cells = pd.Series(values, dtype=object)
    stamps = pd.to_datetime(cells, errors="coerce", format="ISO8601", utc=True)
    other = stamps.isna() & cells.notna()
    if other.any():
        stamps[other] = pd.to_datetime(cells[other], errors="coerce", format="mixed", utc=True)
    days = (stamps - pd.Timestamp("1970-01-01", tz="UTC")).dt.total_seconds() / 86400.0
    return days.to_numpy(dtype=np.float64, na_value=np.nan)
