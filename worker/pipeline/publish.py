"""Publish: produce deliveries and report back what finished, per delivery mode.

:class:`AtLeastOncePublisher` produces each record as its window finishes; a delivery is finished
once every message of it is acknowledged, and when a delivery times out everything unfinished must
be read again (so later results of a key never overtake earlier ones).
:class:`TransactionalPublisher` writes windows in Kafka transactions together with their input
offsets, following librdkafka's transactional state machine: retriable → call again,
abortable → abort and read the input again, fatal → the worker ends.

The contract with the loop (:mod:`worker.app`), which owns offsets, epochs and replays:
:meth:`~Publisher.publish`, :meth:`~Publisher.step` and :meth:`~Publisher.abandon` return a
:class:`Published`: the deliveries now acknowledged (or committed in a transaction), and, when
everything unfinished must be read again, why. The loop marks those records done, counts them, and
replays; :meth:`~Publisher.store_offsets` hands Kafka what the loop found committable. A publisher
asks the loop one thing only, ``is_current(delivery)``: whether the delivery's partition is still
owned and not rewound since it was consumed.

What a refused message or a failed call means (dead letter, abort, call again, fatal) is
:mod:`worker.policy`'s; the dead letter that replaces a refused message is :mod:`.render`'s.

Shadow results (:mod:`.shadow`, :meth:`~Publisher.publish_shadow`) are produced best effort and
outside that accounting: no delivery waits for them, a refused one is only counted and dropped, and
a full local queue drops them instead of waiting. At least once, they are produced at once; exactly
once, they travel in the next transaction the publisher begins (one of their own when no window is
waiting), so they are committed with it, or lost with it when it aborts.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Mapping, Protocol

from worker.errors import FatalError
from worker.kafka_io import KafkaCallError, KafkaPort, Partition
from worker.pipeline.render import Delivery, Message, Renderer
from worker.policy import (
    Action,
    ClientError,
    fatal_for,
    for_delivery_report,
    for_refused_message,
    for_transaction_call,
    no_dead_letter_fits,
)

log = logging.getLogger(__name__)

# Seconds one transactional call may take before it is retried (commit/abort are resumable).
TXN_CALL_TIMEOUT_S = 10.0
# How long a commit may keep failing with retriable errors before it is aborted and rewound, and an
# abort before the worker stops: the producer's transaction.timeout.ms, after which the broker has
# aborted the transaction itself (librdkafka's default, 60 s, when the setting is not given).
DEFAULT_TXN_TIMEOUT_S = 60.0
BACKOFF_S = (0.1, 0.2, 0.5, 1.0, 2.0)
QUEUE_FULL_WAIT_S = 0.05
# Exactly once, shadow results ride in the primary's next transaction; only when none has begun for
# this long do they get one of their own (a commit of their own costs the main thread a round trip).
SHADOW_TXN_WAIT_S = 0.5


@dataclass(frozen=True)
class _Unaccounted:
    """The token of a shadow result: its delivery report is counted, never waited for."""

    message: Message


@dataclass
class Published:
    """What one call to a publisher finished."""

    done: list[Delivery] = field(default_factory=list)  # acknowledged, or committed in a transaction
    replay: str | None = None  # set when everything unfinished must be read again: why


class Publisher(Protocol):
    deadline: float | None  # set by the loop during a drain: every wait inside a call keeps to it

    def publish(self, deliveries: list[Delivery]) -> Published: ...

    def publish_shadow(self, messages: list[Message]) -> None: ...

    def step(self) -> Published: ...

    @property
    def idle(self) -> bool: ...

    def store_offsets(self, positions: Mapping[Partition, int]) -> None: ...

    def abandon(self, deadline: float) -> Published: ...

    def salvage(self, collect: bool = False) -> list[Delivery]: ...


class _Replay(Exception):
    """Internal: everything unfinished must be read again; ends the publisher's call."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Producing:
    """Producing a delivery's messages, and what to do when the broker refuses one of them."""

    transactional = False

    def __init__(self, port: KafkaPort, renderer: Renderer, is_current: Callable[[Delivery], bool],
                 beat: Callable[[], None], clock: Callable[[], float], wall_clock: Callable[[], float],
                 on_shadow: Callable[[str], None] = lambda outcome: None) -> None:
        self._port = port
        self._on_shadow = on_shadow  # "produced" (handed to the producer) or "refused"
        self._renderer = renderer
        self._is_current = is_current
        self._beat = beat  # keeps the loop's heartbeat while a call waits
        self._clock = clock
        self._wall_clock = wall_clock
        self._tag = 0  # changes whenever earlier delivery reports must be ignored
        self._done: list[Delivery] = []  # finished during the current call
        self.deadline: float | None = None  # inside a drain: no wait of a call may pass it

    def _time_left(self, wanted_s: float) -> float:
        """``wanted_s``, or less inside a drain: what is left of its deadline."""
        if self.deadline is None:
            return wanted_s
        return max(0.0, min(wanted_s, self.deadline - self._clock()))

    def _past_deadline(self) -> bool:
        return self.deadline is not None and self._clock() >= self.deadline

    def _finishing(self, work: Callable[[], None]) -> Published:
        """Run one call's work; what it finished (and a replay it asked for) is the call's answer."""
        try:
            work()
        except _Replay as replay:
            return Published(self._take_done(), replay.reason)
        return Published(self._take_done())

    def _take_done(self) -> list[Delivery]:
        done, self._done = self._done, []
        return done

    def salvage(self, collect: bool = False) -> list[Delivery]:
        """What a call that raised had finished before it did (the worker still commits those on its way out).

        ``collect``: the client still works (the fatal error was not its own), so the acknowledgements
        waiting in it are taken too: every record acknowledged before the worker stops is committed.
        """
        return self._take_done()

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
                # message.timeout.ms, after which queued messages fail and free their space, and
                # inside a drain by its deadline).
                self._beat()
                if self._past_deadline():
                    self._out_of_time("waiting for room in the producer queue")
                self._wait_for_room()
            except KafkaCallError as exc:
                self._refused(delivery, index, exc.error)
                return

    def _wait_for_room(self) -> None:
        self._port.serve(self._time_left(QUEUE_FULL_WAIT_S))

    def _out_of_time(self, doing: str) -> None:
        raise NotImplementedError

    def _produce_unaccounted(self, messages: list[Message]) -> None:
        """Shadow results: produced once, never waited for; a refusal or a full queue only drops and counts them."""
        for message in messages:
            try:
                self._port.produce(message.topic, message.key, message.value, message.headers, _Unaccounted(message))
            except (BufferError, KafkaCallError) as exc:
                self._on_shadow("refused")
                log.debug("shadow result dropped: %s", exc)
                continue
            self._on_shadow("produced")

    def _unaccounted(self, token: object, error: ClientError | None) -> bool:
        """True for a shadow result's report (counted here when it failed): no delivery waits for it."""
        if not isinstance(token, _Unaccounted):
            return False
        if error is not None:
            self._on_shadow("refused")
        return True

    def _replacement(self, delivery: Delivery, index: int, error: ClientError) -> Message:
        """The dead letter that takes the place of a message the broker refused for good."""
        refused = delivery.messages[index]
        detail = f"{refused.topic} refused the record: {error}"
        replacement = self._renderer.replacement(delivery, index, detail, self._wall_clock() * 1000)
        if replacement is None:
            raise no_dead_letter_fits(refused.topic, error)
        return replacement

    def _refused(self, delivery: Delivery, index: int, error: ClientError) -> None:
        action = for_refused_message(error, transactional=self.transactional)
        if action is Action.ABORT:
            raise _Abort(f"produce: {error}")
        if action is Action.FATAL:
            raise fatal_for(error, f"writing to {delivery.messages[index].topic}")
        log.warning("record %s[%d]@%d refused by %s (%s); dead-lettering it", delivery.source.topic,
                    delivery.source.partition, delivery.source.offset, delivery.messages[index].topic, error)
        delivery.messages[index] = self._replacement(delivery, index, error)
        delivery.escalations += 1
        self._produce(delivery, index)


class AtLeastOncePublisher(_Producing):
    """Produce as windows finish; a delivery is finished when all its messages are acknowledged."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self._unhandled: deque = deque()  # delivery reports taken from the client, not yet handled

    @property
    def idle(self) -> bool:
        return True  # nothing of its own beyond what the offset tracker counts

    def publish(self, deliveries: list[Delivery]) -> Published:
        def work() -> None:
            for delivery in deliveries:
                self._produce_all(delivery)

        return self._finishing(work)

    def publish_shadow(self, messages: list[Message]) -> None:
        self._produce_unaccounted(messages)

    def step(self) -> Published:
        def work() -> None:
            self._port.serve(0)
            self._handle_reports()

        return self._finishing(work)

    def store_offsets(self, positions: Mapping[Partition, int]) -> None:
        # librdkafka commits stored offsets every second, on revocation and on close (enable.auto.commit).
        self._port.store_offsets(positions)

    def abandon(self, deadline: float) -> Published:
        return Published()  # undelivered records are simply not committed: they are read again

    def _wait_for_room(self) -> None:
        super()._wait_for_room()
        self._handle_reports()

    def salvage(self, collect: bool = False) -> list[Delivery]:
        if collect:
            try:
                self._port.serve(0)
                self._unhandled.extend(self._port.take_reports())
            except KafkaCallError:
                pass
        # Only acknowledgements count now: a failed report would need a dead letter or a replay,
        # and the worker is stopping; those records are read again.
        while self._unhandled:
            token, error = self._unhandled.popleft()
            if self._unaccounted(token, error):
                continue
            tag, delivery, _ = token
            if error is None and tag == self._tag and self._is_current(delivery):
                delivery.pending -= 1
                if delivery.pending == 0:
                    self._done.append(delivery)
        return self._take_done()

    def _handle_reports(self) -> None:
        # Reports wait in _unhandled until handled: when one of them stops the worker, the
        # acknowledgements after it still count (salvage).
        self._unhandled.extend(self._port.take_reports())
        while self._unhandled:
            token, error = self._unhandled.popleft()
            if self._unaccounted(token, error):
                continue
            tag, delivery, index = token
            if tag != self._tag or not self._is_current(delivery):
                continue  # from before a replay or a revocation: the record is being redone elsewhere
            if error is None:
                delivery.pending -= 1
                if delivery.pending == 0:
                    self._done.append(delivery)
            elif for_delivery_report(error) is Action.PRODUCE_AGAIN:
                self._replay_after(error, delivery)
            else:
                self._refused(delivery, index, error)

    def _out_of_time(self, doing: str) -> None:
        # What is not produced now is read again; what is queued must not be written after it.
        self._port.purge_queued()
        self._tag += 1
        self._unhandled.clear()
        raise _Replay(f"the drain's deadline passed while {doing}")

    def _replay_after(self, error: ClientError, delivery: Delivery) -> None:
        # librdkafka gave up on this message after message.timeout.ms. Messages produced after it
        # may still be written, which would put later results of a key before earlier ones; so drop
        # everything not yet sent and replay every partition from its first unfinished record.
        log.warning("delivery to %s failed (%s); replaying from the first unfinished records to keep order",
                    delivery.messages[0].topic, error)
        self._port.purge_queued()
        self._tag += 1
        self._unhandled.clear()  # all from before the replay now
        raise _Replay(f"delivery failed: {error}")


IDLE, COMMITTING, ABORTING = "idle", "committing", "aborting"


class TransactionalPublisher(_Producing):
    """Every finished window (several at once when they queue up) in one transaction with its offsets."""

    transactional = True

    def __init__(self, *args, txn_timeout_s: float = DEFAULT_TXN_TIMEOUT_S, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self._txn_timeout_s = txn_timeout_s
        self._waiting: deque[list[Delivery]] = deque()
        self._shadow: list[Message] = []  # shadow results for the next transaction
        self._shadow_since = 0.0  # when the oldest of them arrived
        self._txn: list[Delivery] = []
        self._state = IDLE
        self._since = 0.0  # when the current commit or abort started
        self._attempt = 0
        self._next_try = 0.0
        self._abort_reason = ""
        # Source records the broker refused inside an aborted transaction: for each refused message
        # (its index and topic), what replaces it when the record comes back after the rewind. The
        # replacement itself is kept, not the error, so a replacement refused in turn escalates one
        # step further on the next rewind (result -> dead letter -> minimal dead letter -> the
        # worker stops) instead of rebuilding the same refused dead letter forever.
        self._refusals: dict[tuple[str, int, int], dict[int, Message]] = {}

    @property
    def idle(self) -> bool:
        return self._state == IDLE and not self._waiting and not self._shadow

    def publish(self, deliveries: list[Delivery]) -> Published:
        if deliveries:
            self._waiting.append(deliveries)
        return self._finishing(self._advance)

    def publish_shadow(self, messages: list[Message]) -> None:
        if messages and not self._shadow:
            self._shadow_since = self._clock()
        self._shadow.extend(messages)  # produced by the next transaction begun

    def step(self) -> Published:
        return self._finishing(self._advance)

    def store_offsets(self, positions: Mapping[Partition, int]) -> None:
        pass  # offsets travel inside the transactions

    def _advance(self) -> None:
        while True:
            if self._past_deadline():
                return  # the drain gives up; abandon() aborts what is open
            if self._state != IDLE:
                if self._clock() < self._next_try:
                    return
                self._try_commit() if self._state == COMMITTING else self._try_abort()
                if self._state != IDLE:
                    return
            if not self._waiting and not (self._shadow and self._clock() - self._shadow_since >= SHADOW_TXN_WAIT_S):
                return
            self._begin()

    # --- one transaction ---
    def _begin(self) -> None:
        deliveries = [d for batch in self._waiting for d in batch if self._is_current(d)]
        self._waiting.clear()
        shadow, self._shadow = self._shadow, []
        if not deliveries and not shadow:
            return
        self._tag += 1
        try:
            self._port.begin_transaction()
        except KafkaCallError as exc:
            raise fatal_for(exc.error, "begin_transaction") from None  # nothing is open yet to abort
        self._txn = deliveries
        self._state = COMMITTING
        self._since = self._clock()
        self._attempt = 0
        try:
            for delivery in deliveries:
                self._apply_refusals(delivery)
                self._produce_all(delivery)
            self._produce_unaccounted(shadow)
            if deliveries:
                self._send_offsets(self._positions())
        except _Abort as abort:
            self._start_abort(abort.reason)
            return
        self._try_commit()

    def _out_of_time(self, doing: str) -> None:
        raise _Abort(f"the drain's deadline passed while {doing}")

    def _positions(self) -> dict[Partition, int]:
        positions: dict[Partition, int] = {}
        for delivery in self._txn:
            p = delivery.partition
            positions[p] = max(positions.get(p, 0), delivery.source.offset + 1)
        return positions

    def _apply_refusals(self, delivery: Delivery) -> None:
        source = delivery.source
        for index, replacement in self._refusals.pop((source.topic, source.partition, source.offset), {}).items():
            if index >= len(delivery.messages):
                continue  # rendered under other rules since (a reload): that copy no longer exists
            delivery.messages[index] = replacement
            delivery.escalations += 1

    def _send_offsets(self, positions: dict[Partition, int]) -> None:
        for backoff in (*BACKOFF_S, None):
            try:
                self._port.send_offsets(positions, self._call_timeout())
                return
            except KafkaCallError as exc:
                error = exc.error
                action = for_transaction_call(error)
                if action is Action.ABORT:
                    raise _Abort(f"send_offsets_to_transaction: {error}") from None
                if action is Action.FATAL:
                    raise fatal_for(error, "send_offsets_to_transaction") from None
                if backoff is None or self._time_left(backoff) < backoff:
                    raise _Abort(f"send_offsets_to_transaction kept failing: {error}") from None
                log.warning("send_offsets_to_transaction failed (%s); retrying with the same offsets", error)
                self._beat()
                time.sleep(backoff)

    def _try_commit(self) -> None:
        try:
            self._port.commit_transaction(self._call_timeout())
        except KafkaCallError as exc:
            error = exc.error
            action = for_transaction_call(error)
            if action is Action.ABORT:
                self._start_abort(f"commit_transaction: {error}")
            elif action is Action.CALL_AGAIN:
                if self._clock() - self._since > self._txn_timeout_s:
                    self._start_abort(f"commit_transaction kept failing for {self._txn_timeout_s:.0f} s: {error}")
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
        self._done.extend(d for d in committed if self._is_current(d))

    def _call_timeout(self) -> float:
        # At least a moment: a call with no time at all fails without trying (it is resumable).
        return max(0.1, self._time_left(TXN_CALL_TIMEOUT_S))

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
        for token, error in self._port.take_reports():
            if self._unaccounted(token, error):
                continue
            tag, delivery, index = token
            if tag != self._tag or error is None:
                continue
            action = for_delivery_report(error)
            if action is Action.PRODUCE_AGAIN:
                continue
            refused = delivery.messages[index]
            if action is Action.FATAL:
                raise fatal_for(error, f"writing to {refused.topic}")
            # Raises FatalError when not even a minimal dead letter could replace it.
            replacement = self._replacement(delivery, index, error)
            source = delivery.source
            self._refusals.setdefault((source.topic, source.partition, source.offset), {})[index] = replacement
            log.warning("record %s[%d]@%d refused by %s (%s); it will be replaced by %s after the rewind",
                        source.topic, source.partition, source.offset, refused.topic, error,
                        "a minimal dead letter" if replacement.minimal else "a dead letter")

    def _try_abort(self) -> None:
        try:
            self._port.abort_transaction(self._call_timeout())
        except KafkaCallError as exc:
            if for_transaction_call(exc.error, aborting=True) is Action.CALL_AGAIN:
                if self._clock() - self._since > self._txn_timeout_s:
                    # The broker has aborted the transaction by now; a fresh producer (the restart)
                    # starts clean, this one cannot get past its abort.
                    raise FatalError(
                        "kafka_fatal", f"abort_transaction kept failing for {self._txn_timeout_s:.0f} s: {exc.error}"
                    ) from None
                log.warning("abort_transaction failed (%s); calling it again", exc.error)
                self._schedule_retry()
                return
            raise fatal_for(exc.error, "abort_transaction") from None
        # Purged messages report later with _PURGE_* errors: the new tag makes them stale.
        self._tag += 1
        self._txn = []
        self._waiting.clear()
        self._state = IDLE
        raise _Replay(f"transaction aborted ({self._abort_reason})")

    # --- rebalance and shutdown ---
    def abandon(self, deadline: float) -> Published:
        """Abort the open transaction, if any, within ``deadline``."""

        def work() -> None:
            self._waiting.clear()
            self._shadow.clear()
            if self._state == COMMITTING:
                self._start_abort("given up at the deadline")
            while self._state == ABORTING and self._clock() < deadline:
                self._beat()
                time.sleep(max(0.0, min(self._next_try, deadline) - self._clock()))
                self._try_abort()

        return self._finishing(work)


class _Abort(Exception):
    """Internal: the open transaction must be aborted."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def make_publisher(port: KafkaPort, renderer: Renderer, is_current: Callable[[Delivery], bool],
                   beat: Callable[[], None], clock: Callable[[], float], wall_clock: Callable[[], float],
                   txn_timeout_s: float = DEFAULT_TXN_TIMEOUT_S,
                   on_shadow: Callable[[str], None] = lambda outcome: None) -> Publisher:
    """The publisher for the port's delivery mode: the only place that tells the two apart."""
    if port.transactional:
        return TransactionalPublisher(port, renderer, is_current, beat, clock, wall_clock, on_shadow,
                                      txn_timeout_s=txn_timeout_s)
    return AtLeastOncePublisher(port, renderer, is_current, beat, clock, wall_clock, on_shadow)
