"""StreamPattern.contains against brute force over a small bounded universe.

Patterns have at most 3 segments from {a, b, *, >}; names have at most 4
segments from {a, b}. That bound is exact: if some name of any length and
alphabet is matched by Q and not by P, one exists here too. A segment that is
not a or b sits under a `*` or `>` of Q; replacing it with whichever of a, b
differs from P's literal at that place keeps P failing. A name longer than
max(len P, len Q) + 1 can be cut to that length: Q still matches (it ends in
`>`), and P still fails (its mismatch is earlier, or its length differs).
"""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from sse_stream.access.auth import allows
from sse_stream.core.patterns import StreamPattern, parse_pattern

NAMES = [".".join(parts) for n in range(1, 5) for parts in itertools.product("ab", repeat=n)]


def _all_patterns() -> list[StreamPattern]:
    found = []
    for n in range(1, 4):
        for parts in itertools.product("ab*>", repeat=n):
            if ">" in parts[:-1]:
                continue
            found.append(parse_pattern(".".join(parts)))
    return found


PATTERNS = _all_patterns()
MATCHED = {p.text: frozenset(name for name in NAMES if p.matches(name)) for p in PATTERNS}


def test_contains_equals_brute_force_for_every_pair() -> None:
    # Exhaustive: every pair of the 52 patterns (2,704 pairs).
    wrong = [(p.text, q.text) for p in PATTERNS for q in PATTERNS
             if p.contains(q) != (MATCHED[q.text] <= MATCHED[p.text])]
    assert len(PATTERNS) == 52
    assert wrong == []


@settings(max_examples=300, derandomize=True)
@given(st.sampled_from(PATTERNS), st.sampled_from(PATTERNS))
def test_contains_property(outer: StreamPattern, inner: StreamPattern) -> None:
    assert outer.contains(inner) == (MATCHED[inner.text] <= MATCHED[outer.text])
    if outer.contains(inner) and inner.contains(outer):
        assert MATCHED[inner.text] == MATCHED[outer.text]


@settings(max_examples=300, derandomize=True)
@given(st.lists(st.sampled_from(PATTERNS), max_size=3), st.lists(st.sampled_from(PATTERNS),
                                                                 min_size=1, max_size=3))
def test_allows_is_every_requested_inside_one_grant(granted: list[StreamPattern],
                                                    requested: list[StreamPattern]) -> None:
    expected = all(any(MATCHED[q.text] <= MATCHED[p.text] for p in granted) for q in requested)
    assert allows(granted, requested) == expected


def test_examples_from_the_contract() -> None:
    grant = [parse_pattern("orders.*")]
    assert allows(grant, [parse_pattern("orders.42")])
    assert allows(grant, [parse_pattern("orders.*")])
    assert not allows(grant, [parse_pattern("orders.>")])
    assert not allows(grant, [parse_pattern(">")])
    assert not allows(grant, [parse_pattern("orders")])
    assert allows([parse_pattern(">")], [parse_pattern("a.*.>")])
    assert not allows([], [parse_pattern("a")])
