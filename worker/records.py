"""Decoding input records and rendering result and dead-letter records. No I/O here.

What this module guarantees (the README's "Output record" and "Dead-letter records" say it for users):

- :func:`decode` never raises: whatever one record does to the decoder ends in a :class:`Rejection`
  with a reason from :data:`DEAD_LETTER_REASONS` and a readable detail.
- A result value is strict RFC 8259 JSON in valid UTF-8: JSON input is accepted only when a strict
  parser would accept it too (no ``NaN``/``Infinity``, no lone surrogate escapes, no number outside
  the range of a 64-bit float), and it is then echoed *verbatim* as ``input`` rather than parsed and
  re-serialised, so what the consumer reads is exactly what the producer wrote.
- Every rendered record (result or dead letter) fits a byte budget counted the way librdkafka counts
  ``message.max.bytes`` (:func:`record_size`), or the caller is told it cannot.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Literal, Sequence

from worker.settings import RESULT_FIELDS

Headers = list[tuple[str, bytes | None]]

# Reasons a record goes to the dead-letter topic; also the `reason` label of the counter.
INVALID_UTF8 = "invalid_utf8"
INVALID_JSON = "invalid_json"
NON_STRICT_JSON = "non_strict_json"
NOT_AN_OBJECT = "not_an_object"
MISSING_TEXT = "missing_text"
EMPTY_TEXT = "empty_text"
TOO_LARGE = "too_large"
TOMBSTONE = "tombstone"
DECODE_ERROR = "decode_error"
TOKENIZE_ERROR = "tokenize_error"
INFERENCE_ERROR = "inference_error"
ENCODE_ERROR = "encode_error"
PRODUCE_ERROR = "produce_error"
DEAD_LETTER_REASONS = (
    INVALID_UTF8, INVALID_JSON, NON_STRICT_JSON, NOT_AN_OBJECT, MISSING_TEXT, EMPTY_TEXT, TOO_LARGE, TOMBSTONE,
    DECODE_ERROR, TOKENIZE_ERROR, INFERENCE_ERROR, ENCODE_ERROR, PRODUCE_ERROR,
)

HEADER_PREFIX = "worker."

# --- sizes, as librdkafka counts them ---
# librdkafka refuses a record in produce() when
#   RD_KAFKAP_MESSAGE_V2_MAX_OVERHEAD + len(key) + len(value) + serialized headers > message.max.bytes
# (rdkafka_msg.c, rd_kafka_msg_new0; rdkafka_proto.h). The overhead is the worst-case varints of a v2
# record: length 5 + attributes 1 + timestamp delta 10 + offset delta 5 + key length 5 + value length 5
# + header count 5 = 36 bytes. Each header counts its name and value bytes plus their zigzag varint
# lengths (rdkafka_header.c, rd_kafka_header_add); a null value counts as 0 bytes.
RECORD_OVERHEAD_BYTES = 36
# A record batch adds 61 bytes of header on the broker's side (max.message.bytes is checked per batch).
BATCH_OVERHEAD_BYTES = 61
# Kept free below every budget: the batch header above plus room for rounding in anyone's arithmetic.
SIZE_MARGIN_BYTES = 128
# Error details in dead-letter headers are cut to this many bytes (valid UTF-8).
DETAIL_MAX_BYTES = 1024


@dataclass(frozen=True)
class InputRecord:
    """A consumed Kafka record, detached from the Kafka client."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers = field(default_factory=list)
    timestamp_ms: int | None = None
    # Set by the Kafka adapter when part of the record could not be read (e.g. the client raised on
    # a header name that is not UTF-8); such a record is dead-lettered as `decode_error`.
    unreadable: str | None = None


@dataclass(frozen=True)
class Comment:
    """A record that decoded into text to classify.

    ``raw_json`` is the value's bytes with ``WORKER_INPUT_FORMAT=json`` (strict JSON in UTF-8, checked
    by :func:`decode`, surrounding whitespace removed): the result echoes them verbatim as ``input``.
    With text input it is None and ``input`` is the text itself.
    """

    record: InputRecord
    text: str
    raw_json: bytes | None = None


@dataclass(frozen=True)
class Rejection:
    """A record that cannot be classified, and why."""

    record: InputRecord
    reason: str
    detail: str


@dataclass(frozen=True)
class Prediction:
    label: str
    score: float
    probabilities: dict[str, float]
    truncated: bool
    tokens: int


@dataclass(frozen=True)
class Rendered:
    """A record ready for ``produce()``: a result (``reason`` None, output topic) or a dead letter (DLQ).

    The caller picks the topic; ``size`` is what librdkafka will count against ``message.max.bytes``.
    """

    key: bytes | None
    value: bytes | None
    headers: Headers
    source: InputRecord
    reason: str | None = None
    detail: str | None = None
    prediction: Prediction | None = None

    @property
    def size(self) -> int:
        return record_size(self.key, self.value, self.headers)


# --- decoding ---


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


def _decode(record: InputRecord, input_format: str, text_field: str, max_bytes: int) -> Comment | Rejection:
    if record.unreadable is not None:
        return Rejection(record, DECODE_ERROR, record.unreadable)
    value = record.value
    if value is None:
        return Rejection(record, TOMBSTONE, "record value is null (tombstone)")
    if len(value) > max_bytes:
        return Rejection(record, TOO_LARGE, f"value is {len(value)} bytes, limit is {max_bytes}")
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
        text = _lookup(document, text_field)
        if text is None:
            return Rejection(record, MISSING_TEXT, f"JSON object has no field {text_field!r}")
        if not isinstance(text, str):
            return Rejection(record, MISSING_TEXT, f"field {text_field!r} is a {type(text).__name__}, not a string")
        # JSON whitespace around the document is legal but useless inside the result.
        raw_json = bytes(value).strip(b" \t\r\n")
    if not text.strip():
        return Rejection(record, EMPTY_TEXT, "text is empty or whitespace only")
    return Comment(record, text, raw_json)


# --- sizes ---


def _varint_size(number: int) -> int:
    zigzag = number << 1  # librdkafka writes lengths as zigzag varints (non-negative here)
    size = 1
    while zigzag >= 0x80:
        zigzag >>= 7
        size += 1
    return size


def header_size(name: str, value: bytes | None) -> int:
    name_bytes = len(name.encode("utf-8", "backslashreplace"))
    value_bytes = len(value) if value is not None else 0
    return name_bytes + value_bytes + _varint_size(name_bytes) + _varint_size(value_bytes)


def record_size(key: bytes | None, value: bytes | None, headers: Iterable[tuple[str, bytes | None]]) -> int:
    """The size librdkafka compares with ``message.max.bytes`` in produce()."""
    return (
        RECORD_OVERHEAD_BYTES
        + (len(key) if key is not None else 0)
        + (len(value) if value is not None else 0)
        + sum(header_size(name, v) for name, v in headers)
    )


def budget(max_message_bytes: int, reserve_bytes: int = 0) -> int:
    """Bytes a record may take: the limit less the caller's reserve and :data:`SIZE_MARGIN_BYTES`."""
    return max_message_bytes - reserve_bytes - SIZE_MARGIN_BYTES


def cut_utf8(data: bytes, limit: int) -> bytes:
    """At most ``limit`` bytes of ``data``, not ending inside a UTF-8 sequence (when it is UTF-8)."""
    if limit <= 0:
        return b""
    if len(data) <= limit:
        return data
    end = limit  # data[end] is the first byte left out; a continuation byte (10xxxxxx) there means
    while end > limit - 3 and end > 0 and (data[end] & 0xC0) == 0x80:  # we are inside a character
        end -= 1
    return data[:end] if (data[end] & 0xC0) != 0x80 else data[:limit]


def header_text(text: str, limit: int = DETAIL_MAX_BYTES) -> bytes:
    """Any str as valid UTF-8 bytes for a header value, at most ``limit`` bytes."""
    encoded = text.encode("utf-8", "backslashreplace")  # lone surrogates become \udc80, still readable
    if len(encoded) <= limit:
        return encoded
    return cut_utf8(encoded, max(0, limit - 3)) + "…".encode()


def safe_header_name(name: Any) -> str:
    """A header name that librdkafka can take: a str that encodes to UTF-8.

    confluent-kafka hands a str name to librdkafka's C API; one that cannot be encoded (a lone
    surrogate) crashed the Python process in produce() when tried (confluent-kafka 2.16), so such
    names are made valid here with backslash escapes.
    """
    if isinstance(name, bytes):
        return name.decode("utf-8", "backslashreplace")
    if not isinstance(name, str):
        name = str(name)
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return name.encode("utf-8", "backslashreplace").decode("utf-8")


def safe_header_value(value: Any) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    return str(value).encode("utf-8", "backslashreplace")


def pass_through_headers(headers: Iterable[tuple[Any, Any]] | None) -> Headers:
    """The input's headers, made safe to produce (names encodable, values bytes or None)."""
    return [(safe_header_name(name), safe_header_value(value)) for name, value in headers or ()]


# --- results ---

# One encoder, built once (json.dumps with options builds a new one per call). allow_nan=False: a NaN
# or Infinity that slipped past the checks fails here (encode_error) instead of writing a value strict
# parsers refuse.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _json_bytes(obj: Any) -> bytes:
    return _ENCODER.encode(obj).encode("utf-8")


def source_of(record: InputRecord) -> dict[str, Any]:
    return {"topic": record.topic, "partition": record.partition, "offset": record.offset}


def latency_ms(record: InputRecord, now_ms: float) -> float | None:
    if record.timestamp_ms is None or record.timestamp_ms <= 0:
        return None
    return round(max(0.0, now_ms - record.timestamp_ms), 3)


def _utc(now_ms: float) -> str:
    return datetime.fromtimestamp(now_ms / 1000, timezone.utc).isoformat(timespec="milliseconds")


def non_finite(prediction: Prediction) -> bool:
    numbers = [prediction.score, *prediction.probabilities.values()]
    return not all(isinstance(n, (int, float)) and math.isfinite(n) for n in numbers)


def _assemble(input_json: bytes | None, text_json: bytes | None, small: dict[str, Any]) -> bytes:
    """The value: ``input`` and ``text`` spliced in as ready JSON bytes, then the small fields.

    One join, so a large value is copied once (each extra concatenation of a big value costs a fresh
    allocation and its page faults).
    """
    tail = _json_bytes(small)  # b'{"label":...}': never empty, label and score are always there
    parts = [b"{"]
    if input_json is not None:
        parts += [b'"input":', input_json, b","]
    if text_json is not None:
        parts += [b'"text":', text_json, b","]
    if len(parts) == 1:
        return tail
    parts.append(memoryview(tail)[1:])
    return b"".join(parts)


_TAIL_CHUNK = 4096  # code points measured at a time when cutting text from the end


def _longest_prefix(text: str, text_json: bytes, room: int) -> bytes:
    """The JSON string of the longest prefix of ``text`` (whole code points) taking at most ``room`` bytes.

    JSON escapes each code point on its own, so the JSON of a prefix is the full JSON (``text_json``)
    less the escaped bytes of the cut tail, closed by a quote. Measuring the tail from the end in chunks
    costs time in proportion to what is cut, not to the text's length.
    """
    excess = len(text_json) - room
    if excess <= 0:
        return text_json
    end = len(text)
    while end > 0:
        start = max(0, end - _TAIL_CHUNK)
        chunk_cost = len(_json_bytes(text[start:end])) - 2
        if chunk_cost < excess:
            excess -= chunk_cost
            end = start
            continue
        low, high = 1, end - start  # the shortest tail of this chunk whose cost covers the excess
        while low < high:
            middle = (low + high) // 2
            if len(_json_bytes(text[end - middle:end])) - 2 >= excess:
                high = middle
            else:
                low = middle + 1
        end -= low
        break
    kept = len(_json_bytes(text[end:])) - 2  # escaped bytes of the whole cut tail
    return text_json[: len(text_json) - 1 - kept] + b'"'


def render_result(
    comment: Comment,
    prediction: Prediction,
    *,
    model: dict[str, Any],
    now_ms: float,
    max_bytes: int,
    reserve_bytes: int = 0,
    fields: Sequence[str] = RESULT_FIELDS,
) -> Rendered | Rejection:
    """The result record within ``budget(max_bytes, reserve_bytes)``, or the Rejection saying why not.

    Too large: ``input`` is left out first, then ``text`` is cut to a prefix (whole code points), and
    ``"cut": {"input": ..., "text": ..., "text_length": ...}`` says so. If even that cannot fit (a huge
    key or headers), the Rejection is ``too_large``. Non-finite probabilities give ``inference_error``.
    """
    record = comment.record
    if non_finite(prediction):
        return Rejection(record, INFERENCE_ERROR, f"model returned non-finite probabilities {prediction.probabilities}")
    headers = pass_through_headers(record.headers)
    limit = budget(max_bytes, reserve_bytes) - record_size(record.key, None, headers)
    small: dict[str, Any] = {}  # in output order
    if "label" in fields:
        small["label"] = str(prediction.label)
    if "score" in fields:
        small["score"] = float(prediction.score)
    if "probabilities" in fields:
        small["probabilities"] = {str(k): float(v) for k, v in prediction.probabilities.items()}
    if "truncated" in fields:
        small["truncated"] = bool(prediction.truncated)
    if "tokens" in fields:
        small["tokens"] = int(prediction.tokens)
    if "model" in fields:
        small["model"] = model
    if "source" in fields:
        small["source"] = source_of(record)
    if "latency_ms" in fields:
        small["latency_ms"] = latency_ms(record, now_ms)
    if "classified_at" in fields:
        small["classified_at"] = _utc(now_ms)
    # The text is encoded once: for the "text" field, and as the echo of plain-text input; lean
    # results (neither field) skip it, whatever the text's size.
    echo_text = "input" in fields and comment.raw_json is None
    text_json = _json_bytes(comment.text) if "text" in fields or echo_text else None
    input_json = (text_json if echo_text else comment.raw_json) if "input" in fields else None
    if "text" not in fields:
        text_json = None
    value = _assemble(input_json, text_json, small)
    if len(value) > limit and input_json is not None:
        input_json = None
        small["cut"] = {"input": True, "text": False, "text_length": len(comment.text)}
        value = _assemble(None, text_json, small)
    if len(value) > limit and text_json is not None:
        small["cut"] = {"input": "input" in fields, "text": True, "text_length": len(comment.text)}
        room = limit - len(_assemble(None, b"", small))  # bytes left for the text's JSON string
        if room >= 2:  # at least the quotes of an empty string
            value = _assemble(None, _longest_prefix(comment.text, text_json, room), small)
    if len(value) > limit:
        return Rejection(
            record,
            TOO_LARGE,
            f"result does not fit in {max_bytes} bytes even without its text: key "
            f"{len(record.key or b'')} bytes, {len(headers)} headers "
            f"{sum(header_size(n, v) for n, v in headers)} bytes",
        )
    return Rendered(record.key, value, headers, record, None, None, prediction)


# --- dead letters ---


def dead_letter_headers(rejection: Rejection, model_id: str, now_ms: float) -> Headers:
    """The input's headers (made safe to produce), then ``worker.*`` headers saying what went wrong."""
    return pass_through_headers(rejection.record.headers) + _worker_headers(rejection, model_id, now_ms)


def _worker_headers(rejection: Rejection, model_id: str, now_ms: float) -> Headers:
    record = rejection.record
    try:
        failed_at = _utc(now_ms)
    except Exception:  # noqa: BLE001 - an absurd clock must not cost the dead letter
        failed_at = "unknown"
    return [
        ("worker.error.kind", header_text(str(rejection.reason), 64)),
        ("worker.error.reason", header_text(str(rejection.detail))),
        ("worker.source.topic", header_text(str(record.topic), 512)),
        ("worker.source.partition", str(record.partition).encode()),
        ("worker.source.offset", str(record.offset).encode()),
        ("worker.model", header_text(str(model_id), 512)),
        ("worker.failed.at", failed_at.encode()),
    ]


def _size_header(name: str, size: int) -> tuple[str, bytes]:
    return (f"worker.original.{name}", str(size).encode())


def render_dead_letter(
    rejection: Rejection, *, model_id: str, now_ms: float, max_bytes: int, reserve_bytes: int = 0
) -> Rendered:
    """The dead letter: original key, value and headers plus ``worker.*`` headers, within the budget.

    Too large: the value is cut first, then the original headers are dropped, then the key is cut;
    ``worker.original.value.bytes`` (``.key.bytes``, ``.headers.bytes``/``.headers.count``) give the
    original sizes. Never raises: if anything goes wrong, a minimal dead letter without key and value.
    """
    try:
        return _dead_letter(rejection, model_id, now_ms, budget(max_bytes, reserve_bytes))
    except Exception:  # noqa: BLE001 - the last resort below builds only from ints and short strings
        return minimal_dead_letter(rejection)


def _dead_letter(rejection: Rejection, model_id: str, now_ms: float, limit: int) -> Rendered:
    record = rejection.record
    key = None if record.key is None else bytes(record.key)
    value = None if record.value is None else bytes(record.value)
    original = pass_through_headers(record.headers)
    ours = _worker_headers(rejection, model_id, now_ms)

    def done(k: bytes | None, v: bytes | None, headers: Headers) -> Rendered:
        return Rendered(k, v, headers, record, rejection.reason, rejection.detail)

    if record_size(key, value, original + ours) <= limit:
        return done(key, value, original + ours)
    # 1. cut the value
    value_size = len(value) if value is not None else 0
    marked = ours + [_size_header("value.bytes", value_size)]
    room = limit - record_size(key, None, original + marked)
    if room >= 0:
        return done(key, None if value is None else cut_utf8(value, room), original + marked)
    # 2. drop the original headers (the value gets whatever room that frees)
    marked += [
        _size_header("headers.count", len(original)),
        _size_header("headers.bytes", sum(header_size(n, v) for n, v in original)),
    ]
    room = limit - record_size(key, None, marked)
    if room >= 0:
        return done(key, None if value is None else cut_utf8(value, room), marked)
    # 3. cut the key; the value is left empty
    marked += [_size_header("key.bytes", len(key or b""))]
    room = limit - record_size(None, b"", marked)
    if room >= 0:
        return done(cut_utf8(key or b"", room), None if value is None else b"", marked)
    return minimal_dead_letter(rejection)


def minimal_dead_letter(rejection: Rejection) -> Rendered:
    """The smallest dead letter there is: reason and provenance, no key, no value."""
    record = rejection.record
    headers: Headers = [("worker.error.kind", str(rejection.reason).encode("ascii", "replace")[:64])]
    for name, number in (("partition", record.partition), ("offset", record.offset)):
        try:
            headers.append((f"worker.source.{name}", str(int(number)).encode()))
        except Exception:  # noqa: BLE001 - provenance is best effort here
            pass
    try:
        headers.insert(1, ("worker.source.topic", header_text(str(record.topic), 256)))
    except Exception:  # noqa: BLE001
        pass
    return Rendered(None, None, headers, record, str(rejection.reason), None)


def header_value(headers: Sequence[tuple[str, bytes | None]] | None, name: str) -> str | None:
    for key, value in headers or ():
        if key == name:
            return None if value is None else value.decode("utf-8", "replace")
    return None
