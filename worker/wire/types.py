"""The shapes a record takes on the wire, and why one can go to the dead-letter topic.

:class:`InputRecord` is what the Kafka adapter hands over; :func:`worker.wire.decoding.decode` turns it
into a :class:`Comment` or a :class:`Rejection`; a classified comment gets a :class:`Prediction`; and
:class:`Rendered` is what goes to ``produce()``, a result or a dead letter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

from worker.wire.sizes import record_size

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
# Schema Registry input (avro, protobuf, json_schema): no wire-format header, a schema id the
# registry does not know, a body that does not decode with its schema.
NO_SCHEMA_HEADER = "no_schema_header"
UNKNOWN_SCHEMA = "unknown_schema"
UNDECODABLE_BODY = "undecodable_body"
DEAD_LETTER_REASONS = (
    INVALID_UTF8, INVALID_JSON, NON_STRICT_JSON, NOT_AN_OBJECT, MISSING_TEXT, EMPTY_TEXT, TOO_LARGE, TOMBSTONE,
    DECODE_ERROR, TOKENIZE_ERROR, INFERENCE_ERROR, ENCODE_ERROR, PRODUCE_ERROR, NO_SCHEMA_HEADER, UNKNOWN_SCHEMA,
    UNDECODABLE_BODY,
)


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
    by :func:`worker.wire.decoding.decode`, surrounding whitespace removed): the result echoes them
    verbatim as ``input``. With a Schema Registry format it is the decoded record written as JSON.
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
    # True for a multi-label model: probabilities are independent sigmoids per category (they do not
    # sum to 1) and label/score name the most probable category only.
    multi_label: bool = False


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


def wire_time(now_ms: float) -> str:
    """A time as the wire writes it (``classified_at``, ``worker.failed.at``): ISO 8601, UTC, milliseconds."""
    return datetime.fromtimestamp(now_ms / 1000, timezone.utc).isoformat(timespec="milliseconds")
