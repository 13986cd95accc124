"""Data filters (`data.<path>=<op>.<value>`, `or=(...)`): parse once, then
evaluate in Python (live) or compile to SQL (replay) with the same answer.

Pure code. The semantics, summarised (docs/filters.md has the full table):

- A path walks object keys only; an array, a scalar or an absent key on the
  way makes the field *missing*. A JSON ``null`` field behaves as missing.
- ``is.null`` matches missing/null; ``is.true``/``is.false`` match the JSON
  booleans only. ``neq`` is exactly ``not.eq``; ``not.X`` is ``NOT X``.
- A number field is compared numerically with values that are JSON numbers
  and matches no other value. An integer field that JSON decoding keeps as an
  int (text without ``.`` in [-2**63, 2**64-1]) compares exactly; any other
  number compares as an IEEE double, because that is all the decoded event
  holds in Python.
- A string field is compared with the raw value text; a boolean field with
  the text ``true``/``false``. Text order is code point order (``COLLATE "C"``).
- An object or array field matches no comparison.

`matches` expects the event's data as decoded (orjson or json) from
PostgreSQL's text for the jsonb value, which is what the server reads.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_FLOOR, Decimal
from typing import Any, Final

MAX_FILTERS = 20
MAX_IN_VALUES = 100
MAX_PATH = 32  # keys in one data path (events.MAX_DECODED_DEPTH stays above it)

OPERATORS: Final = ("eq", "neq", "gt", "gte", "lt", "lte", "in", "is")
IS_VALUES: Final = ("null", "true", "false")

# Strict JSON number grammar, ASCII digits only (`\d` would accept other scripts).
_JSON_NUMBER_RE = re.compile(r"(-?)(0|[1-9][0-9]*)(?:\.([0-9]+))?(?:[eE]([+-]?[0-9]+))?")

# orjson decodes an integer without fraction or exponent in this range to an
# exact int and every other number to a float (correctly rounded).
_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**64 - 1
# Stand-ins for values outside that range: they compare with every int in the
# range exactly as the real value does, and stay small as bind parameters.
_ABOVE_INTS: Final = Decimal(2**64)
_BELOW_INTS: Final = Decimal(-(2**63) - 1)
_HALF: Final = Decimal("0.5")
# strtod (PostgreSQL's float8in) and orjson round a decimal text to the same
# double, but PostgreSQL raises where the result underflows to zero or
# overflows, while orjson gives 0.0 (and fails on overflow). These are the
# exact borders: |x| <= 2**-1075 rounds to 0 (ties to even), and
# |x| >= 2**1024 - 2**970 rounds to infinity.
_UNDERFLOW: Final = Decimal(f"{5**1075}e-1075")
_OVERFLOW: Final = Decimal(2**1024 - 2**970)

_COMPARE: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "eq": operator.eq, "gt": operator.gt, "gte": operator.ge,
    "lt": operator.lt, "lte": operator.le,
}
_SQL_OPERATOR: Final = {"eq": "=", "in": "=", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
_JSONB_BOOLEAN: Final = {"true": "'true'::jsonb", "false": "'false'::jsonb"}


class _Missing:
    """The value of a path that does not lead to a field."""


_MISSING: Final = _Missing()


@dataclass(frozen=True)
class Condition:
    """One test of one field: `op` is eq, in, gt, gte, lt, lte or is.

    `values` are the raw value texts (one, except for `in`; for `is` one of
    null/true/false). `neq` is parsed into a negated `eq`.
    """

    path: tuple[str, ...]
    op: str
    values: tuple[str, ...]
    negated: bool = False
    # Derived once here so the per-event test does no parsing.
    texts: frozenset[str] = field(init=False, repr=False, compare=False)
    exact: tuple[Decimal, ...] = field(init=False, repr=False, compare=False)
    approx: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        numbers = [n for n in map(_number, self.values) if n is not None]
        object.__setattr__(self, "texts", frozenset(self.values))
        object.__setattr__(self, "exact", tuple(n[0] for n in numbers))
        object.__setattr__(self, "approx", tuple(n[1] for n in numbers))

    def matches(self, data: Any) -> bool:
        return self._holds(_lookup(data, self.path)) != self.negated

    def index_keys(self) -> frozenset[Hashable] | None:
        """The keys among which `value_key` of a matching field must be, for
        an `eq` or `in` that is not negated (None for any other condition).

        The texts, exact stand-ins and doubles it compares with: whatever
        the field's type, `_holds` is true only if the field (or its text)
        equals one of them, and equal values have equal hashes in Python.
        """
        if self.negated or self.op not in ("eq", "in"):
            return None
        return frozenset((*self.texts, *self.exact, *self.approx))

    def _holds(self, value: Any) -> bool:
        if self.op == "is":
            if self.values[0] == "null":
                return value is None or value is _MISSING
            return value is (self.values[0] == "true")
        if isinstance(value, bool):
            return self._compare("true" if value else "false", self.texts, self.values)
        if isinstance(value, str):
            return self._compare(value, self.texts, self.values)
        if isinstance(value, int):
            if _INT_MIN <= value <= _INT_MAX:
                return self._compare(value, self.exact, self.exact)
            try:
                value = float(value)
            except OverflowError:
                return False
        if isinstance(value, float) and math.isfinite(value):
            return self._compare(value, self.approx, self.approx)
        return False

    def _compare(self, value: Any, members: Any, ordered: Sequence[Any]) -> bool:
        if self.op in ("eq", "in"):
            return value in members
        return bool(ordered) and _COMPARE[self.op](value, ordered[0])

    def to_sql(self, column: str, bind: Callable[[Any], str]) -> str:
        return self._sql(_SqlWriter(column, bind))

    def _sql(self, writer: _SqlWriter) -> str:
        if not self.values:
            # `in.()`: nothing to compare. Binding the path anyway would leave
            # parameters the statement never uses, which PostgreSQL refuses.
            return "true" if self.negated else "false"
        keys = [f"{writer.bind(key)}::text" for key in self.path]
        head = writer.column + "".join(f" -> {key}" for key in keys[:-1])
        node = f"({head} -> {keys[-1]})"
        text = f"({head} ->> {keys[-1]})"
        if self.op == "is":
            if self.values[0] == "null":
                sql = f"coalesce(jsonb_typeof({node}), 'null') = 'null'"
            else:
                sql = f"coalesce({node} = {_JSONB_BOOLEAN[self.values[0]]}, false)"
        else:
            sql = self._comparison_sql(writer, node, text)
        return f"NOT ({sql})" if self.negated else sql

    def _comparison_sql(self, writer: _SqlWriter, node: str, text: str) -> str:
        many = self.op == "in"
        symbol = _SQL_OPERATOR[self.op]

        def operand(values: Sequence[Any], cast: str) -> str:
            if many:
                return f"ANY({writer.bind(list(values))}::{cast}[])"
            return f"{writer.bind(values[0])}::{cast}"

        branches = []
        if self.exact:
            exact = operand(self.exact, "numeric")
            approx = operand(self.approx, "float8")
            number = f"{text}::numeric"
            # The same split as the decoder's: exact int, double, and the
            # texts a double cannot hold (cast would raise, so test first).
            branches.append(
                "WHEN 'number' THEN CASE"
                f" WHEN strpos({text}, '.') = 0 AND {number} BETWEEN {_INT_MIN} AND {_INT_MAX}"
                f" THEN {number} {symbol} {exact}"
                f" WHEN abs({number}) <= {writer.underflow()}::numeric"
                f" THEN 0::float8 {symbol} {approx}"
                f" WHEN abs({number}) < {writer.overflow()}::numeric"
                f" THEN {text}::float8 {symbol} {approx}"
                " ELSE false END")
        compared = f"{text} COLLATE \"C\" {symbol} {operand(self.values, 'text')}"
        branches.append(f"WHEN 'string' THEN {compared} WHEN 'boolean' THEN {compared}")
        # A missing field gives a NULL type and falls to ELSE; coalesce keeps
        # NULL out even so, because NOT must see a plain boolean.
        return f"coalesce(CASE jsonb_typeof({node}) {' '.join(branches)} ELSE false END, false)"


@dataclass(frozen=True)
class AnyOf:
    """One `or=(...)` group: true when any of its conditions is."""

    conditions: tuple[Condition, ...]

    def matches(self, data: Any) -> bool:
        return any(c.matches(data) for c in self.conditions)

    def to_sql(self, column: str, bind: Callable[[Any], str]) -> str:
        return self._sql(_SqlWriter(column, bind))

    def _sql(self, writer: _SqlWriter) -> str:
        return "(" + " OR ".join(f"({c._sql(writer)})" for c in self.conditions) + ")"


@dataclass(frozen=True)
class DataFilter:
    """All data filters of one request: the AND of conditions and or-groups."""

    terms: tuple[Condition | AnyOf, ...]

    def index_condition(self) -> Condition | None:
        """A condition every match must meet that an index can serve: the
        first `eq` or `in` that is not negated (see Condition.index_keys)."""
        for term in self.terms:
            if isinstance(term, Condition) and term.index_keys() is not None:
                return term
        return None

    def matches(self, data: Any) -> bool:
        return all(t.matches(data) for t in self.terms)

    def to_sql(self, column: str, bind: Callable[[Any], str]) -> str:
        """A boolean SQL expression over the jsonb expression `column`.

        Every path key and value goes through `bind`, which returns its
        placeholder; the expression is never NULL.
        """
        writer = _SqlWriter(column, bind)
        return " AND ".join(f"({t._sql(writer)})" for t in self.terms)


class _SqlWriter:
    """The column, the bind callback and the constants bound at most once."""

    def __init__(self, column: str, bind: Callable[[Any], str]) -> None:
        self.column = f"({column})"
        self.bind = bind
        self._underflow: str | None = None
        self._overflow: str | None = None

    def underflow(self) -> str:
        if self._underflow is None:
            self._underflow = self.bind(_UNDERFLOW)
        return self._underflow

    def overflow(self) -> str:
        if self._overflow is None:
            self._overflow = self.bind(_OVERFLOW)
        return self._overflow


def value_key(value: Any) -> Hashable | None:
    """A field's value as `eq` and `in` compare it: the text of a string or
    boolean, the number of a number (a double outside the exact range), None
    for what compares with nothing (missing, null, containers, infinities)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if _INT_MIN <= value <= _INT_MAX:
            return value
        try:
            value = float(value)
        except OverflowError:
            return None
    if isinstance(value, float) and math.isfinite(value):
        return value
    return None


def lookup(data: Any, path: tuple[str, ...]) -> Any:
    """The value at `path` (object keys only), or a missing marker."""
    return _lookup(data, path)


def _lookup(data: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(data, dict):
            return _MISSING
        data = data.get(key, _MISSING)
        if data is _MISSING:
            return _MISSING
    return data


def _number(text: str) -> tuple[Decimal, float] | None:
    """The value text as (exact stand-in, double), or None if not a JSON number.

    The exact stand-in compares with every integer in [-2**63, 2**64-1]
    exactly as the value does: out-of-range values become the nearest
    integer outside the range, and a fraction becomes floor + 0.5.
    """
    match = _JSON_NUMBER_RE.fullmatch(text)
    if match is None:
        return None
    sign, whole, fraction, exponent_text = match.group(1, 2, 3, 4)
    digits = whole + (fraction or "")
    zeros = len(digits) - len(digits.lstrip("0"))
    if zeros == len(digits):
        return Decimal(0), 0.0
    negative = sign == "-"
    exponent = (exponent_text or "0").lstrip("+")
    exponent_digits = exponent.lstrip("-").lstrip("0") or "0"
    exponent_sign = -1 if exponent.startswith("-") else 1
    # Decide far-out magnitudes from the text: Decimal and int() refuse
    # exponents of thousands of digits, and no text is long enough to
    # bring such an exponent back into range.
    if len(exponent_digits) > 18:
        magnitude = exponent_sign * 10**19
    else:
        magnitude = exponent_sign * int(exponent_digits) + len(whole) - 1 - zeros
    if magnitude > 400:
        return (_BELOW_INTS, -math.inf) if negative else (_ABOVE_INTS, math.inf)
    if magnitude < -400:
        return (-_HALF, -0.0) if negative else (_HALF, 0.0)
    value = Decimal(text)
    if value >= _ABOVE_INTS:
        exact = _ABOVE_INTS
    elif value <= _BELOW_INTS:
        exact = _BELOW_INTS
    else:
        floor = Decimal(int(value.to_integral_value(rounding=ROUND_FLOOR)))
        exact = floor if floor == value else floor + _HALF
    return exact, float(value)
