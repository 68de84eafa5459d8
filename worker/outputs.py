"""What each consumed record turns into: the result, its routed copies, or a dead letter. No I/O.

A :class:`Delivery` groups every message one input record produces; the record counts as done
(its offset may be committed) once all of them are acknowledged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

from worker.inference import Entry
from worker.records import Headers, InputRecord, Rejection, dead_letter_headers, encode_result
from worker.routing import ROUTE_HEADER, Route, matching

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
    """Turns classified entries into deliveries, each message within its topic's size limit."""

    output_topic: str
    dlq_topic: str
    model_ref: dict[str, str]
    routes: Sequence[Route] = ()
    max_record_bytes: Callable[[str], int] = field(default=lambda topic: 1_000_000)

    def render(self, entry: Entry, now_ms: float) -> Delivery:
        record = entry.record
        item = entry.item
        if isinstance(item, Rejection) or entry.prediction is None:
            reason = item.reason if isinstance(item, Rejection) else "inference_error"
            detail = item.detail if isinstance(item, Rejection) else "no prediction"
            messages = [self.dead_letter(record, reason, detail, now_ms)]
        else:
            try:
                value = encode_result(item, entry.prediction, self.model_ref, now_ms)
            except Exception as exc:  # noqa: BLE001 - one record's encoding never stops the stream
                messages = [self.dead_letter(record, "encode_error", f"{type(exc).__name__}: {exc}", now_ms)]
            else:
                label = entry.prediction.label
                headers = list(record.headers)
                messages = [Message(self.output_topic, record.key, value, headers, RESULT, label=label)]
                for route in matching(self.routes, label, entry.prediction.score):
                    routed_headers = headers + [(ROUTE_HEADER, route.name.encode())]
                    messages.append(Message(route.topic, record.key, value, routed_headers, ROUTED, label=label, route=route.name))
        return Delivery(record, entry.epoch, messages, arrived_at=entry.arrived_at)

    def dead_letter(self, record: InputRecord, reason: str, detail: str, now_ms: float, minimal: bool = False) -> Message:
        """The dead letter of ``record``; ``minimal`` leaves out everything that could be refused."""
        headers = dead_letter_headers(Rejection(record, reason, detail), self.model_ref["id"], now_ms)
        if minimal:
            headers = [(k, v) for k, v in headers if k.startswith("worker.")]
            return Message(self.dlq_topic, None, None, headers, DEAD_LETTER, reason=reason)
        return Message(self.dlq_topic, record.key, record.value, headers, DEAD_LETTER, reason=reason)
