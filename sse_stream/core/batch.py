"""A batch of events for one stream, checked before anything is written.

Pure code. The HTTP body and the command line's JSON Lines become a `Batch`;
`EventStore.publish` writes it in one statement from one JSON array, the
form `sse_stream.publish_many` takes too. The array is the client's own JSON
text (checked here, not re-encoded), so numbers keep the precision the client
wrote; the database does not check the items a second time.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from .errors import Refusal
from .patterns import RESERVED_TYPE_PREFIX, validate_stream_name, validate_type_name

MAX_ITEMS = 1000
MAX_KEY = 255
_KEY_RE = re.compile(rf"[\x20-\x7e]{{1,{MAX_KEY}}}")
# PostgreSQL's jsonb cannot hold U+0000. In orjson's output a NUL is always
# the escape \u0000, and a backslash before it is itself escaped (\\), so an
# odd run of backslashes before "u0000" is a NUL.
_NUL_ESCAPE = b"\\u0000"
_NUL_RE = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


@dataclass(frozen=True)
class Batch:
    """Checked events of one stream.

    `events_json` is a JSON array of {"type", "data"} objects (the form
    `sse_stream.publish_many` takes), every item checked. `fingerprint`
    identifies the request for idempotent retries: a SHA-256 of the stream
    and the events as JSON values (key order and whitespace do not count);
    None unless asked for.
    """

    stream: str
    events_json: str
    count: int
    fingerprint: bytes | None = None


def parse_body(stream: str, body: bytes, *, fingerprint: bool = False) -> Batch:
    """An HTTP publish body: one {"type", "data"} object or an array of them.

    Every item is checked before anything is written; a refusal names the
    item's index and field (`body[3].type`).
    """
    validate_stream_name(stream, "stream")
    # With a key given twice orjson keeps the last value, as jsonb does,
    # so what is checked here is what the database stores.
    document = _load(body)
    single = not isinstance(document, list)
    items: list[Any] = [document] if single else document
    if not items or len(items) > MAX_ITEMS:
        raise Refusal("body", f"send one event object or an array of 1 to {MAX_ITEMS}")
    for index, item in enumerate(items):
        _check_item(item, "body" if single else f"body[{index}]")
    if _NUL_ESCAPE in body:
        for index, item in enumerate(items):
            if _NUL_RE.search(orjson.dumps(item)):
                where = "body" if single else f"body[{index}]"
                raise Refusal(f"{where}.data",
                              "JSON text cannot contain \\u0000 (PostgreSQL jsonb refuses it)")
    text = body.decode()
    return Batch(stream, f"[{text}]" if single else text, len(items),
                 _fingerprint(stream, items) if fingerprint else None)


MAX_DEPTH = 128  # orjson writes at most 254 levels; the envelope adds one
def _load(body: bytes) -> Any:
    """Parse a publish body, refusing with a clear 400 what JSON allows but
    this server cannot carry: nesting deeper than orjson can write back."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        reason = str(error.msg)
        if "depth" in reason or "recursion" in reason:
            raise Refusal("body", f"JSON nested deeper than {MAX_DEPTH} levels") from None
        if "infinity" in reason:
            raise Refusal("body", "a number is too large for a 64-bit float") from None
        raise Refusal("body", f"not valid JSON (UTF-8): {reason} at line {error.lineno} "
                      f"column {error.colno}") from None
    _check_depth(document)
    return document


def _check_depth(document: Any) -> None:
    pending: list[tuple[Any, int]] = [(document, 0)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, (list, dict)):
            if depth >= MAX_DEPTH:
                raise Refusal("body", f"JSON nested deeper than {MAX_DEPTH} levels")
            pending.extend((item, depth + 1)
                           for item in (value if isinstance(value, list) else value.values()))


def data_batch(stream: str, type_: str, lines: Iterable[bytes], first_line: int = 1) -> Batch:
    """Events of one type whose data are lines of JSON (the command line's).

    Blank lines are skipped. A line that is not JSON is refused as
    `line N`, numbering `lines` from `first_line`.
    """
    validate_stream_name(stream, "STREAM")
    validate_type_name(type_, "TYPE")
    if type_.startswith(RESERVED_TYPE_PREFIX):
        raise Refusal("TYPE", "types starting with 'sse.' are reserved")
    parts = []
    for number, line in enumerate(lines, first_line):
        line = line.strip()
        if not line:
            continue
        try:
            orjson.loads(line)
        except orjson.JSONDecodeError as error:
            raise Refusal(f"line {number}", f"not JSON: {error}") from None
        if _NUL_RE.search(line):
            raise Refusal(f"line {number}", "JSON text cannot contain \\u0000")
        # The type is [A-Za-z0-9_.:-] only: it needs no escaping.
        parts.append(b'{"type":"%s","data":%s}' % (type_.encode(), line))
    return Batch(stream, (b"[" + b",".join(parts) + b"]").decode(), len(parts))


def validate_idempotency_key(value: str) -> str:
    """An Idempotency-Key: 1 to 255 printable ASCII characters, opaque."""
    if _KEY_RE.fullmatch(value) is None:
        raise Refusal("Idempotency-Key",
                      f"1 to {MAX_KEY} printable ASCII characters (a UUID is a good key)")
    return value


def _check_item(item: Any, where: str) -> None:
    if not isinstance(item, dict):
        raise Refusal(where, "each event is an object with type and data")
    unknown = set(item) - {"type", "data"}
    if unknown:
        raise Refusal(f"{where}.{sorted(unknown)[0]}", "unknown field")
    type_ = item.get("type")
    if not isinstance(type_, str):
        raise Refusal(f"{where}.type", "required, a string")
    validate_type_name(type_, f"{where}.type")
    if type_.startswith(RESERVED_TYPE_PREFIX):
        raise Refusal(f"{where}.type", "types starting with 'sse.' are reserved")


def _fingerprint(stream: str, items: list[Any]) -> bytes:
    # Missing data is written as null, so it is null here too.
    canonical = orjson.dumps([[item["type"], item.get("data")] for item in items],
                             option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(stream.encode() + b"\n" + canonical).digest()
