"""An in-memory Kafka that implements :class:`worker.kafka_io.replay_clients.ReplayPort`, for unit tests
of ``worker replay``: topics as lists of records per partition, scripted delivery failures, a reader
that can stall."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from worker.kafka_io.port import DeliveryReport
from worker.kafka_io.replay_clients import TopicSnapshot
from worker.policy import ClientError
from worker.wire.types import Headers, InputRecord


@dataclass
class Produced:
    topic: str
    partition: int | None
    key: bytes | None
    value: bytes | None
    headers: Headers


@dataclass
class FakeReplayKafka:
    topics: dict[str, dict[int, list[InputRecord]]] = field(default_factory=dict)
    produced: list[Produced] = field(default_factory=list)
    fail_tokens: dict[Any, ClientError] = field(default_factory=dict)  # token -> delivery error
    stall: bool = False  # the reader returns nothing, ever
    producers_made: int = 0
    closed: bool = False
    _reports: list[DeliveryReport] = field(default_factory=list)
    _positions: dict[int, int] = field(default_factory=dict)
    _ends: dict[int, int] = field(default_factory=dict)
    _topic: str = ""

    def snapshot(self, topic: str, timeout_s: float) -> TopicSnapshot | None:
        if topic not in self.topics:
            return None
        return TopicSnapshot(topic, {p: (0, len(records)) for p, records in self.topics[topic].items()})

    def partition_count(self, topic: str, timeout_s: float) -> int | None:
        return len(self.topics[topic]) if topic in self.topics else None

    def start_reading(self, snapshot: TopicSnapshot) -> None:
        self._topic = snapshot.topic
        self._ends = {p: end for p, (first, end) in snapshot.ranges.items() if end > first}
        self._positions = {p: snapshot.ranges[p][0] for p in self._ends}

    def done_reading(self) -> bool:
        return not self._ends

    def read(self, max_messages: int, timeout_s: float) -> list[InputRecord]:
        if self.stall:
            return []
        out: list[InputRecord] = []
        for partition in sorted(self._ends):
            while self._positions[partition] < self._ends[partition] and len(out) < max_messages:
                out.append(self.topics[self._topic][partition][self._positions[partition]])
                self._positions[partition] += 1
            if self._positions[partition] >= self._ends[partition]:
                del self._ends[partition]
        return out

    def produce(self, topic: str, partition: int | None, key: bytes | None, value: bytes | None,
                headers: Headers, token: Any) -> None:
        self.producers_made = self.producers_made or 1
        self.produced.append(Produced(topic, partition, key, value, list(headers)))
        self._reports.append((token, self.fail_tokens.get(token)))
        if token not in self.fail_tokens and topic in self.topics:
            target = self.topics[topic].setdefault(partition or 0, [])
            target.append(InputRecord(topic, partition or 0, len(target), key, value, list(headers)))

    def serve(self, timeout_s: float) -> None:
        pass

    def take_reports(self) -> list[DeliveryReport]:
        reports, self._reports = self._reports, []
        return reports

    def flush(self, timeout_s: float) -> int:
        return 0

    def last_error(self) -> ClientError | None:
        return None

    def close(self, timeout_s: float) -> None:
        self.closed = True
