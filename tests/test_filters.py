"""Data filters: parsing, semantics, and Python/SQL agreement on random data."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable, Iterator
from typing import Any

import asyncpg
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import EDGE_NUMBERS, Leaves, Pairs, documents, dump, filter_pairs, leaves

from sse_stream.core.errors import Refusal
from sse_stream.core.events import Event
from sse_stream.core.filter_syntax import parse_data_filters
from sse_stream.core.filters import MAX_FILTERS, MAX_IN_VALUES, AnyOf, Condition, DataFilter
from sse_stream.core.patterns import parse_pattern_list, parse_type_filter
from sse_stream.core.selector import Selector
from sse_stream.engine.routing import Group, Routes


def parse(*pairs: tuple[str, str]) -> DataFilter:
    result = parse_data_filters(list(pairs))
    assert result is not None
    return result


# --- parsing -----------------------------------------------------------------


def test_no_data_filters_is_none() -> None:
    assert parse_data_filters([]) is None
    assert parse_data_filters([("type", "order.*"), ("live", "false"), ("data", "eq.1"),
                               ("last_event_id", "0"), ("datax.y", "eq.1")]) is None


def test_parses_operators_and_negation() -> None:
    result = parse(("data.customer.id", "eq.42"), ("type", "x"), ("data.status", "not.in.(cancelled,void)"),
                   ("data.x", "neq.5"), ("data.y", "not.neq.5"), ("data.z", "not.is.null"),
                   ("data.w", "gte.a.b"))
    assert result.terms == (
        Condition(("customer", "id"), "eq", ("42",)),
        Condition(("status",), "in", ("cancelled", "void"), negated=True),
        Condition(("x",), "eq", ("5",), negated=True),
        Condition(("y",), "eq", ("5",)),
        Condition(("z",), "is", ("null",), negated=True),
        # Outside or=(...) the value is everything after the operator.
        Condition(("w",), "gte", ("a.b",)),
    )


def test_top_level_values_are_raw() -> None:
    result = parse(("data.a", 'eq."x,y"'), ("data.b", "eq."), ("data.c", "lt.(1,2)"))
    assert [t.values for t in result.terms if isinstance(t, Condition)] == [
        ('"x,y"',), ("",), ("(1,2)",)]


def test_in_lists_quote_and_escape() -> None:
    (term,) = parse(("data.a", r'in.("a,b",c,"q\"x","back\\slash",,"",")(")')).terms
    assert term == Condition(("a",), "in", ("a,b", "c", 'q"x', "back\\slash", "", "", ")("))
    (empty,) = parse(("data.a", "in.()")).terms
    assert empty == Condition(("a",), "in", ())


def test_or_groups() -> None:
    result = parse(("or", "(data.total.gt.100,data.vip.is.true)"), ("data.a", "eq.1"),
                   ("or", r'(data.a.b.not.in.(1,"2,3"),data.c.eq."x)y",data.d.neq.,data.e.lte.-1.5e3)'))
    assert result.terms == (
        AnyOf((Condition(("total",), "gt", ("100",)), Condition(("vip",), "is", ("true",)))),
        Condition(("a",), "eq", ("1",)),
        AnyOf((Condition(("a", "b"), "in", ("1", "2,3"), negated=True),
               Condition(("c",), "eq", ("x)y",)),
               Condition(("d",), "eq", ("",), negated=True),
               # The value runs to ',' or ')': dots are part of it.
               Condition(("e",), "lte", ("-1.5e3",)))),
    )


def test_or_member_path_ends_at_first_operator_word() -> None:
    (group,) = parse(("or", "(data.a.b-c.d_1.is.null,data.x.not.eq.not)")).terms
    assert group == AnyOf((Condition(("a", "b-c", "d_1"), "is", ("null",)),
                           Condition(("x",), "eq", ("not",), negated=True)))


def test_limits_are_inclusive() -> None:
    pairs = [(f"data.k{n}", "eq.1") for n in range(MAX_FILTERS - 2)]
    pairs.append(("or", "(data.a.eq.1,data.b.eq.2)"))
    assert len(parse(*pairs).terms) == MAX_FILTERS - 1
    values = ",".join(str(n) for n in range(MAX_IN_VALUES))
    parse(("data.a", f"in.({values})"), ("or", f"(data.a.in.({values}))"))


many = ",".join(str(n) for n in range(MAX_IN_VALUES + 1))
twenty = [(f"data.k{n}", "eq.1") for n in range(MAX_FILTERS)]

INVALID: list[tuple[Pairs, str]] = [
    ([("data.x", "foo.1")], "data.x"),
    ([("data.x", "not.foo.1")], "data.x"),
    ([("data.x", "not.not.eq.1")], "data.x"),
    ([("data.x", "EQ.1")], "data.x"),
    ([("data.x", "eq")], "data.x"),
    ([("data.x", "")], "data.x"),
    ([("data.x", "not.")], "data.x"),
    ([("data.", "eq.1")], "data."),
    ([("data.a..b", "eq.1")], "data.a..b"),
    ([("data.a.", "eq.1")], "data.a."),
    ([("data.a$b", "eq.1")], "data.a$b"),
    ([("data.a b", "eq.1")], "data.a b"),
    ([("data.é", "eq.1")], "data.é"),
    ([("data.a", "eq.1"), ("data.b*", "eq.1")], "data.b*"),
    ([("data.a", "is.maybe")], "data.a"),
    ([("data.a", "is.NULL")], "data.a"),
    ([("data.a", "is.")], "data.a"),
    ([("data.a", "not.is.1")], "data.a"),
    ([("data.a", "in.1,2")], "data.a"),
    ([("data.a", "in.(1,2")], "data.a"),
    ([("data.a", "in.(1,2)x")], "data.a"),
    ([("data.a", "in.(1,2))")], "data.a"),
    ([("data.a", 'in.("a)')], "data.a"),
    ([("data.a", 'in.("a\\')], "data.a"),
    ([("data.a", 'in.("a"b)')], "data.a"),
    ([("data.a", 'in.(a"b")')], "data.a"),
    ([("data.a", "in.(a(b)")], "data.a"),
    ([("data.a", f"in.({many})")], "data.a"),
    ([("data.a", "eq.a\x00b")], "data.a"),
    ([("data.a", "in.(a,\x00)")], "data.a"),
    ([("data.a", "eq.\ud800")], "data.a"),
    (twenty + [("data.extra", "eq.1")], "data.extra"),
    (twenty[:-1] + [("or", "(data.a.eq.1,data.b.eq.1)")], "or"),
    ([("or", "(" + ",".join(["data.a.eq.1"] * (MAX_FILTERS + 1)) + ")")], "or"),
    ([("or", f"(data.a.in.({many}))")], "or"),
    ([("or", "data.a.eq.1")], "or"),
    ([("or", "")], "or"),
    ([("or", "()")], "or"),
    ([("or", "(data.a.eq.1")], "or"),
    ([("or", "(data.a.eq.1))")], "or"),
    ([("or", "(data.a.eq.1) ")], "or"),
    ([("or", "(data.a.eq.1,)")], "or"),
    ([("or", "(data.a)")], "or"),
    ([("or", "(data.a.b)")], "or"),
    ([("or", "(a.eq.1)")], "or"),
    ([("or", "(data.eq.1)")], "or"),
    ([("or", "(data..eq.1)")], "or"),
    ([("or", "(data.a$.eq.1)")], "or"),
    ([("or", "(data.a.foo.1)")], "or"),
    ([("or", "(data.a.not.foo.1)")], "or"),
    ([("or", "(data.a.not.not.eq.1)")], "or"),
    ([("or", "(data.a.eq)")], "or"),
    ([("or", "(data.a.is.maybe)")], "or"),
    ([("or", "(data.a.is.null.x)")], "or"),
    ([("or", "(data.a.eq.(x))")], "or"),
    ([("or", "(data.a.eq.x(y)")], "or"),
    ([("or", '(data.a.eq."x)')], "or"),
    ([("or", '(data.a.eq."x"y)')], "or"),
    ([("or", "(data.a.in.1)")], "or"),
    ([("or", "(data.a.in.(1,2)")], "or"),
    ([("or", "(data.a.eq.\x00)")], "or"),
    ([("or", "(or(data.a.eq.1))")], "or"),
]


@pytest.mark.parametrize(("pairs", "param"), INVALID)
def test_invalid_input_names_the_parameter(pairs: Pairs, param: str) -> None:
    with pytest.raises(Refusal) as caught:
        parse_data_filters(pairs)
    assert caught.value.param == param
    assert caught.value.status == 400


# --- semantics (each row is also checked against PostgreSQL below) -----------

BIG = 2**63 + 1
SEMANTICS: list[tuple[Any, Pairs, bool]] = [
    # Paths walk objects only: an array index is not a key.
    ({"a": [10, 20]}, [("data.a.0", "eq.10")], False),
    ({"a": [10, 20]}, [("data.a.0", "is.null")], True),
    ({"a": {"0": 10}}, [("data.a.0", "eq.10")], True),
    ({"a": "x"}, [("data.a.b", "is.null")], True),
    ([{"a": 1}], [("data.a", "is.null")], True),
    # Missing: only is.null and neq match; not.X is NOT X.
    ({}, [("data.a", "eq.1")], False),
    ({}, [("data.a", "neq.1")], True),
    ({}, [("data.a", "not.neq.1")], False),
    ({}, [("data.a", "gt.1")], False),
    ({}, [("data.a", "not.gt.1")], True),
    ({}, [("data.a", "in.(1,2)")], False),
    ({}, [("data.a", "not.in.(1,2)")], True),
    ({}, [("data.a", "is.null")], True),
    ({}, [("data.a", "not.is.null")], False),
    ({}, [("data.a", "is.true")], False),
    ({}, [("data.a", "is.false")], False),
    # JSON null is treated as missing, and eq.null is the text "null".
    ({"a": None}, [("data.a", "is.null")], True),
    ({"a": None}, [("data.a", "eq.null")], False),
    ({"a": None}, [("data.a", "neq.null")], True),
    ({"a": "null"}, [("data.a", "eq.null")], True),
    ({"a": "null"}, [("data.a", "is.null")], False),
    # Numbers against numbers; a non-number value never matches a number.
    ({"a": 5}, [("data.a", "eq.5.0")], True),
    ({"a": 5}, [("data.a", "eq.5e0")], True),
    ({"a": 5}, [("data.a", "gt.4.5")], True),
    ({"a": 5}, [("data.a", "lt.5.0000000000000000000001")], True),
    ({"a": 10}, [("data.a", "gt.9")], True),
    ({"a": 10}, [("data.a", "gt.abc")], False),
    ({"a": 10}, [("data.a", "lt.abc")], False),
    ({"a": 10}, [("data.a", "eq. 10")], False),
    ({"a": 10}, [("data.a", "eq.+10")], False),
    ({"a": 10}, [("data.a", "eq.010")], False),
    ({"a": 1000}, [("data.a", "eq.1e3")], True),
    ({"a": 1.5}, [("data.a", "in.(x,1.50,2)")], True),
    ({"a": 0}, [("data.a", "eq.-0")], True),
    # Integers keep every digit; ids beyond 2**53 stay distinct.
    ({"a": 9007199254740993}, [("data.a", "eq.9007199254740992")], False),
    ({"a": 9007199254740993}, [("data.a", "eq.9007199254740993")], True),
    ({"a": 2**64 - 1}, [("data.a", "lt.18446744073709551616")], True),
    ({"a": -(2**63)}, [("data.a", "gt.-9223372036854775809")], True),
    ({"a": BIG}, [("data.a", f"in.(1,{BIG})")], True),
    ({"a": 2}, [("data.a", "lt.1e99999999999999999999999")], True),
    ({"a": 2}, [("data.a", "gt.-1e400")], True),
    ({"a": 0}, [("data.a", "lt.1e-400")], True),
    # Other numbers are doubles, as the decoded event holds them.
    ({"a": 0.1}, [("data.a", "eq.0.1")], True),
    ({"a": 0.1}, [("data.a", "eq.0.1000000000000000055511151231257827")], True),
    ({"a": 0.30000000000000004}, [("data.a", "gt.0.3")], True),
    ({"a": 2.0**70}, [("data.a", "eq.1180591620717411303424")], True),
    ({"a": 1e300}, [("data.a", "lt.1e400")], True),
    # Strings compare as text, also against numeric-looking values.
    ({"a": "42"}, [("data.a", "eq.42")], True),
    ({"a": "042"}, [("data.a", "eq.42")], False),
    ({"a": "10"}, [("data.a", "gt.9")], False),
    ({"a": "b"}, [("data.a", "gt.a")], True),
    ({"a": "Z"}, [("data.a", "lt.a")], True),
    ({"a": "é"}, [("data.a", "gt.z")], True),
    ({"a": "\U0001F600"}, [("data.a", "gt.\uffff")], True),
    ({"a": ""}, [("data.a", "eq.")], True),
    ({"a": "a,b"}, [("data.a", 'in.("a,b")')], True),
    ({"a": "true"}, [("data.a", "is.true")], False),
    # Booleans compare as the text true/false.
    ({"a": True}, [("data.a", "eq.true")], True),
    ({"a": True}, [("data.a", "is.true")], True),
    ({"a": False}, [("data.a", "is.false")], True),
    ({"a": True}, [("data.a", "gt.false")], True),
    ({"a": True}, [("data.a", "eq.1")], False),
    # Objects and arrays match no comparison.
    ({"a": {"b": 1}}, [("data.a", "eq.{\"b\":1}")], False),
    ({"a": {"b": 1}}, [("data.a", "neq.x")], True),
    ({"a": [1]}, [("data.a", "gt.0")], False),
    ({"a": [1]}, [("data.a", "is.null")], False),
    # The whole filter: AND of terms, OR inside or=().
    ({"total": 50, "vip": True}, [("or", "(data.total.gt.100,data.vip.is.true)")], True),
    ({"total": 50, "vip": False}, [("or", "(data.total.gt.100,data.vip.is.true)")], False),
    ({"total": 500, "s": "paid"},
     [("or", "(data.total.gt.100,data.vip.is.true)"), ("data.s", "not.in.(cancelled,void)")], True),
    ({"total": 500, "s": "void"},
     [("or", "(data.total.gt.100,data.vip.is.true)"), ("data.s", "not.in.(cancelled,void)")], False),
    ({"a": 1}, [("data.a", "in.()")], False),
    ({"a": 1}, [("data.a", "not.in.()")], True),
]


@pytest.mark.parametrize(("data", "pairs", "expected"), SEMANTICS)
def test_semantics(data: Any, pairs: Pairs, expected: bool) -> None:
    assert parse(*pairs).matches(data) is expected


def test_sql_binds_every_client_text() -> None:
    params: list[Any] = []

    def bind(value: Any) -> str:
        params.append(value)
        return f"${len(params)}"

    result = parse(("data.keymarker", "eq.'valuemarker"), ("data.a", "in.(inmarker,7)"),
                   ("or", "(data.ormarker.lt.ltmarker,data.b.is.true)"))
    sql = result.to_sql("ev.data", bind)
    for text in ("marker", "'valuemarker"):
        assert text not in sql
    assert "keymarker" in params and "'valuemarker" in params and "ormarker" in params
    assert ["inmarker", "7"] in params


# --- Python and PostgreSQL agree ---------------------------------------------

SqlResults = Callable[[DataFilter, list[str]], list[tuple[str, bool]]]


@pytest.fixture(scope="module")
def sql_results(dsn: str) -> Iterator[SqlResults]:
    """Evaluate a filter in PostgreSQL over JSON documents, one query each call.

    Sync on purpose: hypothesis drives a plain function, so the connection
    lives on a loop of its own.
    """
    loop = asyncio.new_event_loop()
    connection: asyncpg.Connection = loop.run_until_complete(asyncpg.connect(dsn))

    def run(data_filter: DataFilter, documents: list[str]) -> list[tuple[str, bool]]:
        params: list[Any] = [documents]

        def bind(value: Any) -> str:
            params.append(value)
            return f"${len(params)}"

        # A column of a row source, as ev.data is, rather than a constant that
        # the planner could fold.
        sql = (f"SELECT d::text, {data_filter.to_sql('d', bind)}"
               " FROM unnest($1::text[]) WITH ORDINALITY AS u(doc, i),"
               " LATERAL (SELECT doc::jsonb AS d) AS t ORDER BY i")
        rows = loop.run_until_complete(connection.fetch(sql, *params))
        return [(row[0], row[1]) for row in rows]

    try:
        yield run
    finally:
        loop.run_until_complete(connection.close())
        loop.close()


def check_agreement(run: SqlResults, data_filter: DataFilter, documents: list[str]) -> None:
    for text, in_sql in run(data_filter, documents):
        assert in_sql is True or in_sql is False, "the SQL expression was NULL"
        try:
            decoded = orjson.loads(text)
        except orjson.JSONDecodeError:
            # A number beyond a double: such an event cannot be decoded, so
            # only the SQL side (which must not raise) ever sees it.
            continue
        assert data_filter.matches(decoded) is in_sql, (text, data_filter)
        # json.loads decodes the same text to the same values.
        assert data_filter.matches(json.loads(text)) is in_sql, (text, data_filter)


@pytest.mark.parametrize(("data", "pairs", "expected"), SEMANTICS)
def test_semantics_in_sql(sql_results: SqlResults, data: Any, pairs: Pairs, expected: bool) -> None:
    data_filter = parse(*pairs)
    ((_, in_sql),) = sql_results(data_filter, [json.dumps(data)])
    assert in_sql is expected


@settings(max_examples=1000, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(docs=st.lists(documents, min_size=1, max_size=4), data=st.data())
def test_python_and_sql_agree(sql_results: SqlResults, docs: list[Any], data: st.DataObject) -> None:
    hints = [leaf for doc in docs for leaf in leaves(doc)]
    pairs = data.draw(filter_pairs(hints), label="pairs")
    check_agreement(sql_results, parse(*pairs), [dump(d) for d in docs])


def test_float_rounding_edges_agree(sql_results: SqlResults) -> None:
    """Near the double's limits, the SQL branch order must not raise."""
    documents = [f'{{"a": {n}}}' for n in EDGE_NUMBERS]
    for operation in ("eq.0", "gt.0", "lt.5e-324", "eq.5e-324", "gte.1.7976931348623157e308",
                      "in.(1e-400,0.1,1e16)", "lt.1e400", "neq.0"):
        check_agreement(sql_results, parse(("data.a", operation)), documents)
    assert math.isfinite(orjson.loads(str(2**1024 - 2**970 - 1)))


# --- the live match index (sse_stream/engine/routing.py) ------------------------------------

TYPES = ["t", "u", "t.x"]


@st.composite
def selectors(draw: st.DrawFn, hints: Leaves) -> Selector:
    pattern = draw(st.sampled_from(["s", "s.a", "s.*", "s.>", ">", "*"]))
    types = parse_type_filter(draw(st.lists(st.sampled_from([*TYPES, "t*", "v"]), max_size=2)))
    data = parse(*draw(filter_pairs(hints))) if draw(st.integers(0, 4)) else None
    return Selector(parse_pattern_list(pattern), types, data)


@settings(max_examples=500, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(docs=st.lists(documents, min_size=1, max_size=4), data=st.data())
def test_match_index_reaches_every_group_that_matches(docs: list[Any],
                                                      data: st.DataObject) -> None:
    """Indexing groups by an eq/in condition (path, value) or by exact types
    leaves out only groups that cannot match: index then test equals
    testing every group, for every event."""
    hints = [leaf for doc in docs for leaf in leaves(doc)]
    groups = [Group(selector, False) for selector in
              data.draw(st.lists(selectors(hints), min_size=1, max_size=8), label="selectors")]
    routes = Routes()
    for group in groups:
        routes.add(group)
    removed = data.draw(st.sets(st.sampled_from(range(len(groups)))), label="removed")
    for index in removed:
        routes.remove(groups[index])
    for doc in docs:
        for stream in ("s", "s.a", "s.a.b"):
            event = Event.from_row(1, 1, stream, data.draw(st.sampled_from(TYPES)),
                                   dump(doc).encode(), "2026-11-29T00:00:00Z", 0.0)
            reached = {group for group in Routes.reach(event, routes.routes(stream))
                       if group.selector.accepts(event)}
            expected = {group for index, group in enumerate(groups) if index not in removed
                        and group.selector.matches_stream(event.stream)
                        and group.selector.accepts(event)}
            assert reached == expected
    for index in set(range(len(groups))) - removed:
        routes.remove(groups[index])
    assert routes.routes("s") == routes.routes("s.a.b") == []
