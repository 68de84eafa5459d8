"""Intake: a poll's records in, one :class:`Entry` per record out (decoded, tokenized). No Kafka, no threads.

:func:`decode_and_tokenize` decodes every record of a poll (each in isolation) and tokenizes their
texts in one call, falling back to text-by-text tokenizing when that call raises, to find the
culprits. It keeps the promise "fail the record, never the worker": it never raises for anything
one record does, and every record yields exactly one entry, in order.

With a Schema Registry format (``avro``, ``protobuf``, ``json_schema``) each value is unframed
(:mod:`worker.wire.framing`) and decoded through the :class:`~worker.wire.framing.SchemaPort`. A
registry that cannot be reached is no record's fault: :func:`take_in` stops at the first record
it could not decode for that reason and hands it and every later record back as ``held``, in
order, for the loop to offer again once the registry answers.

An :class:`Entry` is the shape a record keeps through the rest of the pipeline: the loop stamps it
with its partition's epoch, :mod:`.infer` adds its prediction (or turns it into a Rejection), and
:mod:`.render` turns it into what is produced.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

from worker.engines.base import Classifier, Encoding
from worker.wire.decoding import comment_of, decode, describe, unusable
from worker.wire.framing import (
    SCHEMA_FORMATS,
    NotFramed,
    RegistryUnreachable,
    SchemaPort,
    UndecodableBody,
    UnknownSchema,
    document_json,
    parse_frame,
)
from worker.wire.types import (
    NO_SCHEMA_HEADER,
    NOT_AN_OBJECT,
    TOKENIZE_ERROR,
    UNDECODABLE_BODY,
    UNKNOWN_SCHEMA,
    Comment,
    InputRecord,
    Prediction,
    Rejection,
)

log = logging.getLogger(__name__)


@dataclass
class Entry:
    """One consumed record on its way through the pipeline, with what became of it."""

    item: Comment | Rejection
    encoding: Encoding | None = None  # set for a Comment to classify
    epoch: int = 0  # its partition's epoch when it was consumed (set by the loop)
    arrived_at: float = 0.0  # when it was consumed (the loop's clock)
    prediction: Prediction | None = None  # set by inference
    trace: Any = None  # its trace context, when tracing is on (set by the loop; worker.tracing)

    @property
    def record(self) -> InputRecord:
        return self.item.record


def _valid(encoding: Any) -> str | None:
    """Why an encoding from the tokenizer cannot be classified, or None if it can."""
    if not isinstance(encoding, Encoding):
        return f"tokenizer returned {type(encoding).__name__}, not an Encoding"
    if not encoding.ids:
        return "tokenizer returned no tokens"
    return None


def _encode_one(classifier: Classifier, comment: Comment) -> Entry:
    try:
        encodings = classifier.encode([comment.text])
        encoding = encodings[0] if len(encodings) == 1 else None
    except Exception as exc:  # noqa: BLE001 - this text alone made the tokenizer fail
        return Entry(Rejection(comment.record, TOKENIZE_ERROR, f"tokenizer failed: {describe(exc)}"))
    problem = _valid(encoding) if encoding is not None else "tokenizer returned no encoding"
    if problem is not None:
        return Entry(Rejection(comment.record, TOKENIZE_ERROR, problem))
    return Entry(comment, encoding)


def tokenize(classifier: Classifier, comments: Sequence[Comment]) -> list[Entry]:
    """All texts in one ``classifier.encode`` call (fast); if it raises or answers oddly, text by text."""
    if not comments:
        return []
    try:
        encodings = classifier.encode([c.text for c in comments])
        if len(encodings) == len(comments) and all(_valid(e) is None for e in encodings):
            return [Entry(c, e) for c, e in zip(comments, encodings)]
        reason = f"{len(encodings)} encodings for {len(comments)} texts, or an unusable one"
    except Exception as exc:  # noqa: BLE001 - find the culprits one by one below
        reason = describe(exc)
    log.warning("tokenizing %d texts at once failed (%s); tokenizing them one by one", len(comments), reason)
    return [_encode_one(classifier, c) for c in comments]


def decode_framed(
    record: InputRecord, schemas: SchemaPort, schema_format: Any, text_field: str, max_bytes: int
) -> Comment | Rejection:
    """One Schema Registry record: a Comment or a Rejection; raises only RegistryUnreachable."""
    rejection = unusable(record, max_bytes)
    if rejection is not None:
        return rejection
    assert record.value is not None
    try:
        framed = parse_frame(record.value, schema_format)
    except NotFramed as exc:
        return Rejection(record, NO_SCHEMA_HEADER, str(exc))
    try:
        document = schemas.decode(schema_format, framed)
    except RegistryUnreachable:
        raise
    except UnknownSchema as exc:
        return Rejection(record, UNKNOWN_SCHEMA, f"schema id {framed.schema_id}: {exc}")
    except UndecodableBody as exc:
        return Rejection(record, UNDECODABLE_BODY, f"schema id {framed.schema_id}: {exc}")
    except Exception as exc:  # noqa: BLE001 - one record must never stop the worker
        return Rejection(record, UNDECODABLE_BODY, f"schema id {framed.schema_id}: {describe(exc)}")
    if not isinstance(document, dict):
        return Rejection(record, NOT_AN_OBJECT, f"decoded value is a {type(document).__name__}, not a record")
    return comment_of(record, document, text_field, document_json(document))


@dataclass
class Intake:
    """What :func:`take_in` made of a poll: entries in order, and the records it could not decode yet."""

    entries: list[Entry]
    held: list[InputRecord]  # from the first record the registry was needed for and could not answer
    why: str | None = None  # why they are held


def take_in(
    records: Sequence[InputRecord],
    classifier: Classifier,
    *,
    input_format: str,
    text_field: str,
    max_bytes: int,
    schemas: SchemaPort | None = None,
) -> Intake:
    """One poll's records: one :class:`Entry` per record, in order, up to the first held one. Never raises."""
    items: list[Comment | Rejection] = []
    held: list[InputRecord] = []
    why = None
    if input_format in SCHEMA_FORMATS:
        if schemas is None:
            raise ValueError(f"input format {input_format} needs a schema port")
        for index, record in enumerate(records):
            try:
                items.append(decode_framed(record, schemas, input_format, text_field, max_bytes))
            except RegistryUnreachable as exc:
                held, why = list(records[index:]), describe(exc)
                break
    else:
        items = [decode(r, input_format, text_field, max_bytes) for r in records]  # type: ignore[arg-type]
    comments = [i for i in items if isinstance(i, Comment)]
    tokenized = iter(tokenize(classifier, comments))
    entries = [next(tokenized) if isinstance(item, Comment) else Entry(item) for item in items]
    return Intake(entries, held, why)


def decode_and_tokenize(
    records: Sequence[InputRecord],
    classifier: Classifier,
    *,
    input_format: str,
    text_field: str,
    max_bytes: int,
) -> list[Entry]:
    """Text or JSON records: one :class:`Entry` per record, in order (schema formats: :func:`take_in`)."""
    return take_in(records, classifier, input_format=input_format, text_field=text_field, max_bytes=max_bytes).entries
