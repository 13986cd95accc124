"""Stream names, stream patterns (`*`, `>`) and type globs: parse and match.

Pure code. A stream name is 1 to 200 characters: segments of
``[A-Za-z0-9_-]`` joined by ``.``. A pattern is a name in which a segment may
be ``*`` (exactly one segment) and the last segment may be ``>`` (one or more
segments), as in NATS subjects. A type is 1 to 200 characters of
``[A-Za-z0-9_.:-]``; a type filter may end in ``*`` (a prefix glob).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Generic, TypeVar

from .errors import Refusal

MAX_NAME = 200
_SEGMENT = r"[A-Za-z0-9_-]+"
_NAME_RE = re.compile(rf"{_SEGMENT}(?:\.{_SEGMENT})*")
_SEGMENT_RE = re.compile(_SEGMENT)
_TYPE_RE = re.compile(r"[A-Za-z0-9_.:-]{1,200}")
RESERVED_TYPE_PREFIX = "sse."


def is_stream_name(value: str) -> bool:
    return len(value) <= MAX_NAME and _NAME_RE.fullmatch(value) is not None


def is_type_name(value: str) -> bool:
    return _TYPE_RE.fullmatch(value) is not None


def validate_stream_name(value: str, param: str = "stream") -> str:
    if not is_stream_name(value):
        raise Refusal(param, "a stream name is 1 to 200 characters: segments of "
                      "[A-Za-z0-9_-] joined by '.'")
    return value


def validate_type_name(value: str, param: str = "type") -> str:
    if not is_type_name(value):
        raise Refusal(param, "a type is 1 to 200 characters of [A-Za-z0-9_.:-]")
    return value


@dataclass(frozen=True)
class StreamPattern:
    """A parsed stream name or pattern."""

    text: str
    segments: tuple[str, ...]
    regex: re.Pattern[str] = field(compare=False, repr=False)

    @property
    def is_exact(self) -> bool:
        return "*" not in self.segments and ">" not in self.segments

    def matches(self, name: str) -> bool:
        return self.regex.fullmatch(name) is not None

    @property
    def literal_prefix(self) -> str:
        """The text every matching name starts with: the segments before the
        first wildcard, each followed by '.' ('' when the pattern starts with one)."""
        literal = []
        for segment in self.segments:
            if segment in ("*", ">"):
                break
            literal.append(segment + ".")
        return "".join(literal)

    @property
    def sql_regex(self) -> str:
        """The same pattern as a POSIX regular expression for PostgreSQL's `~`."""
        return "^" + self.regex.pattern + "$"

    def contains(self, other: StreamPattern) -> bool:
        """True if every stream `other` can match is matched by this pattern."""
        return _contains(self.segments, other.segments)


def _contains(outer: tuple[str, ...], inner: tuple[str, ...]) -> bool:
    if not outer:
        return not inner
    head = outer[0]
    if head == ">":
        return len(inner) >= 1
    if not inner or inner[0] == ">":
        return False
    if head == "*" or head == inner[0]:
        return _contains(outer[1:], inner[1:])
    return False


def parse_pattern(text: str, param: str = "streams") -> StreamPattern:
    """Parse one stream name or pattern; raises Refusal naming `param`."""
    if not text or len(text) > MAX_NAME:
        raise Refusal(param, f"stream pattern {text[:50]!r} must be 1 to 200 characters")
    segments = tuple(text.split("."))
    parts: list[str] = []
    for index, segment in enumerate(segments):
        if segment == "*":
            parts.append(_SEGMENT)
        elif segment == ">":
            if index != len(segments) - 1:
                raise Refusal(param, f"in {text!r}, '>' may only be the last segment")
            parts.append(rf"{_SEGMENT}(?:\.{_SEGMENT})*")
        elif _SEGMENT_RE.fullmatch(segment):
            parts.append(segment)
        else:
            raise Refusal(param, f"{text!r} is not a stream name or pattern: segments "
                          "are [A-Za-z0-9_-]+, '*' or a final '>'")
    return StreamPattern(text, segments, re.compile(r"\.".join(parts)))


@lru_cache(maxsize=4096)
def parse_pattern_list(text: str, param: str = "streams",
                       limit: int = 50) -> tuple[StreamPattern, ...]:
    """Parse a comma-separated list of patterns (duplicates removed, order kept).

    Cached: thousands of streams that ask for the same streams share one
    parsed tuple (the patterns are immutable); a refusal is not cached."""
    items = text.split(",")
    if len(items) > limit:
        raise Refusal(param, f"at most {limit} streams or patterns per subscription")
    seen: dict[str, StreamPattern] = {}
    for item in items:
        if item not in seen:
            seen[item] = parse_pattern(item, param)
    return tuple(seen.values())


@dataclass(frozen=True)
class TypeFilter:
    """`type=` values: exact types and prefix globs (`order.*`), ORed."""

    exact: frozenset[str]
    prefixes: tuple[str, ...]

    def matches(self, type_: str) -> bool:
        return type_ in self.exact or type_.startswith(self.prefixes)


def parse_type_filter(values: list[str], param: str = "type") -> TypeFilter | None:
    if not values:
        return None
    exact: set[str] = set()
    prefixes: list[str] = []
    for value in values:
        if value.endswith("*"):
            prefix = value[:-1]
            if prefix and not _TYPE_RE.fullmatch(prefix):
                raise Refusal(param, f"{value[:50]!r} is not a type or a type prefix glob")
            prefixes.append(prefix)
        else:
            validate_type_name(value, param)
            exact.add(value)
    return TypeFilter(frozenset(exact), tuple(prefixes))


T = TypeVar("T")


class _Node(Generic[T]):
    __slots__ = ("children", "star", "exact", "rest")

    def __init__(self) -> None:
        self.children: dict[str, _Node[T]] = {}
        self.star: _Node[T] | None = None  # the `*` segment
        self.exact: set[T] = set()  # values of patterns that end here
        self.rest: set[T] = set()  # values of patterns that end here with `>`

    def empty(self) -> bool:
        return not (self.children or self.star or self.exact or self.rest)


class SubjectTree(Generic[T]):
    """Values stored under stream patterns, found by the names they match.

    As in NATS: a name is matched by walking its segments down a tree of
    pattern segments, following the literal child and the `*` child at each
    level and collecting the `>` values on the way. The cost of `match` grows
    with the name's segments and the patterns that share its prefixes, not
    with the number of patterns stored.
    """

    def __init__(self) -> None:
        self._root: _Node[T] = _Node()
        self.size = 0

    def add(self, pattern: StreamPattern, value: T) -> None:
        node = self._root
        for segment in pattern.segments:
            if segment == ">":
                node.rest.add(value)
                self.size += 1
                return
            if segment == "*":
                if node.star is None:
                    node.star = _Node()
                node = node.star
            else:
                child = node.children.get(segment)
                if child is None:
                    child = node.children[segment] = _Node()
                node = child
        node.exact.add(value)
        self.size += 1

    def remove(self, pattern: StreamPattern, value: T) -> None:
        path: list[tuple[_Node[T], str]] = []
        node: _Node[T] | None = self._root
        for segment in pattern.segments:
            assert node is not None
            if segment == ">":
                break
            path.append((node, segment))
            node = node.star if segment == "*" else node.children.get(segment)
            if node is None:
                return
        assert node is not None
        found = node.rest if pattern.segments[-1] == ">" else node.exact
        if value not in found:
            return
        found.discard(value)
        self.size -= 1
        # Prune the branch back up while it holds nothing.
        for parent, segment in reversed(path):
            child = parent.star if segment == "*" else parent.children.get(segment)
            if child is None or not child.empty():
                break
            if segment == "*":
                parent.star = None
            else:
                del parent.children[segment]

    def match(self, name: str) -> set[T]:
        """The values of every stored pattern that matches stream `name`."""
        segments = name.split(".")
        last = len(segments)
        found: set[T] = set()
        pending = [(self._root, 0)]
        while pending:
            node, depth = pending.pop()
            if depth == last:
                found |= node.exact
                continue
            if node.rest:
                found |= node.rest  # `>`: one or more segments remain
            child = node.children.get(segments[depth])
            if child is not None:
                pending.append((child, depth + 1))
            if node.star is not None:
                pending.append((node.star, depth + 1))
        return found
