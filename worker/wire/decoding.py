"""Strict decoding of an input record into a Comment or a Rejection. Never raises.

:func:`decode` turns whatever one record does to the decoder into a :class:`Rejection` with a reason
from :data:`~worker.wire.types.DEAD_LETTER_REASONS` and a readable detail. JSON input is accepted only when a strict
parser would accept it too (RFC 8259: no ``NaN``/``Infinity``, no lone surrogate escapes, no number
outside the range of a 64-bit float), so the result can echo it *verbatim* as ``input`` rather than
parse and re-serialise it: what the consumer reads is exactly what the producer wrote.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Literal

from worker.wire.types import (
    DECODE_ERROR,
    EMPTY_TEXT,
    INVALID_JSON,
    INVALID_UTF8,
    MISSING_TEXT,
    NON_STRICT_JSON,
    NOT_AN_OBJECT,
    TOMBSTONE,
    TOO_LARGE,
    Comment,
    InputRecord,
    Rejection,
)


class _NotStrict(ValueError):
    """Raised from inside json.loads for input that RFC 8259 forbids or strict parsers refuse."""


def _refuse_constant(name: str) -> Any:
    raise _NotStrict(f"{name} is not valid JSON (RFC 8259 has no NaN or Infinity)")


def _shown(number: str) -> str:
    return number if len(number) <= 40 else f"{number[:20]}…({len(number)} characters)"


def _strict_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _NotStrict(f"number {_shown(text)} is outside the range of a 64-bit float (RFC 8259 section 6)")
    return value


def _strict_int(text: str) -> int:
    # A double holds integers up to ~1.8e308 (309 digits); strict parsers that read numbers as
    # doubles (Go, and JavaScript reads it as Infinity) refuse or mangle longer ones. Checking the
    # digit count first also keeps int() away from Python's 4300-digit conversion limit.
    digits = len(text) - text.startswith("-")
    if digits > 309 or (digits == 309 and math.isinf(float(text))):
        raise _NotStrict(f"number {_shown(text)} is outside the range of a 64-bit float (RFC 8259 section 6)")
    return int(text)


_STRICT_DECODER = json.JSONDecoder(
    parse_constant=_refuse_constant, parse_float=_strict_float, parse_int=_strict_int
)
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _find_lone_surrogate(document: Any) -> str | None:
    """A string of the parsed document (key or value) holding a lone surrogate, if any.

    json.loads joins escaped surrogate *pairs* into one code point, so any surrogate left over is
    lone. Iterative, so a deep document cannot overflow the stack here.
    """
    stack = [document]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return item
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def _lookup(obj: dict[str, Any], dotted: str) -> Any:
    current: Any = obj
    for part in dotted.split("."):
        if not isinstance(current, dict) or part not in current:
            return None
        current = current[part]
    return current


def describe(exc: BaseException) -> str:
    """``Type: message`` of an exception, never raising (even for an exception whose str() raises)."""
    try:
        message = str(exc)
    except Exception:  # noqa: BLE001 - a hostile __str__ must not escape
        message = "(message unavailable)"
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def decode(
    record: InputRecord,
    input_format: Literal["text", "json"],
    text_field: str = "text",
    max_bytes: int = 1_000_000,
) -> Comment | Rejection:
    """Turn a record into a Comment, or a Rejection naming the reason. Never raises."""
    try:
        return _decode(record, input_format, text_field, max_bytes)
    except RecursionError:
        return Rejection(record, DECODE_ERROR, "JSON is nested too deeply to decode (RecursionError)")
    except MemoryError:
        return Rejection(record, DECODE_ERROR, "ran out of memory while decoding this record (MemoryError)")
    except Exception as exc:  # noqa: BLE001 - one record must never stop the worker
        return Rejection(record, DECODE_ERROR, f"could not decode: {describe(exc)}")


def unusable(record: InputRecord, max_bytes: int) -> Rejection | None:
    """Why a record cannot be decoded whatever its format (unreadable, tombstone, too large), or None."""
    if record.unreadable is not None:
        return Rejection(record, DECODE_ERROR, record.unreadable)
    if record.value is None:
        return Rejection(record, TOMBSTONE, "record value is null (tombstone)")
    if len(record.value) > max_bytes:
        return Rejection(record, TOO_LARGE, f"value is {len(record.value)} bytes, limit is {max_bytes}")
    return None


def _decode(record: InputRecord, input_format: str, text_field: str, max_bytes: int) -> Comment | Rejection:
    rejection = unusable(record, max_bytes)
    if rejection is not None:
        return rejection
    value = record.value
    assert value is not None
    try:
        decoded = bytes(value).decode("utf-8")  # strict: also refuses UTF-8-encoded surrogates
    except UnicodeDecodeError as exc:
        return Rejection(record, INVALID_UTF8, f"value is not UTF-8: {exc}")
    text: Any = decoded
    raw_json: bytes | None = None
    if input_format == "json":
        try:
            document = _STRICT_DECODER.decode(decoded)
        except _NotStrict as exc:
            return Rejection(record, NON_STRICT_JSON, str(exc))
        except ValueError as exc:
            return Rejection(record, INVALID_JSON, f"value is not JSON: {exc}")
        if "\\u" in decoded and _SURROGATE_ESCAPE.search(decoded):
            lone = _find_lone_surrogate(document)
            if lone is not None:
                shown = lone.encode("utf-8", "backslashreplace").decode("ascii", "replace")
                return Rejection(
                    record, NON_STRICT_JSON, f"string {_shown(shown)!s} holds a lone surrogate escape (not Unicode)"
                )
        if not isinstance(document, dict):
            return Rejection(record, NOT_AN_OBJECT, f"JSON value is a {type(document).__name__}, not an object")
        # JSON whitespace around the document is legal but useless inside the result.
        return comment_of(record, document, text_field, bytes(value).strip(b" \t\r\n"), "JSON object")
    if not text.strip():
        return Rejection(record, EMPTY_TEXT, "text is empty or whitespace only")
    return Comment(record, text, raw_json)


def comment_of(
    record: InputRecord, document: dict[str, Any], text_field: str, raw_json: bytes | None, what: str = "record"
) -> Comment | Rejection:
    """The Comment of a decoded record (JSON, or a Schema Registry format): its text at ``text_field``."""
    text = _lookup(document, text_field)
    if text is None:
        return Rejection(record, MISSING_TEXT, f"{what} has no field {text_field!r}")
    if not isinstance(text, str):
        return Rejection(record, MISSING_TEXT, f"field {text_field!r} is a {type(text).__name__}, not a string")
    if not text.strip():
        return Rejection(record, EMPTY_TEXT, "text is empty or whitespace only")
    return Comment(record, text, raw_json)