"""The real Kafka adapter: confluent-kafka's consumer and producer behind :class:`KafkaPort`.

Every call that can block runs under the :class:`~worker.watchdog.Watchdog` with a deadline,
because librdkafka does not always honour its own timeouts. Errors leave this module classified
(:mod:`worker.kafka_io.errors`), so the rest of the worker never sees a confluent-kafka type.
"""

from __future__ import annotations

import json
import logging
import operator
import re
import socket
import time
from collections import deque
from typing import Any, Literal, Mapping, Sequence

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition, libversion

from worker.errors import EXIT_UNFINISHED, ConfigError
from worker.kafka_io.errors import classify, from_exception
from worker.kafka_io.port import (
    ClientError,
    ClientEvents,
    DeliveryReport,
    KafkaCallError,
    Partition,
    PartitionProgress,
)
from worker.policy import Action, ErrorKind, for_client_error
from worker.settings import ENV_PREFIX, Settings
from worker.watchdog import Watchdog
from worker.wire.types import Headers, InputRecord

log = logging.getLogger(__name__)
# librdkafka's own log lines go through Python logging, so JSON logs stay one object per line.
_LIBRDKAFKA_LOG = logging.getLogger("librdkafka")

# Kafka's defaults: librdkafka's producer message.max.bytes and the broker's message.max.bytes,
# which is what a topic's max.message.bytes falls back to.
PRODUCER_MESSAGE_MAX_BYTES = 1_000_000
BROKER_MESSAGE_MAX_BYTES = 1_048_588
# A record batch's own header (librdkafka's RD_KAFKAP_MSGSET_V2_SIZE): the topic limit applies to
# the whole batch, so a record alone in its batch may use the limit less this.
RECORD_BATCH_OVERHEAD = 61
# How long the start-up calls may take: reading topic limits, and init_transactions (which
# waits for the previous incarnation's transaction to finish).
ADMIN_TIMEOUT_S = 10.0
INIT_TRANSACTIONS_TIMEOUT_S = 60.0
INIT_TRANSACTIONS_CHUNK_S = 5.0
# Slack given to consume()/poll() beyond their own timeout before the watchdog calls them stuck;
# a rebalance callback inside consume() may take the shutdown timeout on top of it.
POLL_SLACK_S = 30.0
# The next-generation group protocol (KIP-848) is GA from librdkafka 2.12 (hex 0xMMmmrrxx).
CONSUMER_PROTOCOL_MIN_LIBRDKAFKA = (0x020C0000, "2.12.0")
# Under group.protocol=consumer the broker owns these (KIP-848); librdkafka refuses them at start.
BROKER_SIDE = {
    "session.timeout.ms": "the group's group.consumer.session.timeout.ms (broker or group config)",
    "heartbeat.interval.ms": "the group's group.consumer.heartbeat.interval.ms (broker or group config)",
    "partition.assignment.strategy": "WORKER_KAFKA_CONSUMER_GROUP_REMOTE_ASSIGNOR (uniform or range)",
    "group.protocol.type": "nothing (the protocol has no type)",
}
_PROPERTY = re.compile(r'[`"]([a-z][a-z0-9_.]*)(?:=[^`"]*)?[`"]')


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
        headers=list(headers),  # a header with a null value keeps its null (pass_through_headers allows it)
        timestamp_ms=timestamp if timestamp_type != 0 and timestamp > 0 else None,
        unreadable=unreadable,
    )


def _is_unknown_topic(exc: BaseException) -> bool:
    error = exc.args[0] if exc.args else None
    return isinstance(error, KafkaError) and error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART


def parse_progress(stats_json: str) -> dict[Partition, PartitionProgress]:
    """Per assigned partition: high watermark, last stable offset, committed offset and position."""
    stats = json.loads(stats_json)
    progress: dict[Partition, PartitionProgress] = {}
    for topic, topic_stats in stats.get("topics", {}).items():
        for partition, p in topic_stats.get("partitions", {}).items():
            if int(partition) < 0 or not p.get("desired", True):
                continue
            progress[(topic, int(partition))] = PartitionProgress(
                high_watermark=int(p.get("hi_offset", -1)),
                last_stable=int(p.get("ls_offset", -1)),
                committed=int(p.get("committed_offset", -1)),
                position=int(p.get("app_offset", -1)),
            )
    return progress


# The logical broker librdkafka keeps for the consumer group's coordinator (its heartbeats, joins and
# commits go there), as named in the statistics.
GROUP_COORDINATOR = "GroupCoordinator"


def brokers_answering(stats_json: str, previous: dict[str, int]) -> set[str]:
    """The brokers in state UP (connected and authenticated) that received responses since ``previous``.

    ``previous`` (broker name -> responses received) is updated in place.
    """
    answering = set()
    for name, broker in json.loads(stats_json).get("brokers", {}).items():
        received = int(broker.get("rx", 0))
        if broker.get("state") == "UP" and received > previous.get(name, received):
            answering.add(name)
        previous[name] = received
    return answering


def uses_consumer_protocol(config: Mapping[str, Any]) -> bool:
    """Whether ``config`` asks for the next-generation group protocol (KIP-848)."""
    return str(config.get("group.protocol", "classic")).strip().lower() == "consumer"


def _partitions(positions: Mapping[Partition, int]) -> list[Any]:
    return [TopicPartition(t, p, o) for (t, p), o in positions.items()]


class KafkaClients:
    """The consumer and producer of one worker. :meth:`start` connects; the constructor does no I/O."""

    def __init__(self, settings: Settings, events: ClientEvents, watchdog: Watchdog) -> None:
        self._settings = settings
        self._events = events
        self._watchdog = watchdog
        self.transactional = settings.delivery == "exactly_once"
        self._reports: deque[DeliveryReport] = deque()
        self._consumer: Any = None
        self._closing = False
        self._producer: Any = None
        self._record_limits: dict[str, int] = {}
        self._default_record_limit = PRODUCER_MESSAGE_MAX_BYTES
        self._cooperative = True
        self.read_committed = True
        self._responses: dict[str, int] = {}  # per broker, responses received (from the statistics)

    # --- configuration ---
    def _client_id(self) -> str:
        return f"koelectra-worker-{socket.gethostname()}"

    def consumer_config(self) -> dict[str, Any]:
        s = self._settings
        config: dict[str, Any] = {
            "bootstrap.servers": s.bootstrap_servers,
            "group.id": s.group_id,
            "auto.offset.reset": s.auto_offset_reset,
            # Offsets are stored only once a record's results are acknowledged (OffsetTracker), and
            # librdkafka commits what is stored every second and when partitions are revoked or the
            # consumer closes. With transactions the offsets travel inside each transaction instead.
            "enable.auto.offset.store": False,
            "enable.auto.commit": not self.transactional,
            "auto.commit.interval.ms": 1000,
            "isolation.level": "read_committed",
            "statistics.interval.ms": s.statistics_interval_ms,
            "client.id": self._client_id(),
            "error_cb": self._error_cb,
            "logger": _LIBRDKAFKA_LOG,
        }
        if not self.transactional:
            config["on_commit"] = self._commit_cb
        if s.statistics_interval_ms:
            config["stats_cb"] = self._stats_cb
        user = s.librdkafka("consumer")
        if not uses_consumer_protocol(user):
            # Classic protocol: incremental rebalances, so a join or leave only stops the partitions that move.
            # The consumer protocol (KIP-848) is incremental by design and refuses this property.
            config["partition.assignment.strategy"] = "cooperative-sticky"
        config.update(user)
        return config

    def producer_config(self, batch_limit: int | None = None) -> dict[str, Any]:
        s = self._settings
        config: dict[str, Any] = {
            "bootstrap.servers": s.bootstrap_servers,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "client.id": self._client_id(),
            "error_cb": self._error_cb,
            "logger": _LIBRDKAFKA_LOG,
        }
        if batch_limit is not None:
            # The broker checks a topic's max.message.bytes against whole batches, so batches must
            # stay under the smallest limit of the topics written, or good records fail together.
            config["batch.size"] = batch_limit
        if self.transactional:
            config["transactional.id"] = s.transactional_id or f"{s.group_id}-{socket.gethostname()}"
        config.update(s.librdkafka("producer"))
        return config

    def admin_config(self) -> dict[str, Any]:
        s = self._settings
        return {"bootstrap.servers": s.bootstrap_servers, "logger": _LIBRDKAFKA_LOG, **s.librdkafka("common")}

    # --- lifecycle ---
    def start(self, destination_topics: Sequence[str] = ()) -> None:
        topics = list(dict.fromkeys([self._settings.output_topic, self._settings.dlq_topic, *destination_topics]))
        try:
            producer_limit = int(self._settings.librdkafka("producer").get("message.max.bytes", PRODUCER_MESSAGE_MAX_BYTES))
        except ValueError:
            raise ConfigError(self._config_problem(
                "producer", 'Invalid value for configuration property "message.max.bytes"')) from None
        topic_limits = self._read_topic_limits(topics)
        for topic in topics:
            self._record_limits[topic] = min(producer_limit, topic_limits.get(topic, BROKER_MESSAGE_MAX_BYTES) - RECORD_BATCH_OVERHEAD)
        self._default_record_limit = min(producer_limit, BROKER_MESSAGE_MAX_BYTES - RECORD_BATCH_OVERHEAD)
        smallest = min(self._record_limits.values(), default=producer_limit)
        user_batch = "batch.size" in self._settings.librdkafka("producer")
        self._producer = self._create(
            "producer", Producer, self.producer_config(None if user_batch or smallest >= producer_limit else smallest)
        )
        if self.transactional:
            self._init_transactions()
        consumer_config = self.consumer_config()
        consumer_protocol = uses_consumer_protocol(consumer_config)
        if consumer_protocol and libversion()[1] < CONSUMER_PROTOCOL_MIN_LIBRDKAFKA[0]:
            raise ConfigError(
                f"{ENV_PREFIX}KAFKA_CONSUMER_GROUP_PROTOCOL: group.protocol=consumer needs librdkafka "
                f"{CONSUMER_PROTOCOL_MIN_LIBRDKAFKA[1]} or later (confluent-kafka 2.12+); this one is {libversion()[0]}"
            )
        # Both cooperative-sticky and the consumer protocol hand out and take back partitions incrementally.
        self._cooperative = consumer_protocol or consumer_config.get("partition.assignment.strategy") == "cooperative-sticky"
        self.read_committed = consumer_config["isolation.level"] == "read_committed"
        self._consumer = self._create("consumer", Consumer, consumer_config)
        self._consumer.subscribe(
            [self._settings.input_topic], on_assign=self._assign_cb, on_revoke=self._revoke_cb, on_lost=self._lost_cb
        )

    def _create(self, role: Literal["admin", "producer", "consumer"], factory: Any, config: dict[str, Any]) -> Any:
        """A client from ``config``; a property librdkafka refuses is a ConfigError naming its variable."""
        try:
            return factory(config)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if not isinstance(error, KafkaError) or error.code() != KafkaError._INVALID_ARG:
                raise KafkaCallError(f"{role} start", from_exception(exc)) from None
            raise ConfigError(self._config_problem(role, error.str())) from None
        except (TypeError, ValueError) as exc:  # a value of the wrong Python type
            raise ConfigError(self._config_problem(role, str(exc))) from None

    def _config_problem(self, role: str, message: str) -> str:
        """``message`` led by the variable that set the property it names (or the property, if the worker set it)."""
        message = message.removeprefix(f"Failed to create {role}: ")
        named = _PROPERTY.findall(message)
        if not named:
            return f"Kafka {role} configuration: {message}"
        own = {"consumer": self._settings.kafka_consumer, "producer": self._settings.kafka_producer}.get(role, {})
        scopes = ((f"KAFKA_{role.upper()}_", own), ("KAFKA_", self._settings.kafka))
        # The first property named that the user set (`transactional.id` requires `enable.idempotence=true`
        # is about WORKER_KAFKA_PRODUCER_ENABLE_IDEMPOTENCE), else the first named (the worker set it).
        prop, variable = named[0], named[0]
        for candidate, (scope, values) in ((c, sv) for c in named for sv in scopes):
            if candidate in values:
                prop, variable = candidate, f"{ENV_PREFIX}{scope}{candidate.upper().replace('.', '_')}"
                break
        hint = BROKER_SIDE.get(prop) if role == "consumer" and "group.protocol=consumer" in message else None
        return f"{variable}: {message}" + (f"; under group.protocol=consumer use {hint} instead" if hint else "")

    def _read_topic_limits(self, topics: list[str]) -> dict[str, int]:
        """Each topic's max.message.bytes, where the cluster lets us read it (else the default is assumed).

        A destination topic that does not exist on a cluster that does not create topics is reported
        now (DESTINATION), rather than after librdkafka's 30 s metadata wait on the first result.
        """
        from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

        limits: dict[str, int] = {}
        missing: list[str] = []
        admin = self._create("admin", AdminClient, self.admin_config())
        deadline = time.monotonic() + ADMIN_TIMEOUT_S
        with self._watchdog.call("admin.describe_configs", 2 * ADMIN_TIMEOUT_S + 5):
            futures = admin.describe_configs(
                [ConfigResource(ResourceType.TOPIC, t) for t in topics], request_timeout=ADMIN_TIMEOUT_S
            )
            for resource, future in futures.items():
                try:
                    entry = future.result(timeout=max(0.0, deadline - time.monotonic())).get("max.message.bytes")
                    if entry is not None and entry.value is not None:
                        limits[resource.name] = int(entry.value)
                except Exception as exc:  # noqa: BLE001 - not permitted, missing or unreachable: keep the default
                    if _is_unknown_topic(exc):
                        missing.append(resource.name)
                    log.warning(
                        "could not read max.message.bytes of topic %s (%s); assuming the broker default %d",
                        resource.name, exc, BROKER_MESSAGE_MAX_BYTES,
                    )
            creates = self._cluster_creates_topics(admin, deadline + ADMIN_TIMEOUT_S) if missing else None
            del admin, futures  # its destructor runs here, under the watchdog
        if limits:
            log.info("destination topic limits", extra={"fields": {"max.message.bytes": limits}})
        if missing and creates is False:
            raise KafkaCallError("start", ClientError(
                "UNKNOWN_TOPIC_OR_PART",
                f"destination topic(s) {', '.join(missing)} do not exist and the cluster does not create topics "
                "(auto.create.topics.enable=false): create them",
                ErrorKind.DESTINATION,
            ))
        return limits

    def _cluster_creates_topics(self, admin: Any, deadline: float) -> bool | None:
        """The brokers' auto.create.topics.enable, where the cluster lets us read it."""
        from confluent_kafka.admin import ConfigResource, ResourceType

        try:
            brokers = admin.list_topics(timeout=max(0.1, deadline - time.monotonic())).brokers
            broker = str(next(iter(brokers)))
            (future,) = admin.describe_configs([ConfigResource(ResourceType.BROKER, broker)],
                                               request_timeout=ADMIN_TIMEOUT_S).values()
            entry = future.result(timeout=max(0.1, deadline - time.monotonic())).get("auto.create.topics.enable")
            return None if entry is None or entry.value is None else entry.value.lower() == "true"
        except Exception as exc:  # noqa: BLE001 - not permitted: the first delivery will tell
            log.info("could not read auto.create.topics.enable (%s)", exc)
            return None

    def _init_transactions(self) -> None:
        """init_transactions in short, resumable chunks, so refused credentials are noticed in between."""
        deadline = time.monotonic() + INIT_TRANSACTIONS_TIMEOUT_S
        while True:
            chunk = max(0.1, min(INIT_TRANSACTIONS_CHUNK_S, deadline - time.monotonic()))
            try:
                with self._watchdog.call("producer.init_transactions", chunk):
                    self._producer.init_transactions(chunk)
                return
            except KafkaException as exc:
                error = from_exception(exc)
                if not error.retriable or time.monotonic() >= deadline:
                    raise KafkaCallError("init_transactions", error) from None
            self._producer.poll(0)  # serves error_cb: refused credentials are reported there
            self._events.on_wait()

    def close(self, timeout_s: float, exit_code: int = EXIT_UNFINISHED) -> None:
        """Leave the group (after the revoke callback) within ``timeout_s``; the watchdog enforces it."""
        consumer = self._consumer
        if consumer is None or self._closing:
            return
        # The consumer stays in place while it closes: close() runs the revoke callback, in which the
        # loop finishes and stores the revoked partitions' offsets through this same consumer.
        self._closing = True
        try:
            with self._watchdog.call("consumer.close", timeout_s, exit_code=exit_code):
                consumer.close()
        except (KafkaException, RuntimeError) as exc:
            log.warning("consumer close: %s", exc)
        finally:
            self._consumer = None

    # --- callbacks (run inside poll/consume/flush on the calling thread) ---
    def _error_cb(self, error: Any) -> None:
        self._events.on_error(classify(error))

    def _commit_cb(self, error: Any, partitions: list[Any]) -> None:
        # _NO_OFFSET: nothing new to commit (an automatic commit with nothing stored), not a failure.
        if error is not None and error.code() != KafkaError._NO_OFFSET:
            self._events.on_commit(classify(error))
            return
        failed = next((p.error for p in partitions or () if p.error is not None), None)
        self._events.on_commit(classify(failed) if failed is not None else None)

    def _stats_cb(self, stats_json: str) -> None:
        try:
            self._events.on_progress(parse_progress(stats_json))
            answering = brokers_answering(stats_json, self._responses)
            if answering:
                self._events.on_broker_answers()
            if GROUP_COORDINATOR in answering:
                self._events.on_group_answers()
        except (ValueError, KeyError, TypeError):
            log.debug("unreadable librdkafka statistics", exc_info=True)

    def _assign_cb(self, consumer: Any, partitions: list[Any]) -> None:
        # Assign here rather than after the callback returns, so the worker may pause the new
        # partitions at once (pausing a partition that is not assigned yet does nothing).
        if self._cooperative:
            consumer.incremental_assign(partitions)
        else:
            consumer.assign(partitions)
        self._events.on_assigned([(p.topic, p.partition) for p in partitions])

    def _revoke_cb(self, consumer: Any, partitions: list[Any]) -> None:
        self._events.on_revoked([(p.topic, p.partition) for p in partitions])

    def _lost_cb(self, consumer: Any, partitions: list[Any]) -> None:
        self._events.on_lost([(p.topic, p.partition) for p in partitions])

    # --- consuming ---
    def poll(self, max_messages: int, timeout_s: float) -> list[InputRecord]:
        with self._watchdog.call("consumer.consume", timeout_s + POLL_SLACK_S + self._settings.shutdown_timeout_s):
            messages = self._consumer.consume(num_messages=max_messages, timeout=timeout_s)
        records = []
        for message in messages:
            error = message.error()
            if error is None:
                records.append(_to_record(message))
            elif error.code() == KafkaError._PARTITION_EOF:
                continue
            else:
                classified = classify(error)
                if for_client_error(classified) is Action.FATAL:
                    raise KafkaCallError("consume", classified)
                self._events.on_error(classified)
        return records

    def pause(self, partitions: Sequence[Partition]) -> None:
        if partitions:
            self._consumer.pause([TopicPartition(t, p) for t, p in partitions])

    def resume(self, partitions: Sequence[Partition]) -> None:
        if partitions:
            self._consumer.resume([TopicPartition(t, p) for t, p in partitions])

    def assignment(self) -> list[Partition]:
        return [(tp.topic, tp.partition) for tp in self._consumer.assignment()]

    def seek(self, positions: Mapping[Partition, int]) -> dict[Partition, int]:
        failed: dict[Partition, int] = {}
        for tp in _partitions(positions):
            try:
                self._consumer.seek(tp)
            except KafkaException as exc:
                # librdkafka refuses a seek while the partition is not fetching (just assigned, its leader
                # being looked up after a broker died: `_STATE`), and its fetch then goes on from where it
                # was, past the records the seek was to read again: the caller reads nothing of it until
                # a later seek succeeds.
                failed[(tp.topic, tp.partition)] = tp.offset
                log.warning("seek %s[%d] to %d refused (%s); its records are dropped until the seek succeeds",
                            tp.topic, tp.partition, tp.offset, exc)
        return failed

    def store_offsets(self, positions: Mapping[Partition, int]) -> None:
        if not positions:
            return
        try:
            self._consumer.store_offsets(offsets=_partitions(positions))
        except KafkaException as exc:
            # A partition revoked a moment ago cannot be stored; its new owner re-reads from the
            # last commit, which is at-least-once, never a loss.
            log.warning("could not store offsets %s: %s", positions, exc)

    # --- producing ---
    def max_record_bytes(self, topic: str) -> int:
        return self._record_limits.get(topic, self._default_record_limit)

    def produce(self, topic: str, key: bytes | None, value: bytes | None, headers: Headers, token: Any) -> None:
        reports = self._reports

        def on_delivery(error: Any, message: Any) -> None:
            reports.append((token, None if error is None else classify(error)))

        try:
            self._producer.produce(topic, value=value, key=key, headers=headers, on_delivery=on_delivery)
        except KafkaException as exc:
            raise KafkaCallError("produce", from_exception(exc)) from None
        except (TypeError, ValueError, UnicodeError, OverflowError) as exc:
            # Invalid arguments for this one record (e.g. an unusable header): never the worker's end.
            raise KafkaCallError("produce", ClientError(type(exc).__name__, str(exc), ErrorKind.RECORD)) from None

    def serve(self, timeout_s: float) -> None:
        try:
            with self._watchdog.call("producer.poll", timeout_s + POLL_SLACK_S):
                self._producer.poll(timeout_s)
        except KafkaException as exc:  # a fatal error (e.g. fenced) surfaces here too
            raise KafkaCallError("producer.poll", from_exception(exc)) from None

    def take_reports(self) -> list[DeliveryReport]:
        reports = []
        while self._reports:
            reports.append(self._reports.popleft())
        return reports

    def purge_queued(self) -> None:
        """Drop everything not yet sent; their reports come back as PURGED."""
        try:
            self._producer.purge(in_queue=True, in_flight=False, blocking=False)
        except KafkaException as exc:
            raise KafkaCallError("producer.purge", from_exception(exc)) from None

    def flush(self, timeout_s: float) -> int:
        """Wait for outstanding deliveries; returns how many are still undelivered."""
        try:
            with self._watchdog.call("producer.flush", timeout_s, exit_code=EXIT_UNFINISHED):
                return self._producer.flush(max(0.0, timeout_s))
        except KafkaException as exc:
            raise KafkaCallError("producer.flush", from_exception(exc)) from None

    # --- transactions (exactly_once) ---
    def _transactional_call(self, name: str, timeout_s: float, call: Any, *args: Any) -> None:
        try:
            with self._watchdog.call(f"producer.{name}", timeout_s):
                call(*args)
        except KafkaException as exc:
            raise KafkaCallError(name, from_exception(exc)) from None

    def begin_transaction(self) -> None:
        self._transactional_call("begin_transaction", 5.0, self._producer.begin_transaction)

    def send_offsets(self, positions: Mapping[Partition, int], timeout_s: float) -> None:
        if positions:
            self._transactional_call(
                "send_offsets_to_transaction", timeout_s, self._producer.send_offsets_to_transaction,
                _partitions(positions), self._consumer.consumer_group_metadata(), timeout_s,
            )

    def commit_transaction(self, timeout_s: float) -> None:
        self._transactional_call("commit_transaction", timeout_s, self._producer.commit_transaction, timeout_s)

    def abort_transaction(self, timeout_s: float) -> None:
        self._transactional_call("abort_transaction", timeout_s, self._producer.abort_transaction, timeout_s)
