"""Thin typed wrappers around confluent-kafka, and offset tracking.

The only module that imports ``confluent_kafka``. The loop sees plain
:class:`~worker.records.InputRecord` objects and (topic, partition) tuples.
"""

from __future__ import annotations

import json
import logging
import operator
import socket
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from confluent_kafka import (
    OFFSET_INVALID,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)

from worker.errors import KafkaFatalError
from worker.records import Headers, InputRecord
from worker.settings import Settings

log = logging.getLogger(__name__)
# librdkafka's own log lines go through Python logging, so JSON logs stay one object per line.
_LIBRDKAFKA_LOG = logging.getLogger("librdkafka")

Partition = tuple[str, int]
DeliveryReport = tuple[Any, str | None]  # (token, error text or None)


class OffsetTracker:
    """Which offsets of each partition may be committed.

    An offset is committable once it and every earlier offset consumed from
    its partition are done (result or dead letter acknowledged). The commit
    position is the next offset to read, as Kafka expects.
    """

    def __init__(self) -> None:
        self._pending: dict[Partition, deque[int]] = {}
        self._done: dict[Partition, set[int]] = {}
        self._position: dict[Partition, int] = {}
        self._reported: dict[Partition, int] = {}

    def __len__(self) -> int:
        return sum(len(q) for q in self._pending.values())

    def add(self, partition: Partition, offset: int) -> None:
        self._pending.setdefault(partition, deque()).append(offset)

    def mark_done(self, partition: Partition, offset: int) -> None:
        pending = self._pending.get(partition)
        if pending is None:
            return  # partition was revoked or lost meanwhile
        done = self._done.setdefault(partition, set())
        done.add(offset)
        while pending and pending[0] in done:
            finished = pending.popleft()
            done.discard(finished)
            self._position[partition] = finished + 1

    def committable(self) -> dict[Partition, int]:
        """Positions that advanced since the last call."""
        changed = {p: pos for p, pos in self._position.items() if self._reported.get(p) != pos}
        self._reported.update(changed)
        return changed

    def positions(self, partitions: Iterable[Partition] | None = None) -> dict[Partition, int]:
        wanted = self._position.keys() if partitions is None else partitions
        return {p: self._position[p] for p in wanted if p in self._position}

    def forget(self, partitions: Iterable[Partition]) -> None:
        for p in partitions:
            for table in (self._pending, self._done, self._position, self._reported):
                table.pop(p, None)


# confluent-kafka (2.16) decodes header names as UTF-8; for a name that is not, Message.headers() returns
# a list holding a NULL with the error still set. A plain `message.headers()` call can then go unchecked
# (CPython's specialised method calls skip the check) and touching the list crashes the process
# (SIGSEGV, seen with a header name written by kcat). Called through operator.methodcaller, the result
# is always checked, so it raises SystemError instead and the record is dead-lettered (decode_error).
_read_headers = operator.methodcaller("headers")


def _to_record(message: Any) -> InputRecord:
    timestamp_type, timestamp = message.timestamp()
    unreadable = None
    try:
        headers = _read_headers(message) or []
    except Exception as exc:  # noqa: BLE001 - the record is dead-lettered, the worker goes on
        headers, unreadable = [], f"record headers could not be read (a header name that is not UTF-8?): {exc!r}"[:500]
    return InputRecord(
        topic=message.topic(),
        partition=message.partition(),
        offset=message.offset(),
        key=message.key(),
        value=message.value(),
        headers=[(k, v if v is not None else b"") for k, v in headers],
        timestamp_ms=timestamp if timestamp_type != 0 and timestamp > 0 else None,
        unreadable=unreadable,
    )


def parse_consumer_lag(stats_json: str) -> dict[Partition, int]:
    """Per-partition consumer lag from a librdkafka statistics document (-1 = unknown, skipped)."""
    stats = json.loads(stats_json)
    lag: dict[Partition, int] = {}
    for topic, topic_stats in stats.get("topics", {}).items():
        for partition, p_stats in topic_stats.get("partitions", {}).items():
            value = p_stats.get("consumer_lag_stored", p_stats.get("consumer_lag", -1))
            if int(partition) >= 0 and value is not None and value >= 0:
                lag[(topic, int(partition))] = int(value)
    return lag


@dataclass
class RebalanceHandlers:
    on_assigned: Callable[[list[Partition]], None]
    on_revoked: Callable[[list[Partition]], None]
    on_lost: Callable[[list[Partition]], None]


class KafkaClients:
    """The consumer and producer of one worker. ``start`` connects; the constructor does no I/O."""

    def __init__(
        self,
        settings: Settings,
        handlers: RebalanceHandlers,
        on_lag: Callable[[dict[Partition, int]], None] = lambda lag: None,
        on_error: Callable[[str, bool], None] = lambda kind, fatal: None,
    ) -> None:
        self._settings = settings
        self._handlers = handlers
        self._on_lag = on_lag
        self._on_error = on_error
        self.transactional = settings.delivery == "exactly_once"
        self._reports: deque[DeliveryReport] = deque()
        self._fatal: KafkaFatalError | None = None
        self._consumer: Any = None
        self._producer: Any = None

    # --- configuration ---
    def consumer_config(self) -> dict[str, Any]:
        s = self._settings
        config: dict[str, Any] = {
            "bootstrap.servers": s.bootstrap_servers,
            "group.id": s.group_id,
            "auto.offset.reset": s.auto_offset_reset,
            "partition.assignment.strategy": "cooperative-sticky",
            # Offsets are stored only after a result is acknowledged (see OffsetTracker);
            # transactions commit them themselves.
            "enable.auto.offset.store": False,
            "enable.auto.commit": not self.transactional,
            "auto.commit.interval.ms": 1000,
            "isolation.level": "read_committed",
            "statistics.interval.ms": s.statistics_interval_ms,
            "client.id": f"koelectra-worker-{socket.gethostname()}",
            "error_cb": self._error_cb,
            "logger": _LIBRDKAFKA_LOG,
        }
        if s.statistics_interval_ms:
            config["stats_cb"] = self._stats_cb
        config.update(s.librdkafka("consumer"))
        return config

    def producer_config(self) -> dict[str, Any]:
        s = self._settings
        config: dict[str, Any] = {
            "bootstrap.servers": s.bootstrap_servers,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "client.id": f"koelectra-worker-{socket.gethostname()}",
            "error_cb": self._error_cb,
            "logger": _LIBRDKAFKA_LOG,
        }
        if self.transactional:
            config["transactional.id"] = s.transactional_id or f"{s.group_id}-{socket.gethostname()}"
        config.update(s.librdkafka("producer"))
        return config

    # --- lifecycle ---
    def start(self) -> None:
        self._producer = Producer(self.producer_config())
        if self.transactional:
            self._producer.init_transactions(60)
        self._consumer = Consumer(self.consumer_config())
        self._consumer.subscribe(
            [self._settings.input_topic],
            on_assign=self._assign_cb,
            on_revoke=self._revoke_cb,
            on_lost=self._lost_cb,
        )

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    # --- callbacks (run inside poll/consume/flush on the calling thread) ---
    def _error_cb(self, error: Any) -> None:
        fatal = error.fatal()
        self._on_error(error.name(), fatal)
        if fatal:
            self._fatal = KafkaFatalError(error.name(), error.str())
        elif error.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT):
            log.warning("kafka connection problem (librdkafka keeps retrying): %s", error.str())
        else:
            log.warning("kafka error: %s", error.str())

    def _stats_cb(self, stats_json: str) -> None:
        try:
            self._on_lag(parse_consumer_lag(stats_json))
        except (ValueError, KeyError, TypeError):
            log.debug("unreadable librdkafka statistics", exc_info=True)

    def _assign_cb(self, consumer: Any, partitions: list[Any]) -> None:
        self._handlers.on_assigned([(p.topic, p.partition) for p in partitions])

    def _revoke_cb(self, consumer: Any, partitions: list[Any]) -> None:
        self._handlers.on_revoked([(p.topic, p.partition) for p in partitions])

    def _lost_cb(self, consumer: Any, partitions: list[Any]) -> None:
        self._handlers.on_lost([(p.topic, p.partition) for p in partitions])

    def raise_if_fatal(self) -> None:
        if self._fatal is not None:
            raise self._fatal

    # --- consuming ---
    def poll(self, max_messages: int, timeout_s: float) -> list[InputRecord]:
        messages = self._consumer.consume(num_messages=max_messages, timeout=timeout_s)
        records = []
        for message in messages:
            error = message.error()
            if error is None:
                records.append(_to_record(message))
            elif error.code() == KafkaError._PARTITION_EOF:
                continue
            elif error.fatal():
                raise KafkaFatalError(error.name(), error.str())
            else:
                self._on_error(error.name(), False)
                log.warning("consume error: %s", error.str())
        self.raise_if_fatal()
        return records

    def pause(self, partitions: Sequence[Partition]) -> None:
        if partitions:
            self._consumer.pause([TopicPartition(t, p) for t, p in partitions])

    def resume(self, partitions: Sequence[Partition]) -> None:
        if partitions:
            self._consumer.resume([TopicPartition(t, p) for t, p in partitions])

    def assignment(self) -> list[Partition]:
        return [(tp.topic, tp.partition) for tp in self._consumer.assignment()]

    def store_offsets(self, positions: dict[Partition, int]) -> None:
        if not positions:
            return
        try:
            self._consumer.store_offsets(offsets=[TopicPartition(t, p, o) for (t, p), o in positions.items()])
        except KafkaException as exc:
            # A partition revoked a moment ago cannot be stored; its new owner re-reads from
            # the last commit, which is at-least-once, never a loss.
            log.warning("could not store offsets %s: %s", positions, exc)

    def commit(self, positions: dict[Partition, int] | None = None) -> None:
        """Synchronous commit of the given positions (or of everything stored)."""
        try:
            if positions:
                self._consumer.commit(
                    offsets=[TopicPartition(t, p, o) for (t, p), o in positions.items()], asynchronous=False
                )
            elif positions is None:
                self._consumer.commit(asynchronous=False)
        except KafkaException as exc:
            if exc.args and exc.args[0].code() == KafkaError._NO_OFFSET:
                return
            log.warning("commit failed: %s", exc)

    def committed(self, partitions: Sequence[Partition], timeout_s: float = 10) -> dict[Partition, int]:
        result = self._consumer.committed([TopicPartition(t, p) for t, p in partitions], timeout=timeout_s)
        return {(tp.topic, tp.partition): tp.offset for tp in result if tp.offset != OFFSET_INVALID}

    # --- producing ---
    def produce(self, topic: str, key: bytes | None, value: bytes | None, headers: Headers, token: Any) -> None:
        """Queue a record; its delivery report (token, error) comes back from :meth:`take_reports`."""
        reports = self._reports

        def on_delivery(error: Any, message: Any) -> None:
            reports.append((token, None if error is None else error.str()))

        while True:
            try:
                self._producer.produce(topic, value=value, key=key, headers=headers, on_delivery=on_delivery)
                return
            except BufferError:
                self._producer.poll(0.1)  # local queue full: let deliveries drain

    def serve_producer(self, timeout_s: float = 0.0) -> None:
        self._producer.poll(timeout_s)

    def take_reports(self) -> list[DeliveryReport]:
        reports = []
        while self._reports:
            reports.append(self._reports.popleft())
        return reports

    def flush(self, timeout_s: float) -> int:
        """Wait for outstanding deliveries; returns how many are still undelivered."""
        return self._producer.flush(timeout_s)

    # --- transactions (exactly_once) ---
    def begin_transaction(self) -> None:
        self._producer.begin_transaction()

    def commit_transaction(self, positions: dict[Partition, int], timeout_s: float = 60) -> None:
        offsets = [TopicPartition(t, p, o) for (t, p), o in positions.items()]
        if offsets:
            self._producer.send_offsets_to_transaction(offsets, self._consumer.consumer_group_metadata(), timeout_s)
        self._producer.commit_transaction(timeout_s)

    def abort_transaction(self, timeout_s: float = 60) -> None:
        self._producer.abort_transaction(timeout_s)

    def rewind(self, positions: dict[Partition, int]) -> None:
        """Seek back, so records of an aborted transaction are consumed again."""
        for (topic, partition), offset in positions.items():
            try:
                self._consumer.seek(TopicPartition(topic, partition, offset))
            except KafkaException as exc:
                log.warning("seek %s[%d] to %d failed: %s", topic, partition, offset, exc)


def transaction_retriable(exc: BaseException) -> tuple[bool, bool]:
    """(retriable, needs_abort) for an exception from a transactional call."""
    if isinstance(exc, KafkaException) and exc.args:
        error = exc.args[0]
        return bool(error.retriable()), bool(error.txn_requires_abort())
    return False, False
