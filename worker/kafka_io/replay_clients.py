"""The Kafka side of ``worker replay``: read a topic up to where it ended when the replay began, and
write with an idempotent producer.

Reading never joins a consumer group and never commits: the partitions are assigned by hand
(``assign()``) under a throwaway ``group.id`` that no offset is ever stored for, so the worker's
group and the dead-letter topic are left exactly as they were. Nothing here deletes records.
Every call that can block has a deadline and runs under the :class:`~worker.watchdog.Watchdog`.
"""

from __future__ import annotations

import logging
import socket
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)

from worker.errors import EXIT_UNFINISHED
from worker.kafka_io.clients import _LIBRDKAFKA_LOG, _to_record
from worker.kafka_io.errors import classify, from_exception
from worker.kafka_io.port import DeliveryReport, KafkaCallError
from worker.policy import ClientError, ErrorKind
from worker.settings import Settings
from worker.watchdog import Watchdog
from worker.wire.types import Headers, InputRecord

log = logging.getLogger(__name__)

# Slack given to a client call beyond its own timeout before the watchdog calls it stuck.
CALL_SLACK_S = 10.0
# Consumer settings of the worker's group that mean nothing to a reader that assigns by hand
# (and some that the next-generation group protocol would refuse outside a group).
_GROUP_ONLY = ("group.id", "group.instance.id", "group.protocol", "group.remote.assignor",
               "partition.assignment.strategy", "session.timeout.ms", "heartbeat.interval.ms")


@dataclass(frozen=True)
class TopicSnapshot:
    """Where each partition of a topic began and ended when the replay began: (first offset, end offset)."""

    topic: str
    ranges: dict[int, tuple[int, int]] = field(default_factory=dict)

    @property
    def records(self) -> int:
        """Offsets to read (transaction markers included, so an upper bound on the records)."""
        return sum(max(0, end - first) for first, end in self.ranges.values())


class ReplayPort(Protocol):
    """What ``worker replay`` needs from Kafka; every call bounded in time.

    ``produce()`` raises ``BufferError`` while the local queue is full and :class:`KafkaCallError`
    for anything else; the other calls raise :class:`KafkaCallError`.
    """

    def snapshot(self, topic: str, timeout_s: float) -> TopicSnapshot | None:
        """Each partition's first and end offsets now; None when the topic does not exist."""
        ...

    def partition_count(self, topic: str, timeout_s: float) -> int | None:
        """The topic's partitions; None when it does not exist."""
        ...

    def start_reading(self, snapshot: TopicSnapshot) -> None: ...

    def read(self, max_messages: int, timeout_s: float) -> list[InputRecord]:
        """The next records below the snapshot's end offsets."""
        ...

    def done_reading(self) -> bool:
        """Every partition has been read to its end offset in the snapshot."""
        ...

    def produce(self, topic: str, partition: int | None, key: bytes | None, value: bytes | None,
                headers: Headers, token: Any) -> None: ...

    def serve(self, timeout_s: float) -> None: ...

    def take_reports(self) -> list[DeliveryReport]: ...

    def flush(self, timeout_s: float) -> int:
        """Wait for outstanding deliveries; returns how many are still undelivered."""
        ...

    def last_error(self) -> ClientError | None:
        """The last error the clients reported on their own (e.g. the cluster is unreachable)."""
        ...

    def close(self, timeout_s: float) -> None: ...


class ReplayClients:
    """The real :class:`ReplayPort`. The constructor does no I/O; the producer is made on the first
    ``produce()``, so a dry run never creates one."""

    def __init__(self, settings: Settings, watchdog: Watchdog) -> None:
        self._settings = settings
        self._watchdog = watchdog
        self._consumer: Any = None
        self._producer: Any = None
        self._reports: list[DeliveryReport] = []
        self._ends: dict[int, int] = {}
        self._topic = ""
        self._last_error: ClientError | None = None

    # --- configuration ---
    def _client_id(self) -> str:
        return f"koelectra-worker-replay-{socket.gethostname()}"

    def consumer_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "bootstrap.servers": self._settings.bootstrap_servers,
            "client.id": self._client_id(),
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "logger": _LIBRDKAFKA_LOG,
        }
        own = self._settings.librdkafka("consumer")
        config.update({k: v for k, v in own.items() if k not in _GROUP_ONLY})
        config.update({
            # A group id that nothing is ever committed under: assign() joins no group, and with
            # auto-commit and the offset store off no offset is written for it.
            "group.id": f"koelectra-worker-replay-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            # The end of a partition is reported, so a read_committed reader knows it is done even
            # when the partition ends in transaction markers or an open transaction.
            "enable.partition.eof": True,
            "error_cb": self._error_cb,
        })
        return config

    def producer_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "bootstrap.servers": self._settings.bootstrap_servers,
            "client.id": self._client_id(),
            "acks": "all",
            "linger.ms": 5,
            # Java's default partitioner, for records whose partition is left to the producer.
            "partitioner": "murmur2_random",
            "logger": _LIBRDKAFKA_LOG,
        }
        config.update(self._settings.librdkafka("producer"))
        config.pop("transactional.id", None)  # the worker's; a replay is no transaction
        # A retried send is never written twice (and per-partition order holds).
        config.update({"enable.idempotence": True, "acks": "all", "error_cb": self._error_cb})
        return config

    def _error_cb(self, error: Any) -> None:
        self._last_error = classify(error)

    def last_error(self) -> ClientError | None:
        return self._last_error

    def _metadata_consumer(self) -> Any:
        if self._consumer is None:
            try:
                self._consumer = Consumer(self.consumer_config())
            except (KafkaException, ValueError, TypeError) as exc:
                raise KafkaCallError("consumer", ClientError(type(exc).__name__, str(exc), ErrorKind.OTHER)) from None
        return self._consumer

    # --- reading ---
    def partition_count(self, topic: str, timeout_s: float) -> int | None:
        consumer = self._metadata_consumer()
        try:
            with self._watchdog.call("consumer.list_topics", timeout_s + CALL_SLACK_S, exit_code=EXIT_UNFINISHED):
                metadata = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        except KafkaException as exc:
            raise KafkaCallError("list_topics", from_exception(exc)) from None
        if metadata is None or metadata.error is not None and metadata.error.code() in (
            KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC
        ):
            return None
        if metadata.error is not None:
            raise KafkaCallError("list_topics", classify(metadata.error))
        return len(metadata.partitions)

    def snapshot(self, topic: str, timeout_s: float) -> TopicSnapshot | None:
        count = self.partition_count(topic, timeout_s)
        if count is None:
            return None
        ranges = {}
        for partition in range(count):
            try:
                with self._watchdog.call("consumer.get_watermark_offsets", timeout_s + CALL_SLACK_S,
                                         exit_code=EXIT_UNFINISHED):
                    first, end = self._consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout_s)
            except KafkaException as exc:
                raise KafkaCallError("get_watermark_offsets", from_exception(exc)) from None
            ranges[partition] = (first, end)
        return TopicSnapshot(topic, ranges)

    def start_reading(self, snapshot: TopicSnapshot) -> None:
        consumer = self._metadata_consumer()
        self._topic = snapshot.topic
        self._ends = {p: end for p, (first, end) in snapshot.ranges.items() if end > first}
        consumer.assign([TopicPartition(snapshot.topic, p, snapshot.ranges[p][0]) for p in self._ends])

    def done_reading(self) -> bool:
        return not self._ends

    def _finish(self, partition: int) -> None:
        if self._ends.pop(partition, None) is not None:
            self._consumer.pause([TopicPartition(self._topic, partition)])

    def read(self, max_messages: int, timeout_s: float) -> list[InputRecord]:
        if not self._ends:
            return []
        with self._watchdog.call("consumer.consume", timeout_s + CALL_SLACK_S, exit_code=EXIT_UNFINISHED):
            messages = self._consumer.consume(num_messages=max_messages, timeout=timeout_s)
        records = []
        for message in messages:
            error = message.error()
            partition = message.partition()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    self._finish(partition)  # the end now is at or past the snapshot's end
                    continue
                classified = classify(error)
                if classified.fatal or classified.kind in (ErrorKind.ACCESS, ErrorKind.DESTINATION):
                    raise KafkaCallError("consume", classified)
                self._last_error = classified
                continue
            end = self._ends.get(partition)
            if end is None or message.offset() >= end:
                self._finish(partition)  # written after the replay began (perhaps by the replay itself)
                continue
            records.append(_to_record(message))
            if message.offset() >= end - 1:
                self._finish(partition)
        return records

    # --- producing ---
    def produce(self, topic: str, partition: int | None, key: bytes | None, value: bytes | None,
                headers: Headers, token: Any) -> None:
        if self._producer is None:
            try:
                self._producer = Producer(self.producer_config())
            except (KafkaException, ValueError, TypeError) as exc:
                raise KafkaCallError("producer", ClientError(type(exc).__name__, str(exc), ErrorKind.OTHER)) from None
        reports = self._reports

        def on_delivery(error: Any, message: Any) -> None:
            reports.append((token, None if error is None else classify(error)))

        where = {} if partition is None else {"partition": partition}
        try:
            self._producer.produce(topic, value=value, key=key, headers=headers, on_delivery=on_delivery, **where)
        except KafkaException as exc:
            raise KafkaCallError("produce", from_exception(exc)) from None
        except (TypeError, ValueError, UnicodeError, OverflowError) as exc:
            raise KafkaCallError("produce", ClientError(type(exc).__name__, str(exc), ErrorKind.RECORD)) from None

    def serve(self, timeout_s: float) -> None:
        if self._producer is not None:
            with self._watchdog.call("producer.poll", timeout_s + CALL_SLACK_S, exit_code=EXIT_UNFINISHED):
                self._producer.poll(timeout_s)

    def take_reports(self) -> list[DeliveryReport]:
        reports, self._reports[:] = list(self._reports), []
        return reports

    def flush(self, timeout_s: float) -> int:
        if self._producer is None:
            return 0
        with self._watchdog.call("producer.flush", timeout_s + CALL_SLACK_S, exit_code=EXIT_UNFINISHED):
            return self._producer.flush(max(0.0, timeout_s))

    def close(self, timeout_s: float) -> None:
        """Close the reader (it has nothing to commit: no group, no stored offsets)."""
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            try:
                with self._watchdog.call("consumer.close", timeout_s + CALL_SLACK_S, exit_code=EXIT_UNFINISHED):
                    consumer.close()
            except (KafkaException, RuntimeError) as exc:
                log.warning("consumer close: %s", exc)
