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

from .errors import InvalidInput

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
        raise InvalidInput(param, "a stream name is 1 to 200 characters: segments of "
                           "[A-Za-z0-9_-] joined by '.'")
    return value


def validate_type_name(value: str, param: str = "type") -> str:
    if not is_type_name(value):
        raise InvalidInput(param, "a type is 1 to 200 characters of [A-Za-z0-9_.:-]")
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
    """Parse one stream name or pattern; raises InvalidInput naming `param`."""
    if not text or len(text) > MAX_NAME:
        raise InvalidInput(param, f"stream pattern {text[:50]!r} must be 1 to 200 characters")
    segments = tuple(text.split("."))
    parts: list[str] = []
    for index, segment in enumerate(segments):
        if segment == "*":
            parts.append(_SEGMENT)
        elif segment == ">":
            if index != len(segments) - 1:
                raise InvalidInput(param, f"in {text!r}, '>' may only be the last segment")
            parts.append(rf"{_SEGMENT}(?:\.{_SEGMENT})*")
        elif _SEGMENT_RE.fullmatch(segment):
            parts.append(segment)
        else:
            raise InvalidInput(param, f"{text!r} is not a stream name or pattern: segments "
                               "are [A-Za-z0-9_-]+, '*' or a final '>'")
    return StreamPattern(text, segments, re.compile(r"\.".join(parts)))


def parse_pattern_list(text: str, param: str = "streams", limit: int = 50) -> tuple[StreamPattern, ...]:
    """Parse a comma-separated list of patterns (duplicates removed, order kept)."""
    items = text.split(",")
    if len(items) > limit:
        raise InvalidInput(param, f"at most {limit} streams or patterns per subscription")
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
                raise InvalidInput(param, f"{value[:50]!r} is not a type or a type prefix glob")
            prefixes.append(prefix)
        else:
            validate_type_name(value, param)
            exact.add(value)
    return TypeFilter(frozenset(exact), tuple(prefixes))
