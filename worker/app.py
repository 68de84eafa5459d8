"""The worker loop: consume → decode → batch → classify → publish → commit.

Two threads. The main thread owns every Kafka call: it polls, decodes and
tokenizes, closes batches, publishes finished batches, handles delivery reports
and stores offsets. The inference thread only runs the model, so Kafka I/O and
tokenization overlap with inference and the consumer is served (and stays in
its group) however long a batch takes.

Batches ("windows") are published strictly in the order they were consumed;
with exactly-once delivery each window is one transaction carrying its input
offsets.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from worker.batching import Batcher, Window
from worker.errors import WorkerError
from worker.kafka_io import KafkaClients, OffsetTracker, Partition, RebalanceHandlers, transaction_retriable
from worker.metrics import Health, WorkerMetrics
from worker.model import BatchOutcome, Classifier, Encoding, classify_encoded, to_prediction
from worker.records import INFERENCE_ERROR, Comment, InputRecord, Prediction, Rejection
from worker.settings import Settings
from worker.stages import prepare, render

log = logging.getLogger(__name__)

POLL_CHUNK = 1000
IDLE_POLL_S = 0.1
BUSY_POLL_S = 0.005


@dataclass
class Entry:
    """One consumed record inside a window, with what became of it."""

    item: Comment | Rejection
    encoding: Encoding | None = None
    prediction: Prediction | None = None

    @property
    def record(self) -> InputRecord:
        return self.item.record


@dataclass
class Classified:
    window: Window[Entry]
    generation: int
    real_tokens: int = 0
    padded_tokens: int = 0
    inference_s: float = 0.0
    failures: dict[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Outgoing:
    """A record on its way to the broker; comes back with its delivery report."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]
    source: InputRecord
    reason: str | None  # None for a result, the dead-letter reason otherwise
    label: str | None = None


def classify_isolating(
    classifier: Classifier, encodings: Sequence[Encoding], sub_batch_max_tokens: int
) -> tuple[list[list[float] | None], dict[int, str], BatchOutcome | None]:
    """Classify; if the model raises, split in halves until the failing texts are isolated."""
    try:
        outcome = classify_encoded(classifier, encodings, sub_batch_max_tokens)
        return list(outcome.probabilities), {}, outcome
    except Exception as exc:  # noqa: BLE001 - any model failure must not stop the stream
        if len(encodings) == 1:
            return [None], {0: f"{type(exc).__name__}: {exc}"}, None
    middle = len(encodings) // 2
    left, left_failed, _ = classify_isolating(classifier, encodings[:middle], sub_batch_max_tokens)
    right, right_failed, _ = classify_isolating(classifier, encodings[middle:], sub_batch_max_tokens)
    failures = {**left_failed, **{i + middle: reason for i, reason in right_failed.items()}}
    return left + right, failures, None


class Worker:
    """One worker process. ``run`` blocks until ``request_stop`` (or a fatal error)."""

    def __init__(
        self,
        settings: Settings,
        classifier: Classifier,
        metrics: WorkerMetrics | None = None,
        health: Health | None = None,
        clients_factory: Callable[..., KafkaClients] = KafkaClients,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.classifier = classifier
        self.metrics = metrics or WorkerMetrics()
        self.health = health or Health()
        self._clock = clock
        self._wall_clock = wall_clock
        self.clients = clients_factory(
            settings,
            RebalanceHandlers(self._on_assigned, self._on_revoked, self._on_lost),
            on_lag=self.metrics.set_lag,
            on_error=lambda kind, fatal: self.metrics.errors.labels(kind=f"kafka_{kind}").inc(),
        )
        self.exactly_once = settings.delivery == "exactly_once"
        self.model_ref = {"id": classifier.info.get("model", "?"), "revision": classifier.info.get("revision", "?")}
        self._batcher: Batcher[Entry] = Batcher(
            settings.batch_max_messages, settings.batch_max_tokens, settings.batch_max_wait_ms / 1000, clock
        )
        self._tracker = OffsetTracker()
        self._todo: queue.Queue[tuple[Window[Entry], int] | None] = queue.Queue()
        self._done: queue.Queue[Classified] = queue.Queue()
        self._windows_in_pipeline = 0
        self._generation = 0
        self._paused = False
        self._stop = threading.Event()
        self._inference_thread: threading.Thread | None = None
        self._inference_error: BaseException | None = None

    # --- control ---
    def request_stop(self) -> None:
        """Safe from a signal handler: only sets a flag."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self) -> bool:
        """Serve until stopped. Returns True if everything in flight was finished before the deadline."""
        self.clients.start()
        self._inference_thread = threading.Thread(target=self._inference_loop, name="inference", daemon=True)
        self._inference_thread.start()
        self.metrics.ready.set(1)
        try:
            while not self._stop.is_set():
                self._step()
        finally:
            self.health.stopping = True
            self.metrics.ready.set(0)
        return self._shutdown()

    # --- the loop ---
    def _step(self) -> None:
        self.health.beat()
        busy = self._windows_in_pipeline > 0 or len(self._tracker) > 0
        timeout = BUSY_POLL_S if busy else IDLE_POLL_S
        # A window whose wait is over keeps filling (up to its size limits) while the model is
        # busy with the previous one: it could not start sooner anyway, and under load batches
        # grow with the traffic instead of queueing up as many small ones. A message therefore
        # waits at most the batch wait plus the batch ahead of it plus its own.
        model_backlogged = self._windows_in_pipeline > 0
        if not model_backlogged:
            timeout = min(timeout, self._batcher.time_left())
        records = self.clients.poll(POLL_CHUNK, timeout)
        if records:
            self._accept(records)
        if self._batcher.is_due() and not model_backlogged:
            self._dispatch()
        self._publish_finished()
        self.clients.serve_producer(0)
        self._handle_reports()
        self._store_offsets()
        self._apply_backpressure()
        if self._inference_error is not None:
            raise WorkerError(f"inference thread died: {self._inference_error!r}")

    def _accept(self, records: list[InputRecord]) -> None:
        s = self.settings
        prepared = prepare(
            records, self.classifier, input_format=s.input_format, text_field=s.text_field,
            max_bytes=s.max_message_bytes,
        )
        for item in prepared:
            record = item.record
            self._tracker.add((record.topic, record.partition), record.offset)
            self.metrics.consumed.labels(topic=record.topic).inc()
            encoding = item.encoding
            if encoding is not None:
                if self._batcher.would_overflow(len(encoding.ids)):
                    self._dispatch()
                self._batcher.add(Entry(item.item, encoding), len(encoding.ids))
            else:
                self._batcher.add(Entry(item.item), None)
            if self._batcher.is_full():
                self._dispatch()
        self.metrics.in_flight.set(len(self._tracker))

    def _dispatch(self) -> None:
        if len(self._batcher) == 0:
            return
        window = self._batcher.take()
        self.metrics.batch_wait.observe(window.closed_at - window.opened_at)
        self._windows_in_pipeline += 1
        self._todo.put((window, self._generation))

    def _inference_loop(self) -> None:
        try:
            while (job := self._todo.get()) is not None:
                window, generation = job
                self._done.put(self._classify_window(window, generation))
        except BaseException as exc:  # noqa: BLE001 - reported to the main thread, which stops
            self._inference_error = exc

    def _classify_window(self, window: Window[Entry], generation: int) -> Classified:
        entries = [e for e in window.items if e.encoding is not None]
        result = Classified(window, generation)
        if not entries:
            return result
        started = time.perf_counter()
        probabilities, failures, outcome = classify_isolating(
            self.classifier, [e.encoding for e in entries], self.settings.sub_batch_max_tokens  # type: ignore[misc]
        )
        result.inference_s = time.perf_counter() - started
        labels = self.classifier.labels
        for index, (entry, probs) in enumerate(zip(entries, probabilities)):
            if probs is not None and entry.encoding is not None:
                entry.prediction = to_prediction(probs, labels, entry.encoding)
        for index, reason in failures.items():
            entries[index].item = Rejection(entries[index].record, INFERENCE_ERROR, reason)
        result.failures = failures
        if outcome is not None:
            result.real_tokens, result.padded_tokens = outcome.real_tokens, outcome.padded_tokens
        else:
            result.real_tokens = sum(len(e.encoding.ids) for e in entries if e.encoding is not None)
            result.padded_tokens = result.real_tokens
        return result

    # --- publishing ---
    def _publish_finished(self, block_s: float = 0.0) -> None:
        while True:
            try:
                finished = self._done.get(timeout=block_s) if block_s else self._done.get_nowait()
            except queue.Empty:
                return
            block_s = 0.0
            self._windows_in_pipeline -= 1
            if finished.generation != self._generation:
                continue  # consumed before a rewind; those records are being read again
            self._observe_batch(finished)
            self._publish(finished.window)

    def _observe_batch(self, finished: Classified) -> None:
        m = self.metrics
        classified = [e for e in finished.window.items if e.prediction is not None]
        if finished.failures:
            m.errors.labels(kind="inference").inc(len(finished.failures))
        if not classified:
            return
        m.batch_messages.observe(len(classified))
        m.batch_tokens.observe(finished.real_tokens)
        m.real_tokens.inc(finished.real_tokens)
        m.padded_tokens.inc(finished.padded_tokens)
        if finished.padded_tokens:
            m.padding_efficiency.set(finished.real_tokens / finished.padded_tokens)
        m.inference_seconds.observe(finished.inference_s)
        m.inference_per_message.observe(finished.inference_s / len(classified))
        for entry in classified:
            assert entry.prediction is not None
            m.score.observe(entry.prediction.score)

    def _outgoing(self, entry: Entry, now_ms: float) -> Outgoing:
        s = self.settings
        out = render(
            entry.item, entry.prediction, model=self.model_ref, now_ms=now_ms,
            max_bytes=s.max_message_bytes, fields=s.result_field_names,
        )
        label = out.prediction.label if out.prediction is not None else None
        topic = s.output_topic if out.reason is None else s.dlq_topic
        return Outgoing(topic, out.key, out.value, out.headers, out.source, out.reason, label)

    def _publish(self, window: Window[Entry]) -> None:
        now_ms = self._wall_clock() * 1000
        outgoing = [self._outgoing(entry, now_ms) for entry in window.items]
        if not self.exactly_once:
            for out in outgoing:
                self._send(out)
            return
        positions: dict[Partition, int] = {}
        for out in outgoing:
            source = out.source
            partition = (source.topic, source.partition)
            positions[partition] = max(positions.get(partition, 0), source.offset + 1)
        self._publish_transaction(outgoing, positions)

    def _send(self, out: Outgoing) -> None:
        self.clients.produce(out.topic, out.key, out.value, out.headers, out)

    def _publish_transaction(self, outgoing: list[Outgoing], positions: dict[Partition, int]) -> None:
        try:
            self.clients.begin_transaction()
            for out in outgoing:
                self._send(out)
            self._commit_transaction(positions)
        except Exception as exc:  # noqa: BLE001 - any failure: abort, then re-read what was not committed
            self.metrics.errors.labels(kind="transaction").inc()
            log.warning("transaction failed; aborting and re-reading from the committed offsets: %s", exc)
            self.clients.take_reports()
            try:
                self.clients.abort_transaction()
            except Exception as abort_error:  # noqa: BLE001 - fenced or fatal: a restart is the way out
                raise WorkerError("transaction could not be aborted; exiting to be restarted") from abort_error
            self._rewind()
            return
        self.clients.take_reports()  # delivered inside the committed transaction
        for out in outgoing:
            self._delivered(out)

    def _commit_transaction(self, positions: dict[Partition, int], attempts: int = 5) -> None:
        for attempt in range(1, attempts + 1):
            try:
                self.clients.commit_transaction(positions)
                return
            except Exception as exc:  # noqa: BLE001 - classified below
                retriable, needs_abort = transaction_retriable(exc)
                if needs_abort or not retriable or attempt == attempts:
                    raise
                log.warning("transaction commit failed (attempt %d), retrying: %s", attempt, exc)

    def _rewind(self) -> None:
        """After an aborted transaction: drop all in-flight work and re-read from the committed offsets."""
        assigned = self.clients.assignment()
        committed = self.clients.committed(assigned)
        self._generation += 1
        self._batcher.take()
        self._tracker.forget(assigned)
        self.clients.rewind(committed)
        log.warning("rewound to committed offsets %s after an aborted transaction", committed)

    def _handle_reports(self) -> None:
        for out, error in self.clients.take_reports():
            if error is None:
                self._delivered(out)
            else:
                # librdkafka already retried for message.timeout.ms; keep trying rather than skip.
                self.metrics.errors.labels(kind="delivery").inc()
                log.warning("delivery to %s failed (%s); retrying", out.topic, error)
                self._send(out)

    def _delivered(self, out: Outgoing) -> None:
        m = self.metrics
        source = out.source
        self._tracker.mark_done((source.topic, source.partition), source.offset)
        if out.reason is None:
            m.produced.labels(topic=out.topic).inc()
            m.predictions.labels(label=out.label).inc()
            if source.timestamp_ms:
                m.end_to_end.observe(max(0.0, self._wall_clock() - source.timestamp_ms / 1000))
        else:
            m.dead_letters.labels(reason=out.reason).inc()

    def _store_offsets(self) -> None:
        positions = self._tracker.committable()
        if positions and not self.exactly_once:
            self.clients.store_offsets(positions)
        self.metrics.in_flight.set(len(self._tracker))

    def _apply_backpressure(self) -> None:
        in_flight = len(self._tracker)
        limit = self.settings.max_in_flight_messages
        if not self._paused and in_flight >= limit:
            self._paused = True
            self.clients.pause(self.clients.assignment())
        elif self._paused and in_flight < limit // 2:
            self._paused = False
            self.clients.resume(self.clients.assignment())

    # --- draining, rebalancing, shutdown ---
    def _drain(self, deadline: float) -> bool:
        """Finish every consumed record: classify, publish, wait for acknowledgements."""
        self._dispatch()
        while self._clock() < deadline:
            self._publish_finished(block_s=0.01 if self._windows_in_pipeline else 0.0)
            self.clients.serve_producer(0.01)
            self._handle_reports()
            if self._inference_error is not None:
                return False
            if self._windows_in_pipeline == 0 and len(self._tracker) == 0:
                return True
        return False

    def _on_assigned(self, partitions: list[Partition]) -> None:
        self.health.partitions += len(partitions)
        log.info("partitions assigned", extra={"fields": {"partitions": partitions}})
        if self._paused:
            self.clients.pause(partitions)

    def _on_revoked(self, partitions: list[Partition]) -> None:
        log.info("partitions revoked; finishing their in-flight records", extra={"fields": {"partitions": partitions}})
        finished = self._drain(self._clock() + self.settings.shutdown_timeout_s)
        if not finished:
            log.warning("in-flight records not finished before revocation; the new owner will re-read them")
        self._store_offsets()
        if not self.exactly_once:
            self.clients.commit(self._tracker.positions(partitions))
        self._tracker.forget(partitions)
        self.health.partitions = max(0, self.health.partitions - len(partitions))

    def _on_lost(self, partitions: list[Partition]) -> None:
        log.warning("partitions lost; their uncommitted records will be re-read by the new owner",
                    extra={"fields": {"partitions": partitions}})
        self._tracker.forget(partitions)
        self.health.partitions = max(0, self.health.partitions - len(partitions))

    def _shutdown(self) -> bool:
        deadline = self._clock() + self.settings.shutdown_timeout_s
        clean = self._drain(deadline)
        self._store_offsets()
        if not self.exactly_once:
            self.clients.commit(self._tracker.positions())
        self._todo.put(None)
        undelivered = self.clients.flush(max(0.0, deadline - self._clock()))
        self.clients.close()
        if not clean or undelivered:
            log.warning(
                "stopped with unfinished records; they will be read again",
                extra={"fields": {"in_flight": len(self._tracker), "undelivered": undelivered}},
            )
        return clean and not undelivered
