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
from worker.wire.result_schemas import result_document
from worker.wire.results import RESULT_FIELDS, render_result
from worker.wire.routing import ROUTE_HEADER
from worker.wire.rules import Rules
from worker.wire.sizes import header_size, record_size
from worker.wire.types import (
    ENCODE_ERROR,
    INFERENCE_ERROR,
    PRODUCE_ERROR,
    TOO_LARGE,
    Comment,
    Headers,
    InputRecord,
    Prediction,
    Rejection,
    Rendered,
)

RESULT, ROUTED, DEAD_LETTER = "result", "routed", "dead_letter"
# A shadow model's result (worker.pipeline.shadow): produced best effort, outside the offset accounting.
SHADOW = "shadow"


def with_trace(headers: Headers, trace_headers: Headers) -> Headers:
    """``headers`` with the worker's trace headers in place of the input's ones of the same names.

    With tracing on, the input's ``traceparent`` (copied through) gives way to one naming the
    worker's span for the record; ``tracestate`` and ``baggage`` stay as the input had them.
    """
    if not trace_headers:
        return headers
    names = {name.lower() for name, _ in trace_headers}
    return [(n, v) for n, v in headers if n.lower() not in names] + list(trace_headers)


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
    kind: str  # RESULT, ROUTED, DEAD_LETTER or SHADOW
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
    trace_headers: Headers = field(default_factory=list)  # the record's traceparent (tracing on), on every message

    @property
    def partition(self) -> tuple[str, int]:
        return (self.source.topic, self.source.partition)


@dataclass
class Renderer:
    """Turns finished entries into deliveries, each message within every destination's size limit.

    ``max_record_bytes(topic)`` is what the producer and that topic accept (read from the cluster
    at start); the size limit is the smallest of those and ``max_message_bytes``, less room for the
    routing header on copies and the rules version header on every record but a minimal dead letter.

    ``encode`` (WORKER_OUTPUT_FORMAT avro, protobuf, json_schema: the SchemaPort's) turns a result
    into the value for one destination topic, framed with that topic's schema id; a result it
    cannot encode, or that no longer fits once encoded, becomes the record's dead letter.
    """

    output_topic: str
    dlq_topic: str
    model_ref: dict[str, str]
    rules: Rules = field(default_factory=Rules)
    max_record_bytes: Callable[[str], int] = field(default=lambda topic: 1_000_000)
    max_message_bytes: int = 1_000_000
    fields: Sequence[str] = RESULT_FIELDS
    encode: Callable[[str, dict[str, Any]], bytes] | None = None
    _limit: int | None = None

    @property
    def limit(self) -> int:
        """The largest record every destination accepts."""
        if self._limit is None:  # the limits are known once the clients have started
            topics = [self.output_topic, self.dlq_topic, *(r.topic for r in self.rules.routes)]
            self._limit = min([self.max_message_bytes, *(self.max_record_bytes(t) for t in topics)])
        return self._limit

    def use(self, rules: Rules) -> None:
        """Render from now on under ``rules`` (a reload, between windows); their topics' limits count from now."""
        self.rules = rules
        self._limit = None

    def render(self, entry: Entry, now_ms: float, trace_headers: Headers | None = None) -> Delivery:
        """The result and its routed copies, or the dead letter, of one finished entry.

        ``trace_headers`` (tracing on: the record's ``traceparent``) go on every message, within the budget.
        """
        rules = self.rules  # one version of the rules for the whole record (a reload swaps them between windows)
        prediction = entry.prediction
        flagged = rules.flagged(prediction.probabilities) if prediction is not None and prediction.multi_label else ()
        version = rules.version_header
        trace_headers = trace_headers or []
        reserve = rules.route_reserve + header_size(*version) + sum(header_size(n, v) for n, v in trace_headers)
        out = render_record(entry.item, prediction, model=self.model_ref, now_ms=now_ms, max_bytes=self.limit,
                            reserve_bytes=reserve, fields=self.fields, flagged=flagged)
        headers = [*with_trace(out.headers, trace_headers), version]
        if out.reason is not None:
            messages = [Message(self.dlq_topic, out.key, out.value, headers, DEAD_LETTER, reason=out.reason)]
        else:
            assert out.prediction is not None
            label = out.prediction.label
            routes = rules.matching(out.prediction)
            values = self._encoded(out, headers, [self.output_topic, *(r.topic for r in routes)])
            if isinstance(values, Rejection):
                dead = self.dead_letter(entry.record, values.reason, values.detail, now_ms, trace_headers=trace_headers)
                return Delivery(entry.record, entry.epoch, [dead], arrived_at=entry.arrived_at,
                                trace_headers=trace_headers)
            messages = [Message(self.output_topic, out.key, values[self.output_topic], headers, RESULT, label=label)]
            for route in routes:
                routed_headers = [*headers, (ROUTE_HEADER, route.name.encode())]
                messages.append(Message(route.topic, out.key, values[route.topic], routed_headers, ROUTED, label=label,
                                        route=route.name))
        return Delivery(entry.record, entry.epoch, messages, arrived_at=entry.arrived_at, trace_headers=trace_headers)

    def _encoded(self, out: Rendered, headers: Headers, topics: list[str]) -> dict[str, bytes | None] | Rejection:
        """The result's value for each topic: the JSON itself, or encoded with each topic's result schema."""
        if self.encode is None:
            return {topic: out.value for topic in topics}
        values: dict[str, bytes | None] = {}
        try:
            document = result_document(out.value or b"{}")
            for topic in topics:
                values[topic] = self.encode(topic, document)
        except Exception as exc:  # noqa: BLE001 - this one result cannot be written: dead-letter it
            return Rejection(out.source, ENCODE_ERROR, f"result could not be encoded: {describe(exc)}")
        size = record_size(out.key, values[self.output_topic], headers)
        if size > self.limit - self.rules.route_reserve:
            return Rejection(out.source, TOO_LARGE, f"encoded result is {size} bytes, limit is {self.limit}")
        return values

    def replacement(self, delivery: Delivery, index: int, detail: str, now_ms: float) -> Message | None:
        """The dead letter that takes the place of ``delivery``'s message ``index``, refused for good.

        A result or routed copy is replaced by the record's dead letter (``produce_error``); a
        refused dead letter by a minimal one (its reason kept); a refused minimal dead letter by
        nothing (None): the dead-letter topic itself is the problem.
        """
        refused = delivery.messages[index]
        if refused.kind != DEAD_LETTER:
            return self.dead_letter(delivery.source, PRODUCE_ERROR, detail, now_ms, trace_headers=delivery.trace_headers)
        if not refused.minimal:
            return self.dead_letter(delivery.source, refused.reason or PRODUCE_ERROR, detail, now_ms, minimal=True)
        return None

    def dead_letter(self, record: InputRecord, reason: str, detail: str, now_ms: float, minimal: bool = False,
                    trace_headers: Headers | None = None) -> Message:
        """The dead letter of ``record``; ``minimal`` leaves out everything that could be refused (trace headers too)."""
        rejection = Rejection(record, reason, detail)
        if minimal:
            out = minimal_dead_letter(rejection)
            headers = out.headers
        else:
            version = self.rules.version_header
            trace_headers = trace_headers or []
            reserve = header_size(*version) + sum(header_size(n, v) for n, v in trace_headers)
            out = render_dead_letter(rejection, model_id=self.model_ref["id"], now_ms=now_ms, max_bytes=self.limit,
                                     reserve_bytes=reserve)
            headers = [*with_trace(out.headers, trace_headers), version]
        return Message(self.dlq_topic, out.key, out.value, headers, DEAD_LETTER, reason=reason)
