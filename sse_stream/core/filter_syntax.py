"""The query syntax of data filters: `data.<path>=[not.]<op>.<value>` and
`or=(...)` parsed into a DataFilter (filters.py), with a clear refusal
naming the parameter for anything else."""

from __future__ import annotations

import re
from collections.abc import Sequence

from .errors import Refusal
from .filters import (
    IS_VALUES,
    MAX_FILTERS,
    MAX_IN_VALUES,
    MAX_PATH,
    OPERATORS,
    AnyOf,
    Condition,
    DataFilter,
)

_SEGMENT_RE = re.compile(r"[A-Za-z0-9_-]+")
_SEGMENT_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")

def _check_text(value: str, param: str) -> str:
    if "\x00" in value:
        raise Refusal(param, "a filter value cannot contain NUL")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise Refusal(param, "a filter value must be valid UTF-8") from None
    return value


def _check_path(segments: Sequence[str], param: str) -> tuple[str, ...]:
    if len(segments) > MAX_PATH:
        raise Refusal(param, f"a data path has at most {MAX_PATH} keys")
    for segment in segments:
        if not segment:
            raise Refusal(param, "a data path is object keys joined by '.', none empty")
        if _SEGMENT_RE.fullmatch(segment) is None:
            raise Refusal(param, f"a data path key is [A-Za-z0-9_-]+, not {segment[:50]!r}")
    return tuple(segments)


def _condition(path: tuple[str, ...], op: str, values: tuple[str, ...], negated: bool,
               param: str) -> Condition:
    if op == "is" and values[0] not in IS_VALUES:
        raise Refusal(param, f"is takes null, true or false, not {values[0][:50]!r}")
    if len(values) > MAX_IN_VALUES:
        raise Refusal(param, f"in takes at most {MAX_IN_VALUES} values")
    for value in values:
        _check_text(value, param)
    if op == "neq":
        return Condition(path, "eq", values, not negated)
    return Condition(path, op, values, negated)


class _Scanner:
    """A cursor over one parameter value for the parenthesised syntax."""

    def __init__(self, text: str, param: str) -> None:
        self.text = text
        self.param = param
        self.pos = 0

    def fail(self, detail: str) -> Refusal:
        return Refusal(self.param, f"{detail} at character {self.pos + 1}")

    def peek(self) -> str:
        return self.text[self.pos:self.pos + 1]

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def expect(self, literal: str) -> None:
        if not self.text.startswith(literal, self.pos):
            raise self.fail(f"expected {literal!r}")
        self.pos += len(literal)

    def word(self) -> str:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] in _SEGMENT_CHARS:
            self.pos += 1
        return self.text[start:self.pos]

    def item(self) -> str:
        """A list item or or-member value: "quoted" (\\ escapes) or bare."""
        if self.peek() == '"':
            self.pos += 1
            chars = []
            while True:
                char = self.peek()
                if not char:
                    raise self.fail("unterminated quoted value")
                self.pos += 1
                if char == '"':
                    break
                if char == "\\":
                    char = self.peek()
                    if not char:
                        raise self.fail("unterminated quoted value")
                    self.pos += 1
                chars.append(char)
            if self.peek() not in (",", ")"):
                raise self.fail("expected ',' or ')' after a quoted value")
            return "".join(chars)
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in ',()"':
            self.pos += 1
        if self.peek() not in (",", ")"):
            raise self.fail("a bare value cannot contain '(' or '\"'; quote it")
        return self.text[start:self.pos]

    def items(self) -> tuple[str, ...]:
        """`(a,b,"c,d")`; `()` is the empty list."""
        self.expect("(")
        if self.peek() == ")":
            self.pos += 1
            return ()
        values = [self.item()]
        while self.peek() == ",":
            self.pos += 1
            values.append(self.item())
            if len(values) > MAX_IN_VALUES:
                raise Refusal(self.param, f"in takes at most {MAX_IN_VALUES} values")
        self.expect(")")
        return tuple(values)


def _parse_operation(text: str, path: tuple[str, ...], param: str) -> Condition:
    """`[not.]<op>.<value>` of a `data.<path>=` parameter: the value is raw."""
    negated = text.startswith("not.")
    rest = text[4:] if negated else text
    op, dot, value = rest.partition(".")
    if op not in OPERATORS:
        raise Refusal(param, f"unknown operator {op[:20]!r}; use eq, neq, gt, gte, "
                      "lt, lte, in, is, optionally after not.")
    if not dot:
        raise Refusal(param, f"expected {op}.<value>")
    if op == "in":
        scanner = _Scanner(value, param)
        values = scanner.items()
        if not scanner.at_end():
            raise scanner.fail("unexpected text after the list")
        return _condition(path, op, values, negated, param)
    return _condition(path, op, (value,), negated, param)


def _parse_member(scanner: _Scanner) -> Condition:
    """`data.<path>.[not.]<op>.<value>`: the first key after the path that is
    an operator or `not` starts the operation."""
    scanner.expect("data.")
    path: list[str] = []
    while True:
        word = scanner.word()
        if path and (word in OPERATORS or word == "not"):
            break
        if not word:
            raise scanner.fail("expected a data path key of [A-Za-z0-9_-]")
        path.append(word)
        if len(path) > MAX_PATH:
            raise scanner.fail(f"a data path has at most {MAX_PATH} keys")
        if scanner.peek() != ".":
            raise scanner.fail("expected '.' and an operator after the path")
        scanner.pos += 1
    negated = word == "not"
    if negated:
        scanner.expect(".")
        word = scanner.word()
        if word not in OPERATORS:
            raise scanner.fail(f"unknown operator {word[:20]!r}")
    scanner.expect(".")
    if word == "in":
        values = scanner.items()
    elif word == "is":
        values = (scanner.word(),)
    else:
        values = (scanner.item(),)
    return _condition(tuple(path), word, values, negated, scanner.param)


def _parse_any_of(text: str, param: str) -> AnyOf:
    scanner = _Scanner(text, param)
    scanner.expect("(")
    members = [_parse_member(scanner)]
    while scanner.peek() == ",":
        scanner.pos += 1
        members.append(_parse_member(scanner))
    scanner.expect(")")
    if not scanner.at_end():
        raise scanner.fail("unexpected text after ')'")
    return AnyOf(tuple(members))


def parse_data_filters(pairs: Sequence[tuple[str, str]]) -> DataFilter | None:
    """The data filters among all query parameters, or None if there are none.

    Reads `data.<path>` keys and `or`; ignores every other key. Raises
    Refusal naming the offending key.
    """
    terms: list[Condition | AnyOf] = []
    count = 0
    for key, value in pairs:
        term: Condition | AnyOf
        if key == "or":
            term = _parse_any_of(value, key)
            count += len(term.conditions)
        elif key.startswith("data."):
            term = _parse_operation(value, _check_path(key[5:].split("."), key), key)
            count += 1
        else:
            continue
        if count > MAX_FILTERS:
            raise Refusal(key, f"at most {MAX_FILTERS} data filters per request, "
                          "counting each member of or=(...)")
        terms.append(term)
    return DataFilter(tuple(terms)) if terms else None
