"""Intake: a poll's records in, one :class:`Entry` per record out (decoded, tokenized). No Kafka, no threads.

:func:`decode_and_tokenize` decodes every record of a poll (each in isolation) and tokenizes their
texts in one call, falling back to text-by-text tokenizing when that call raises, to find the
culprits. It keeps the promise "fail the record, never the worker": it never raises for anything
one record does, and every record yields exactly one entry, in order.

An :class:`Entry` is the shape a record keeps through the rest of the pipeline: the loop stamps it
with its partition's epoch, :mod:`.infer` adds its prediction (or turns it into a Rejection), and
:mod:`.render` turns it into what is produced.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal, Sequence

from worker.engines.base import Classifier, Encoding
from worker.wire.decoding import decode, describe
from worker.wire.types import TOKENIZE_ERROR, Comment, InputRecord, Prediction, Rejection

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


def decode_and_tokenize(
    records: Sequence[InputRecord],
    classifier: Classifier,
    *,
    input_format: Literal["text", "json"],
    text_field: str,
    max_bytes: int,
) -> list[Entry]:
    """One poll's records: one :class:`Entry` per record, in order. Never raises."""
    items = [decode(r, input_format, text_field, max_bytes) for r in records]
    comments = [i for i in items if isinstance(i, Comment)]
    tokenized = iter(tokenize(classifier, comments))
    return [next(tokenized) if isinstance(item, Comment) else Entry(item) for item in items]
