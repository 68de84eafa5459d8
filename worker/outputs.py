"""What each consumed record turns into: the result, its routed copies, or a dead letter. No I/O.

A :class:`Delivery` groups every message one input record produces; the record counts as done
(its offset may be committed) once all of them are acknowledged. Rendering itself (strict JSON,
sizes, dead letters) is :mod:`worker.stages`' and :mod:`worker.wire`'.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable, Sequence

from worker.inference import Entry
from worker.stages import render
from worker.wire.dead_letters import minimal_dead_letter, render_dead_letter
from worker.wire.results import RESULT_FIELDS
from worker.wire.routing import ROUTE_HEADER, Route, matching
from worker.wire.sizes import header_size
from worker.wire.types import Headers, InputRecord, Rejection

RESULT, ROUTED, DEAD_LETTER = "result", "routed", "dead_letter"


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
    """Turns classified entries into deliveries, each message within every destination's size limit.

    ``max_record_bytes(topic)`` is what the producer and that topic accept (read from the cluster
    at start); the budget is the smallest of those and ``max_message_bytes``, less room for the
    routing header on copies.
    """

    output_topic: str
    dlq_topic: str
    model_ref: dict[str, str]
    routes: Sequence[Route] = ()
    max_record_bytes: Callable[[str], int] = field(default=lambda topic: 1_000_000)
    max_message_bytes: int = 1_000_000
    fields: Sequence[str] = RESULT_FIELDS
    _budget: int | None = None

    @property
    def budget(self) -> int:
        if self._budget is None:  # the limits are known once the clients have started
            topics = [self.output_topic, self.dlq_topic, *(r.topic for r in self.routes)]
            self._budget = min([self.max_message_bytes, *(self.max_record_bytes(t) for t in topics)])
        return self._budget

    @cached_property  # read for every record; the routes never change
    def route_reserve(self) -> int:
        return max((header_size(ROUTE_HEADER, r.name.encode()) for r in self.routes), default=0)

    def render(self, entry: Entry, now_ms: float) -> Delivery:
        record = entry.record
        out = render(entry.item, entry.prediction, model=self.model_ref, now_ms=now_ms, max_bytes=self.budget,
                     reserve_bytes=self.route_reserve, fields=self.fields)
        if out.reason is not None:
            messages = [Message(self.dlq_topic, out.key, out.value, out.headers, DEAD_LETTER, reason=out.reason)]
        else:
            assert out.prediction is not None
            label = out.prediction.label
            messages = [Message(self.output_topic, out.key, out.value, out.headers, RESULT, label=label)]
            for route in matching(self.routes, label, out.prediction.score):
                routed_headers = [*out.headers, (ROUTE_HEADER, route.name.encode())]
                messages.append(Message(route.topic, out.key, out.value, routed_headers, ROUTED, label=label,
                                        route=route.name))
        return Delivery(record, entry.epoch, messages, arrived_at=entry.arrived_at)

    def dead_letter(self, record: InputRecord, reason: str, detail: str, now_ms: float, minimal: bool = False) -> Message:
        """The dead letter of ``record``; ``minimal`` leaves out everything that could be refused."""
        rejection = Rejection(record, reason, detail)
        if minimal:
            out = minimal_dead_letter(rejection)
        else:
            out = render_dead_letter(rejection, model_id=self.model_ref["id"], now_ms=now_ms, max_bytes=self.budget)
        return Message(self.dlq_topic, out.key, out.value, out.headers, DEAD_LETTER, reason=reason)
