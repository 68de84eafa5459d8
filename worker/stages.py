"""The per-record stages of the loop: consumed records in, records to produce out. No Kafka, no threads.

- :func:`prepare` decodes every record of a poll (each in isolation) and tokenizes their texts in one
  call, falling back to text-by-text tokenizing when that call raises, to find the culprits.
- :func:`render` turns a classified record into its result, or into a dead letter when it cannot be
  rendered or cannot fit; a Rejection becomes its dead letter.

Both keep the promise "fail the record, never the worker": neither raises for anything one record
does. Every record yields exactly one item, in order.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal, Sequence

from worker.engines.base import Classifier, Encoding
from worker.wire.dead_letters import render_dead_letter
from worker.wire.decoding import decode, describe
from worker.wire.results import RESULT_FIELDS, render_result
from worker.wire.types import (
    ENCODE_ERROR,
    INFERENCE_ERROR,
    TOKENIZE_ERROR,
    Comment,
    InputRecord,
    Prediction,
    Rejection,
    Rendered,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prepared:
    """One consumed record after decoding and tokenizing: a Comment with its encoding, or a Rejection."""

    item: Comment | Rejection
    encoding: Encoding | None = None

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


def _encode_one(classifier: Classifier, comment: Comment) -> Prepared:
    try:
        encodings = classifier.encode([comment.text])
        encoding = encodings[0] if len(encodings) == 1 else None
    except Exception as exc:  # noqa: BLE001 - this text alone made the tokenizer fail
        return Prepared(Rejection(comment.record, TOKENIZE_ERROR, f"tokenizer failed: {describe(exc)}"))
    problem = _valid(encoding) if encoding is not None else "tokenizer returned no encoding"
    if problem is not None:
        return Prepared(Rejection(comment.record, TOKENIZE_ERROR, problem))
    return Prepared(comment, encoding)


def tokenize(classifier: Classifier, comments: Sequence[Comment]) -> list[Prepared]:
    """All texts in one ``classifier.encode`` call (fast); if it raises or answers oddly, text by text."""
    if not comments:
        return []
    try:
        encodings = classifier.encode([c.text for c in comments])
        if len(encodings) == len(comments) and all(_valid(e) is None for e in encodings):
            return [Prepared(c, e) for c, e in zip(comments, encodings)]
        reason = f"{len(encodings)} encodings for {len(comments)} texts, or an unusable one"
    except Exception as exc:  # noqa: BLE001 - find the culprits one by one below
        reason = describe(exc)
    log.warning("tokenizing %d texts at once failed (%s); tokenizing them one by one", len(comments), reason)
    return [_encode_one(classifier, c) for c in comments]


def prepare(
    records: Sequence[InputRecord],
    classifier: Classifier,
    *,
    input_format: Literal["text", "json"],
    text_field: str,
    max_bytes: int,
) -> list[Prepared]:
    """Decode and tokenize one poll's records: one :class:`Prepared` per record, in order. Never raises."""
    items = [decode(r, input_format, text_field, max_bytes) for r in records]
    comments = [i for i in items if isinstance(i, Comment)]
    tokenized = iter(tokenize(classifier, comments))
    return [next(tokenized) if isinstance(item, Comment) else Prepared(item) for item in items]


def render(
    item: Comment | Rejection,
    prediction: Prediction | None,
    *,
    model: dict[str, Any],
    now_ms: float,
    max_bytes: int,
    reserve_bytes: int = 0,
    fields: Sequence[str] = RESULT_FIELDS,
) -> Rendered:
    """The record to produce for one consumed record. Never raises.

    A Comment with its prediction becomes a result (``reason`` None) within ``max_bytes`` less
    ``reserve_bytes`` (headroom the caller keeps, e.g. for a routing header); if it cannot be
    rendered (``encode_error``), cannot fit (``too_large``) or its probabilities are not finite
    (``inference_error``), and for every Rejection, the result is a dead letter (``reason`` set).
    """
    model_id = str(model.get("id", "?")) if isinstance(model, dict) else "?"
    outcome: Rendered | Rejection
    if isinstance(item, Rejection):
        outcome = item
    elif prediction is None:
        outcome = Rejection(item.record, INFERENCE_ERROR, "no prediction for this text")
    else:
        try:
            outcome = render_result(
                item, prediction, model=model, now_ms=now_ms, max_bytes=max_bytes,
                reserve_bytes=reserve_bytes, fields=fields,
            )
        except Exception as exc:  # noqa: BLE001 - this one result cannot be written: dead-letter it
            outcome = Rejection(item.record, ENCODE_ERROR, f"result could not be encoded: {describe(exc)}")
    if isinstance(outcome, Rendered):
        return outcome
    return render_dead_letter(
        outcome, model_id=model_id, now_ms=now_ms, max_bytes=max_bytes, reserve_bytes=reserve_bytes
    )
