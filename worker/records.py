"""Decoding input records and encoding result and dead-letter records. No I/O here."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal, Sequence

Headers = list[tuple[str, bytes]]

# Reasons a record goes to the dead-letter topic; also the `reason` label of the counter.
INVALID_UTF8 = "invalid_utf8"
INVALID_JSON = "invalid_json"
NOT_AN_OBJECT = "not_an_object"
MISSING_TEXT = "missing_text"
EMPTY_TEXT = "empty_text"
TOO_LARGE = "too_large"
TOMBSTONE = "tombstone"
INFERENCE_ERROR = "inference_error"
NON_STRICT_JSON = "non_strict_json"
DECODE_ERROR = "decode_error"
TOKENIZE_ERROR = "tokenize_error"
ENCODE_ERROR = "encode_error"
PRODUCE_ERROR = "produce_error"
DEAD_LETTER_REASONS = (
    INVALID_UTF8, INVALID_JSON, NOT_AN_OBJECT, MISSING_TEXT, EMPTY_TEXT, TOO_LARGE, TOMBSTONE, INFERENCE_ERROR,
    NON_STRICT_JSON, DECODE_ERROR, TOKENIZE_ERROR, ENCODE_ERROR, PRODUCE_ERROR,
)

HEADER_PREFIX = "worker."


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


@dataclass(frozen=True)
class Comment:
    """A record that decoded into text to classify."""

    record: InputRecord
    text: str
    original: str | dict[str, Any]


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


def _lookup(obj: dict[str, Any], dotted: str) -> Any:
    current: Any = obj
    for part in dotted.split("."):
        if not isinstance(current, dict) or part not in current:
            return None
        current = current[part]
    return current


def decode(
    record: InputRecord,
    input_format: Literal["text", "json"],
    text_field: str = "text",
    max_bytes: int = 1_000_000,
) -> Comment | Rejection:
    """Turn a record into a Comment, or a Rejection naming the reason. Never raises."""
    value = record.value
    if value is None:
        return Rejection(record, TOMBSTONE, "record value is null (tombstone)")
    if len(value) > max_bytes:
        return Rejection(record, TOO_LARGE, f"value is {len(value)} bytes, limit is {max_bytes}")
    try:
        decoded = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejection(record, INVALID_UTF8, f"value is not UTF-8: {exc}")
    original: str | dict[str, Any] = decoded
    text: Any = decoded
    if input_format == "json":
        try:
            original = json.loads(decoded)
        except ValueError as exc:
            return Rejection(record, INVALID_JSON, f"value is not JSON: {exc}")
        if not isinstance(original, dict):
            return Rejection(record, NOT_AN_OBJECT, f"JSON value is a {type(original).__name__}, not an object")
        text = _lookup(original, text_field)
        if text is None:
            return Rejection(record, MISSING_TEXT, f"JSON object has no field {text_field!r}")
        if not isinstance(text, str):
            return Rejection(record, MISSING_TEXT, f"field {text_field!r} is a {type(text).__name__}, not a string")
    if not text.strip():
        return Rejection(record, EMPTY_TEXT, "text is empty or whitespace only")
    return Comment(record, text, original)


def decode_safely(
    record: InputRecord, input_format: Literal["text", "json"], text_field: str = "text", max_bytes: int = 1_000_000
) -> Comment | Rejection:
    """:func:`decode`, with anything it raises for this one record turned into a rejection."""
    try:
        return decode(record, input_format, text_field, max_bytes)
    except Exception as exc:  # noqa: BLE001 - RecursionError, MemoryError, ...: this record only
        return Rejection(record, DECODE_ERROR, f"{type(exc).__name__}: {exc}"[:1000])


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def source_of(record: InputRecord) -> dict[str, Any]:
    return {"topic": record.topic, "partition": record.partition, "offset": record.offset}


def latency_ms(record: InputRecord, now_ms: float) -> float | None:
    if record.timestamp_ms is None or record.timestamp_ms <= 0:
        return None
    return round(max(0.0, now_ms - record.timestamp_ms), 3)


def encode_result(
    comment: Comment,
    prediction: Prediction,
    model: dict[str, Any],
    now_ms: float,
) -> bytes:
    """The output record's value: see the README's output schema."""
    return _json_bytes(
        {
            "input": comment.original,
            "text": comment.text,
            "label": prediction.label,
            "score": prediction.score,
            "probabilities": prediction.probabilities,
            "truncated": prediction.truncated,
            "tokens": prediction.tokens,
            "model": model,
            "source": source_of(comment.record),
            "latency_ms": latency_ms(comment.record, now_ms),
            "classified_at": datetime.fromtimestamp(now_ms / 1000, timezone.utc).isoformat(timespec="milliseconds"),
        }
    )


def dead_letter_headers(rejection: Rejection, model_id: str, now_ms: float) -> Headers:
    """The input's headers untouched, then ``worker.*`` headers saying what went wrong."""
    record = rejection.record
    added = {
        "error.kind": rejection.reason,
        "error.reason": rejection.detail,
        "source.topic": record.topic,
        "source.partition": str(record.partition),
        "source.offset": str(record.offset),
        "model": model_id,
        "failed.at": datetime.fromtimestamp(now_ms / 1000, timezone.utc).isoformat(timespec="milliseconds"),
    }
    return list(record.headers) + [(HEADER_PREFIX + k, v.encode("utf-8")) for k, v in added.items()]


def header_value(headers: Sequence[tuple[str, bytes | None]] | None, name: str) -> str | None:
    for key, value in headers or ():
        if key == name:
            return None if value is None else value.decode("utf-8", "replace")
    return None
