"""The kinds of value a setting holds, and the one duration grammar.

Each kind parses text (a flag or an environment variable), checks a value
(parsed, or given in Python), and describes itself and shows a value for
--help. A check raises ValueError; settings.py adds the flag's name.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from typing import Any

from .errors import Refusal
from .patterns import parse_pattern

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)?")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration(text: str) -> float:
    """Seconds from a number and an optional unit ms, s, m, h or d (w, weeks, is
    read too): `250ms`, `1.5` (a bare number is seconds), `30s`, `5m`, `12h`, `30d`."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a duration: a number and an optional unit ms, s, "
                         "m, h or d (250ms, 1.5, 30s, 5m, 12h, 30d)")
    return float(match[1]) * _UNITS[match[2] or "s"]


def format_duration(seconds: float) -> str:
    """The shortest spelling that `parse_duration` reads back: 15s, 5m, 1d, 250ms, 1.5s."""
    for unit in ("d", "h", "m", "s"):
        count = seconds / _UNITS[unit]
        if count >= 1 and count.is_integer():
            return f"{int(count)}{unit}"
    millis = round(seconds * 1000, 6)
    if 0 < seconds < 1 and millis.is_integer():
        return f"{int(millis)}ms"
    return f"{seconds:.6f}".rstrip("0").rstrip(".") + "s"


class Kind:
    """How the values of a setting are read from text, checked, and shown in --help."""

    metavar: str | None = None
    optional = False

    def value(self, given: Any) -> Any:
        """`given` as a value of this kind (text is parsed), checked; raises ValueError."""
        if isinstance(given, str):
            if self.optional and not given:
                return None
            given = self.parse(given)
        return None if given is None and self.optional else self.check(given)

    def parse(self, text: str) -> Any:
        return text

    def check(self, value: Any) -> Any:
        return value

    def describe(self, default: Any) -> str | None:
        """The kind of value, for --help (None: plain text or a switch)."""
        return None

    def show(self, value: Any) -> str:
        return "none" if value is None else str(value)


class Text(Kind):
    def __init__(self, optional: bool = False) -> None:
        self.optional = optional


class Switch(Kind):
    def parse(self, text: str) -> bool:
        word = text.strip().lower()
        if word in ("1", "true", "yes", "on"):
            return True
        if word in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{text!r} is neither true nor false (1/0, yes/no, on/off)")

    def check(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise ValueError(f"{value!r} is neither true nor false")
        return value

    def show(self, value: Any) -> str:
        return "on" if value else "off"


class Whole(Kind):
    metavar = "N"

    def __init__(self, low: int, high: int | None = None) -> None:
        self.low, self.high = low, high
        self.range = f"{low} or more" if high is None else f"{low} to {high}"

    def parse(self, text: str) -> int:
        try:
            return int(text.strip())
        except ValueError:
            raise ValueError(f"{text!r} is not a whole number") from None

    def check(self, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{value!r} is not a whole number")
        if value < self.low or (self.high is not None and value > self.high):
            raise ValueError(f"must be {self.range}, not {value}")
        return value

    def describe(self, default: Any) -> str:
        return f"a whole number, {self.range}"


class Duration(Kind):
    """Seconds, as a float; text by `parse_duration`."""

    metavar = "DURATION"

    def __init__(self, positive: bool = False, optional: bool = False,
                 example: str | None = None) -> None:
        self.positive, self.optional, self.example = positive, optional, example

    def parse(self, text: str) -> float:
        return parse_duration(text)

    def check(self, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{value!r} is not a duration")
        seconds = float(value)
        if not (seconds > 0 if self.positive else seconds >= 0):
            raise ValueError(f"must be {'more than' if self.positive else 'at least'} 0, "
                             f"not {seconds:g}")
        return seconds

    def describe(self, default: Any) -> str:
        return f"a duration: {self.example or self.show(default)}"

    def show(self, value: Any) -> str:
        return "none" if value is None else format_duration(value)


class Durations(Kind):
    """A comma list of durations, each above 0: a tuple of seconds."""

    metavar = "DURATIONS"

    def parse(self, text: str) -> tuple[float, ...]:
        return tuple(parse_duration(item) for item in text.split(",") if item.strip())

    def check(self, value: Any) -> tuple[float, ...]:
        if not isinstance(value, tuple | list) or not value:
            raise ValueError(f"{value!r}: expected durations such as 5s,30s,2m,10m,1h")
        return tuple(Duration(positive=True).value(item) for item in value)

    def describe(self, default: Any) -> str:
        return "durations, comma-separated"

    def show(self, value: Any) -> str:
        return ",".join(map(format_duration, value))


class Words(Kind):
    """A comma list of text: a tuple of str, each item checked by `item`."""

    metavar = "A,B"

    def __init__(self, item: Callable[[str], None] | None = None) -> None:
        self.item = item

    def parse(self, text: str) -> tuple[str, ...]:
        return tuple(item.strip() for item in text.split(",") if item.strip())

    def check(self, value: Any) -> tuple[str, ...]:
        if value is None:
            return ()
        if not isinstance(value, tuple | list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{value!r} is not a comma list")
        for item in value:
            if self.item is not None:
                self.item(item)
        return tuple(value)

    def describe(self, default: Any) -> str:
        return "a comma list"

    def show(self, value: Any) -> str:
        return ",".join(value) or "none"


class Choice(Kind):
    def __init__(self, options: Iterable[str], optional: bool = False, upper: bool = False,
                 also: Iterable[str] = ()) -> None:
        self.options, self.also = tuple(options), tuple(also)
        self.optional, self.upper = optional, upper

    def parse(self, text: str) -> str:
        return text.strip().upper() if self.upper else text.strip()

    def check(self, value: Any) -> str:
        if value not in self.options + self.also:
            raise ValueError(f"{value!r} is not one of {', '.join(self.options)}")
        return str(value)

    def describe(self, default: Any) -> str:
        return f"one of {', '.join(self.options)}"


def network(text: str) -> None:
    """Check an address or network (of a trusted proxy)."""
    ipaddress.ip_network(text, strict=False)  # ValueError: "'x' does not appear to be ..."


def port_number(text: str) -> None:
    """Check a TCP port number (of webhook targets)."""
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= 65535):
        raise ValueError(f"{text!r} is not a port (1 to 65535)")


def stream_pattern(text: str) -> None:
    """Check a stream pattern (of streams open to everyone)."""
    try:
        parse_pattern(text, "anonymous_subscribe")
    except Refusal as error:
        raise ValueError(error.detail) from None


SECONDS = Duration()
TEXT = Text()
OPTIONAL = Text(optional=True)
SWITCH = Switch()
