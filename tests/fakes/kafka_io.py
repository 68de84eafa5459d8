"""An in-memory Kafka that implements :class:`worker.kafka_io.KafkaPort`, for unit tests of the loop.

It behaves like librdkafka where the loop's failure paths depend on it: several partitions,
delivery reports that arrive later (or fail), purged reports that arrive *after* an abort,
partitions without a committed offset, paused partitions, seeks, transactions whose calls fail
as scripted (retriable, abortable, fatal), auto-commit of stored offsets on revocation and close.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from worker.kafka_io import ClientEvents, DeliveryReport, KafkaCallError, Partition
from worker.policy import ClientError, ErrorKind
from worker.wire.types import Headers, InputRecord

PURGED = ClientError("_PURGE_QUEUE", "Local: Purged in queue", ErrorKind.PURGED)
TIMED_OUT = ClientError("_MSG_TIMED_OUT", "Local: Message timed out", ErrorKind.TIMED_OUT)
TOO_LARGE = ClientError("MSG_SIZE_TOO_LARGE", "Broker: Message size too large", ErrorKind.RECORD)
UNKNOWN_TOPIC = ClientError("UNKNOWN_TOPIC_OR_PART", "Broker: Unknown topic or partition", ErrorKind.DESTINATION)
DENIED = ClientError("TOPIC_AUTHORIZATION_FAILED", "Broker: Topic authorization failed", ErrorKind.ACCESS)
AUTH_FAILED = ClientError("_AUTHENTICATION", "SASL authentication error: Authentication failed", ErrorKind.ACCESS)
RETRIABLE = ClientError("_TIMED_OUT", "Local: Timed out", ErrorKind.TIMED_OUT, retriable=True)
ABORTABLE = ClientError("INVALID_TXN_STATE", "Broker: Invalid transaction state", ErrorKind.OTHER, txn_requires_abort=True)
FENCED = ClientError("_FENCED", "Local: This instance has been fenced by a newer instance", ErrorKind.FATAL,
                     fatal=True, fenced=True)


@dataclass
class Written:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers
    txn: int | None = None  # the transaction it was written in (None outside transactions)


@dataclass
class Queued:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers
    token: Any
    txn: int | None
    age: int = 0


@dataclass
class FakeKafka:
    """Construct with the worker's arguments: ``FakeKafka(settings, events, watchdog)``."""

    settings: Any
    events: ClientEvents
    watchdog: Any
    partitions: int = 3
    input: dict[int, list[InputRecord]] = field(default_factory=dict)
    committed: dict[Partition, int] = field(default_factory=dict)
    refuse_seeks: dict[Partition, int] = field(default_factory=dict)  # seeks refused per partition (scripted)
    # scripting
    delivery_delay: int = 0  # serve() calls a message waits before its report
    fail_delivery: Callable[[Queued], ClientError | None] = lambda message: None
    fail_produce: Callable[[str, bytes | None, bytes | None], ClientError | None] = lambda topic, key, value: None
    commit_errors: deque = field(default_factory=deque)  # raised by successive commit_transaction calls
    send_offsets_errors: deque = field(default_factory=deque)
    abort_errors: deque = field(default_factory=deque)
    queue_limit: int = 100_000
    record_limit: int = 1_000_000

    def __post_init__(self) -> None:
        self.transactional = self.settings.delivery == "exactly_once"
        self.read_committed = True
        self.topic = self.settings.input_topic
        self.assigned: list[Partition] = []
        self.paused: set[Partition] = set()
        self.position: dict[Partition, int] = {}
        self.stored: dict[Partition, int] = {}
        self.queue: list[Queued] = []
        self.reports: deque[DeliveryReport] = deque()
        self.late_reports: list[DeliveryReport] = []  # purged reports fire on the next serve()
        self.written: list[Written] = []
        self.txn_state: dict[int, str] = {}  # txn id -> open / committed / aborted
        self.txn: int | None = None
        self.txn_offsets: dict[Partition, int] = {}
        self.calls: list[str] = []
        self.started = False
        self.closed = False

    # --- test-side helpers ---
    def feed(self, partition: int, values: Sequence[bytes | None], keys: Sequence[bytes | None] | None = None) -> None:
        log = self.input.setdefault(partition, [])
        for i, value in enumerate(values):
            key = keys[i] if keys is not None else f"{partition}-{len(log)}".encode()
            log.append(InputRecord(self.topic, partition, len(log), key, value, [("h", b"v")], 1_000))

    def revoke(self, partitions: Sequence[Partition]) -> None:
        self.events.on_revoked(list(partitions))
        self._auto_commit(partitions)
        self.assigned = [p for p in self.assigned if p not in partitions]

    def visible(self, topic: str, read_committed: bool = True) -> list[Written]:
        return [
            w for w in self.written
            if w.topic == topic and (not read_committed or w.txn is None or self.txn_state.get(w.txn) == "committed")
        ]

    def _auto_commit(self, partitions: Sequence[Partition]) -> None:
        if not self.transactional:
            for p in partitions:
                if p in self.stored:
                    self.committed[p] = self.stored.pop(p)

    # --- KafkaPort ---
    def start(self, destination_topics: Sequence[str] = ()) -> None:
        self.started = True
        partitions = [(self.topic, p) for p in range(self.partitions)]
        self.assigned = list(partitions)
        for p in partitions:
            self.position[p] = self.committed.get(p, 0)
        self.events.on_assigned(list(partitions))

    def close(self, timeout_s: float, exit_code: int = 3) -> None:
        self.calls.append("close")
        if self.assigned:
            self.revoke(list(self.assigned))
        self.closed = True

    def poll(self, max_messages: int, timeout_s: float) -> list[InputRecord]:
        out: list[InputRecord] = []
        for p in self.assigned:
            if p in self.paused:
                continue
            log = self.input.get(p[1], [])
            while self.position[p] < len(log) and len(out) < max_messages:
                out.append(log[self.position[p]])
                self.position[p] += 1
        return out

    def pause(self, partitions: Sequence[Partition]) -> None:
        self.paused.update(p for p in partitions if p in self.assigned)

    def resume(self, partitions: Sequence[Partition]) -> None:
        self.paused.difference_update(partitions)

    def assignment(self) -> list[Partition]:
        return list(self.assigned)

    def seek(self, positions: Mapping[Partition, int]) -> dict[Partition, int]:
        self.calls.append(f"seek {dict(positions)}")
        failed: dict[Partition, int] = {}
        for p, offset in positions.items():
            if self.refuse_seeks.get(p, 0) > 0:
                # librdkafka's `_STATE` (not fetching): the fetch position stays where it was.
                self.refuse_seeks[p] -= 1
                failed[p] = offset
            elif p in self.assigned:
                self.position[p] = offset
        return failed

    def store_offsets(self, positions: Mapping[Partition, int]) -> None:
        self.stored.update({p: o for p, o in positions.items() if p in self.assigned})

    def max_record_bytes(self, topic: str) -> int:
        return self.record_limit

    def produce(self, topic: str, key: bytes | None, value: bytes | None, headers: Headers, token: Any) -> None:
        if self.transactional and self.txn is None:
            raise KafkaCallError("produce", ClientError("_STATE", "Local: Erroneous state", ErrorKind.OTHER))
        error = self.fail_produce(topic, key, value)
        if error is not None:
            raise KafkaCallError("produce", error)
        if len(self.queue) >= self.queue_limit:
            raise BufferError("Local: Queue full")
        self.queue.append(Queued(topic, key, value, list(headers), token, self.txn))

    def serve(self, timeout_s: float) -> None:
        self.reports.extend(self.late_reports)
        self.late_reports.clear()
        waiting = []
        stalled = False  # like a broker that is down: after a timeout nothing later gets through
        for message in self.queue:
            if stalled or message.age < self.delivery_delay:
                message.age += 1
                waiting.append(message)
                continue
            stalled = self._deliver(message) is TIMED_OUT
        self.queue = waiting

    def _deliver(self, message: Queued) -> ClientError | None:
        error = self.fail_delivery(message)
        if error is None:
            self.written.append(Written(message.topic, message.key, message.value, message.headers, message.txn))
        self.reports.append((message.token, error))
        return error

    def take_reports(self) -> list[DeliveryReport]:
        out = list(self.reports)
        self.reports.clear()
        return out

    def purge_queued(self) -> None:
        self.calls.append("purge")
        self.late_reports.extend((m.token, PURGED) for m in self.queue)
        self.queue = []

    def flush(self, timeout_s: float) -> int:
        self.delivery_delay = 0
        self.serve(0)
        return len(self.queue)

    def begin_transaction(self) -> None:
        self.calls.append("begin")
        assert self.txn is None, "begin_transaction inside a transaction"
        self.txn = len(self.txn_state) + 1
        self.txn_state[self.txn] = "open"
        self.txn_offsets = {}

    def send_offsets(self, positions: Mapping[Partition, int], timeout_s: float) -> None:
        self.calls.append(f"send_offsets {dict(positions)}")
        if self.send_offsets_errors:
            raise KafkaCallError("send_offsets_to_transaction", self.send_offsets_errors.popleft())
        assert self.txn is not None
        self.txn_offsets.update(positions)

    def commit_transaction(self, timeout_s: float) -> None:
        self.calls.append("commit")
        assert self.txn is not None, "commit_transaction outside a transaction"
        if self.commit_errors:
            raise KafkaCallError("commit_transaction", self.commit_errors.popleft())
        # commit flushes: every queued message of the transaction is delivered (or fails) first
        mine = [m for m in self.queue if m.txn == self.txn]
        self.queue = [m for m in self.queue if m.txn != self.txn]
        failed = False
        for message in mine:
            error = self.fail_delivery(message)
            if error is None:
                self.written.append(Written(message.topic, message.key, message.value, message.headers, message.txn))
            else:
                failed = True
            self.reports.append((message.token, error))
        if failed:
            raise KafkaCallError("commit_transaction", ClientError(
                "MSG_SIZE_TOO_LARGE", "a message of the transaction failed", ErrorKind.RECORD, txn_requires_abort=True))
        self.txn_state[self.txn] = "committed"
        self.committed.update(self.txn_offsets)
        self.txn = None

    def abort_transaction(self, timeout_s: float) -> None:
        self.calls.append("abort")
        if self.abort_errors:
            raise KafkaCallError("abort_transaction", self.abort_errors.popleft())
        assert self.txn is not None
        # librdkafka purges what was not sent; the reports arrive after abort_transaction returns
        mine = [m for m in self.queue if m.txn == self.txn]
        self.queue = [m for m in self.queue if m.txn != self.txn]
        self.late_reports.extend((m.token, PURGED) for m in mine)
        self.txn_state[self.txn] = "aborted"
        self.txn = None
