"""Render: what each finished entry turns into — its result and routed copies, or its dead letter. No I/O.

This is the one place that decides what is produced for a record:

- :func:`render_record` turns a classified record into its result, or into a dead letter when it
  cannot be rendered or cannot fit; a Rejection becomes its dead letter. It never raises.
- :class:`Renderer` puts that into a :class:`Delivery` (the result, a copy per matching moderation
  route, or the dead letter) within every destination's size limit, and builds the dead letter
  that replaces a message the broker refused for good (:meth:`Renderer.replacement`).

A :class:`Delivery` groups every message one input record produces; the record counts as done
(its offset may be committed) once all of them are acknowledged. The bytes themselves (strict
JSON, sizes, headers) are :mod:`worker.wire`'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from worker.pipeline.intake import Entry
from worker.wire.dead_letters import minimal_dead_letter, render_dead_letter
from worker.wire.decoding import describe
from worker.wire.results import RESULT_FIELDS, render_result
from worker.wire.routing import ROUTE_HEADER
from worker.wire.rules import Rules
from worker.wire.sizes import header_size
from worker.wire.types import (
    ENCODE_ERROR,
    INFERENCE_ERROR,
    PRODUCE_ERROR,
    Comment,
    Headers,
    InputRecord,
    Prediction,
    Rejection,
    Rendered,
)

RESULT, ROUTED, DEAD_LETTER = "result", "routed", "dead_letter"


def render_record(
    item: Comment | Rejection,
    prediction: Prediction | None,
    *,
    model: dict[str, Any],
    now_ms: float,
    max_bytes: int,
    reserve_bytes: int = 0,
    fields: Sequence[str] = RESULT_FIELDS,
    flagged: Sequence[str] = (),
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
                reserve_bytes=reserve_bytes, fields=fields, flagged=flagged,
            )
        except Exception as exc:  # noqa: BLE001 - this one result cannot be written: dead-letter it
            outcome = Rejection(item.record, ENCODE_ERROR, f"result could not be encoded: {describe(exc)}")
    if isinstance(outcome, Rendered):
        return outcome
    return render_dead_letter(
        outcome, model_id=model_id, now_ms=now_ms, max_bytes=max_bytes, reserve_bytes=reserve_bytes
    )


@dataclass(frozen=True)
class Message:
    """One record to produce."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers
    kind: str  # RESULT, ROUTED or DEAD_LETTER
    reason: str | None = None  # the dead-letter reason
    label: str | None = None
    route: str | None = None

    @property
    def minimal(self) -> bool:
        """A dead letter with nothing left that could be refused (no key, no value)."""
        return self.key is None and self.value is None


@dataclass
class Delivery:
    """Everything one input record produces, and how much of it is still unacknowledged."""

    source: InputRecord
    epoch: int
    messages: list[Message]
    arrived_at: float = 0.0
    produced_at: float = 0.0
    pending: int = 0
    escalations: int = 0  # how often a message of it was refused for good and replaced by a dead letter

    @property
    def partition(self) -> tuple[str, int]:
        return (self.source.topic, self.source.partition)


@dataclass
class Renderer:
    """Turns finished entries into deliveries, each message within every destination's size limit.

    ``max_record_bytes(topic)`` is what the producer and that topic accept (read from the cluster
    at start); the size limit is the smallest of those and ``max_message_bytes``, less room for the
    routing header on copies.
    """

    output_topic: str
    dlq_topic: str
    model_ref: dict[str, str]
    rules: Rules = field(default_factory=Rules)
    max_record_bytes: Callable[[str], int] = field(default=lambda topic: 1_000_000)
    max_message_bytes: int = 1_000_000
    fields: Sequence[str] = RESULT_FIELDS
    _limit: int | None = None

    @property
    def limit(self) -> int:
        """The largest record every destination accepts."""
        if self._limit is None:  # the limits are known once the clients have started
            topics = [self.output_topic, self.dlq_topic, *(r.topic for r in self.rules.routes)]
            self._limit = min([self.max_message_bytes, *(self.max_record_bytes(t) for t in topics)])
        return self._limit

    @property
    def route_reserve(self) -> int:
        return max((header_size(ROUTE_HEADER, r.name.encode()) for r in self.rules.routes), default=0)

    def render(self, entry: Entry, now_ms: float) -> Delivery:
        """The result and its routed copies, or the dead letter, of one finished entry."""
        rules = self.rules  # one version of the rules for the whole record (a reload swaps them between windows)
        prediction = entry.prediction
        flagged = rules.flagged(prediction.probabilities) if prediction is not None and prediction.multi_label else ()
        out = render_record(entry.item, prediction, model=self.model_ref, now_ms=now_ms, max_bytes=self.limit,
                            reserve_bytes=self.route_reserve, fields=self.fields, flagged=flagged)
        if out.reason is not None:
            messages = [Message(self.dlq_topic, out.key, out.value, out.headers, DEAD_LETTER, reason=out.reason)]
        else:
            assert out.prediction is not None
            label = out.prediction.label
            messages = [Message(self.output_topic, out.key, out.value, out.headers, RESULT, label=label)]
            for route in rules.matching(out.prediction):
                routed_headers = [*out.headers, (ROUTE_HEADER, route.name.encode())]
                messages.append(Message(route.topic, out.key, out.value, routed_headers, ROUTED, label=label,
                                        route=route.name))
        return Delivery(entry.record, entry.epoch, messages, arrived_at=entry.arrived_at)

    def replacement(self, delivery: Delivery, index: int, detail: str, now_ms: float) -> Message | None:
        """The dead letter that takes the place of ``delivery``'s message ``index``, refused for good.

        A result or routed copy is replaced by the record's dead letter (``produce_error``); a
        refused dead letter by a minimal one (its reason kept); a refused minimal dead letter by
        nothing (None): the dead-letter topic itself is the problem.
        """
        refused = delivery.messages[index]
        if refused.kind != DEAD_LETTER:
            return self.dead_letter(delivery.source, PRODUCE_ERROR, detail, now_ms)
        if not refused.minimal:
            return self.dead_letter(delivery.source, refused.reason or PRODUCE_ERROR, detail, now_ms, minimal=True)
        return None

    def dead_letter(self, record: InputRecord, reason: str, detail: str, now_ms: float, minimal: bool = False) -> Message:
        """The dead letter of ``record``; ``minimal`` leaves out everything that could be refused."""
        rejection = Rejection(record, reason, detail)
        if minimal:
            out = minimal_dead_letter(rejection)
        else:
            out = render_dead_letter(rejection, model_id=self.model_ref["id"], now_ms=now_ms, max_bytes=self.limit)
        return Message(self.dlq_topic, out.key, out.value, out.headers, DEAD_LETTER, reason=reason)
