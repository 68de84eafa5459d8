"""Publishing finished windows: produce, delivery-report policy, commit and rewind, per delivery mode.

:class:`AtLeastOncePublisher` produces each record, stores a partition's offset once every earlier
record of it is acknowledged (librdkafka commits stored offsets every second, on revocation and
on close), and replays from the first unfinished offset when a delivery times out.
:class:`TransactionalPublisher` writes windows in Kafka transactions together with their input
offsets, following librdkafka's transactional state machine: retriable → call again,
abortable → abort and rewind the input, fatal → the worker ends.

Both follow the same rules for one record the broker refuses for good (too large, invalid): the
message is replaced by a dead letter, then by a minimal dead letter; a topic nobody can write,
refused credentials, and a dead client end the worker (:class:`~worker.errors.FatalError`).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Callable, Protocol

from worker.errors import FatalError
from worker.kafka_io import ClientError, ErrorKind, KafkaCallError, KafkaPort, OffsetTracker, Partition
from worker.outputs import DEAD_LETTER, Delivery, Message, Renderer

log = logging.getLogger(__name__)

PRODUCE_ERROR = "produce_error"
# Seconds one transactional call may take before it is retried (commit/abort are resumable).
TXN_CALL_TIMEOUT_S = 10.0
# How long a transaction may keep failing with retriable errors before it is aborted and rewound
# (the broker aborts it itself after transaction.timeout.ms, 60 s by default).
TXN_RETRY_LIMIT_S = 60.0
BACKOFF_S = (0.1, 0.2, 0.5, 1.0, 2.0)
QUEUE_FULL_WAIT_S = 0.05
# Delivery failures that say nothing about the record itself: it is produced again, never dead-lettered.
REDO_KINDS = frozenset({ErrorKind.TIMED_OUT, ErrorKind.RETRIABLE, ErrorKind.PURGED})


class Pipeline(Protocol):
    """What a publisher needs from the loop."""

    tracker: OffsetTracker

    def is_current(self, delivery: Delivery) -> bool: ...

    def done(self, delivery: Delivery) -> None: ...

    def replay(self, reason: str) -> None: ...

    def beat(self) -> None: ...


class Publisher(Protocol):
    def publish(self, deliveries: list[Delivery]) -> None: ...

    def step(self) -> None: ...

    @property
    def idle(self) -> bool: ...

    def release(self, partitions: list[Partition]) -> None: ...

    def abandon(self, deadline: float) -> None: ...


def fatal_for(error: ClientError, what: str) -> FatalError:
    """The fatal error for a client error that stops the worker."""
    if error.kind == ErrorKind.ACCESS:
        return FatalError("access_denied", f"{what}: {error}")
    if error.kind == ErrorKind.DESTINATION:
        return FatalError("destination_unwritable", f"{what}: {error}")
    if error.code in ("_FENCED", "PRODUCER_FENCED", "INVALID_PRODUCER_EPOCH"):
        return FatalError("fenced", f"{what}: another producer with this transactional id took over ({error})")
    return FatalError("kafka_fatal", f"{what}: {error}")


class _Producing:
    """Producing a delivery's messages, and what to do when the broker refuses one of them."""

    def __init__(self, port: KafkaPort, pipeline: Pipeline, renderer: Renderer,
                 clock: Callable[[], float], wall_clock: Callable[[], float]) -> None:
        self._port = port
        self._pipeline = pipeline
        self._renderer = renderer
        self._clock = clock
        self._wall_clock = wall_clock
        self._tag = 0  # changes whenever earlier delivery reports must be ignored

    def _produce_all(self, delivery: Delivery) -> None:
        delivery.pending = len(delivery.messages)
        delivery.produced_at = self._clock()
        for index in range(len(delivery.messages)):
            self._produce(delivery, index)

    def _produce(self, delivery: Delivery, index: int) -> None:
        message = delivery.messages[index]
        while True:
            try:
                self._port.produce(message.topic, message.key, message.value, message.headers, (self._tag, delivery, index))
                return
            except BufferError:
                # The local queue is full: serve deliveries until there is room (bounded by
                # message.timeout.ms, after which queued messages fail and free their space).
                self._pipeline.beat()
                self._wait_for_room()
            except KafkaCallError as exc:
                self._refused(delivery, index, exc.error)
                return

    def _wait_for_room(self) -> None:
        self._port.serve(QUEUE_FULL_WAIT_S)

    def _replacement(self, delivery: Delivery, index: int, error: ClientError) -> Message:
        """The dead letter that takes the place of a message the broker refused for good."""
        refused = delivery.messages[index]
        if error.kind not in (ErrorKind.RECORD, ErrorKind.OTHER):
            raise fatal_for(error, f"writing to {refused.topic}")
        now_ms = self._wall_clock() * 1000
        detail = f"{refused.topic} refused the record: {error}"
        if refused.kind != DEAD_LETTER:
            return self._renderer.dead_letter(delivery.source, PRODUCE_ERROR, detail, now_ms)
        if refused.key is not None or refused.value is not None:
            return self._renderer.dead_letter(delivery.source, refused.reason or PRODUCE_ERROR, detail, now_ms, minimal=True)
        raise FatalError("destination_unwritable", f"not even a minimal dead letter can be written to {refused.topic}: {error}")

    def _refused(self, delivery: Delivery, index: int, error: ClientError) -> None:
        log.warning("record %s[%d]@%d refused by %s (%s); dead-lettering it", delivery.source.topic,
                    delivery.source.partition, delivery.source.offset, delivery.messages[index].topic, error)
        delivery.messages[index] = self._replacement(delivery, index, error)
        delivery.escalations += 1
        self._produce(delivery, index)


class AtLeastOncePublisher(_Producing):
    """Produce as windows finish; a record is done when all its messages are acknowledged."""

    @property
    def idle(self) -> bool:
        return True  # nothing of its own beyond what the offset tracker counts

    def publish(self, deliveries: list[Delivery]) -> None:
        for delivery in deliveries:
            self._produce_all(delivery)

    def step(self) -> None:
        self._port.serve(0)
        self._handle_reports()
        self._port.store_offsets(self._pipeline.tracker.committable())

    def _wait_for_room(self) -> None:
        super()._wait_for_room()
        self._handle_reports()

    def _handle_reports(self) -> None:
        for (tag, delivery, index), error in self._port.take_reports():
            if tag != self._tag or not self._pipeline.is_current(delivery):
                continue  # from before a replay or a revocation: the record is being redone elsewhere
            if error is None:
                delivery.pending -= 1
                if delivery.pending == 0:
                    self._pipeline.done(delivery)
            elif error.kind in REDO_KINDS:
                self._replay_after(error, delivery)
            else:
                self._refused(delivery, index, error)

    def _replay_after(self, error: ClientError, delivery: Delivery) -> None:
        # librdkafka gave up on this message after message.timeout.ms. Messages produced after it
        # may still be written, which would put later results of a key before earlier ones; so drop
        # everything not yet sent and replay every partition from its first unfinished record.
        log.warning("delivery to %s failed (%s); replaying from the first unfinished records to keep order",
                    delivery.messages[0].topic, error)
        self._port.purge_queued()
        self._tag += 1
        self._pipeline.replay(f"delivery failed: {error}")

    def release(self, partitions: list[Partition]) -> None:
        # librdkafka commits the stored offsets of revoked partitions itself (enable.auto.commit).
        self._port.store_offsets(self._pipeline.tracker.committable())

    def abandon(self, deadline: float) -> None:
        pass  # undelivered records are simply not committed: they are read again


IDLE, COMMITTING, ABORTING = "idle", "committing", "aborting"


class TransactionalPublisher(_Producing):
    """Every finished window (several at once when they queue up) in one transaction with its offsets."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self._waiting: deque[list[Delivery]] = deque()
        self._txn: list[Delivery] = []
        self._state = IDLE
        self._since = 0.0  # when the current commit or abort started
        self._attempt = 0
        self._next_try = 0.0
        self._abort_reason = ""
        # Source records the broker refused inside an aborted transaction, with the error: when
        # they come back after the rewind, they are dead-lettered instead of failing again.
        self._refusals: dict[tuple[str, int, int], list[tuple[int, ClientError]]] = {}

    @property
    def idle(self) -> bool:
        return self._state == IDLE and not self._waiting

    def publish(self, deliveries: list[Delivery]) -> None:
        if deliveries:
            self._waiting.append(deliveries)
        self._advance()

    def step(self) -> None:
        self._advance()

    def _advance(self) -> None:
        while True:
            if self._state != IDLE:
                if self._clock() < self._next_try:
                    return
                self._try_commit() if self._state == COMMITTING else self._try_abort()
                if self._state != IDLE:
                    return
            if not self._waiting:
                return
            self._begin()

    # --- one transaction ---
    def _begin(self) -> None:
        deliveries = [d for batch in self._waiting for d in batch if self._pipeline.is_current(d)]
        self._waiting.clear()
        if not deliveries:
            return
        self._tag += 1
        try:
            self._port.begin_transaction()
        except KafkaCallError as exc:
            raise fatal_for(exc.error, "begin_transaction") from None
        self._txn = deliveries
        self._state = COMMITTING
        self._since = self._clock()
        self._attempt = 0
        try:
            for delivery in deliveries:
                self._apply_refusals(delivery)
                self._produce_all(delivery)
            self._send_offsets(self._positions())
        except _Abort as abort:
            self._start_abort(abort.reason)
            return
        self._try_commit()

    def _positions(self) -> dict[Partition, int]:
        positions: dict[Partition, int] = {}
        for delivery in self._txn:
            p = delivery.partition
            positions[p] = max(positions.get(p, 0), delivery.source.offset + 1)
        return positions

    def _apply_refusals(self, delivery: Delivery) -> None:
        source = delivery.source
        for index, error in self._refusals.pop((source.topic, source.partition, source.offset), []):
            delivery.messages[index] = self._replacement(delivery, index, error)
            delivery.escalations += 1

    def _refused(self, delivery: Delivery, index: int, error: ClientError) -> None:
        if error.txn_requires_abort or error.code == "_STATE":
            raise _Abort(f"produce: {error}")
        if error.kind == ErrorKind.FATAL:
            raise fatal_for(error, "produce")
        super()._refused(delivery, index, error)

    def _send_offsets(self, positions: dict[Partition, int]) -> None:
        for attempt, backoff in enumerate((*BACKOFF_S, None)):
            try:
                self._port.send_offsets(positions, TXN_CALL_TIMEOUT_S)
                return
            except KafkaCallError as exc:
                error = exc.error
                if error.txn_requires_abort:
                    raise _Abort(f"send_offsets_to_transaction: {error}") from None
                if not error.retriable or error.kind == ErrorKind.FATAL:
                    raise fatal_for(error, "send_offsets_to_transaction") from None
                if backoff is None:
                    raise _Abort(f"send_offsets_to_transaction kept failing: {error}") from None
                log.warning("send_offsets_to_transaction failed (%s); retrying with the same offsets", error)
                self._pipeline.beat()
                time.sleep(backoff)

    def _try_commit(self) -> None:
        try:
            self._port.commit_transaction(TXN_CALL_TIMEOUT_S)
        except KafkaCallError as exc:
            error = exc.error
            if error.txn_requires_abort:
                self._start_abort(f"commit_transaction: {error}")
            elif error.retriable and error.kind != ErrorKind.FATAL:
                if self._clock() - self._since > TXN_RETRY_LIMIT_S:
                    self._start_abort(f"commit_transaction kept failing for {TXN_RETRY_LIMIT_S:.0f} s: {error}")
                else:
                    # Resumable: calling commit_transaction() again continues the same commit.
                    log.warning("commit_transaction failed (%s); calling it again", error)
                    self._schedule_retry()
            else:
                raise fatal_for(error, "commit_transaction") from None
            return
        committed, self._txn = self._txn, []
        self._state = IDLE
        self._port.take_reports()  # all delivered, or the commit would have failed
        for delivery in committed:
            if self._pipeline.is_current(delivery):
                self._pipeline.done(delivery)

    def _schedule_retry(self) -> None:
        self._next_try = self._clock() + BACKOFF_S[min(self._attempt, len(BACKOFF_S) - 1)]
        self._attempt += 1

    def _start_abort(self, reason: str) -> None:
        log.warning("transaction failed (%s); aborting it and reading its input again", reason)
        self._state = ABORTING
        self._since = self._clock()
        self._attempt = 0
        self._next_try = 0.0
        self._abort_reason = reason
        self._note_refusals()
        self._try_abort()

    def _note_refusals(self) -> None:
        """What the delivery reports of the failed transaction say about its records."""
        self._port.serve(0)
        for (tag, delivery, index), error in self._port.take_reports():
            if tag != self._tag or error is None or error.kind in REDO_KINDS:
                continue
            # Raises FatalError when no replacement is possible (the topic, not the record, is the problem).
            replacement = self._replacement(delivery, index, error)
            source = delivery.source
            self._refusals.setdefault((source.topic, source.partition, source.offset), []).append((index, error))
            log.warning("record %s[%d]@%d refused by %s (%s); it will be replaced by %s after the rewind",
                        source.topic, source.partition, source.offset, delivery.messages[index].topic, error,
                        "a minimal dead letter" if replacement.key is None and replacement.value is None else "a dead letter")

    def _try_abort(self) -> None:
        try:
            self._port.abort_transaction(TXN_CALL_TIMEOUT_S)
        except KafkaCallError as exc:
            if exc.error.retriable and exc.error.kind != ErrorKind.FATAL:
                log.warning("abort_transaction failed (%s); calling it again", exc.error)
                self._schedule_retry()
                return
            raise fatal_for(exc.error, "abort_transaction") from None
        # Purged messages report later with _PURGE_* errors: the new tag makes them stale.
        self._tag += 1
        self._txn = []
        self._waiting.clear()
        self._state = IDLE
        self._pipeline.replay(f"transaction aborted ({self._abort_reason})")

    # --- rebalance and shutdown ---
    def release(self, partitions: list[Partition]) -> None:
        pass  # offsets travel inside the transactions

    def abandon(self, deadline: float) -> None:
        """Abort the open transaction, if any, within ``deadline``."""
        self._waiting.clear()
        if self._state == COMMITTING:
            self._start_abort("given up at the deadline")
        while self._state == ABORTING and self._clock() < deadline:
            self._pipeline.beat()
            time.sleep(max(0.0, min(self._next_try, deadline) - self._clock()))
            self._try_abort()


class _Abort(Exception):
    """Internal: the open transaction must be aborted."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def make_publisher(port: KafkaPort, pipeline: Pipeline, renderer: Renderer,
                   clock: Callable[[], float], wall_clock: Callable[[], float]) -> Publisher:
    """The publisher for the port's delivery mode: the only place that tells the two apart."""
    publisher = TransactionalPublisher if port.transactional else AtLeastOncePublisher
    return publisher(port, pipeline, renderer, clock, wall_clock)
