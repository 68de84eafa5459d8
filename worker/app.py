"""The worker loop, with a public lifecycle (in the shape of uvicorn's ``Server``).

:meth:`Worker.start` connects, joins the group and starts the model's thread; :meth:`Worker.step`
is one turn of the loop; :meth:`Worker.drain` finishes everything in flight before a deadline;
:meth:`Worker.shutdown` drains within the shutdown deadline (or, after a fatal error, keeps only
what was delivered) and leaves the group; :meth:`Worker.run` composes them until
:meth:`Worker.request_stop` or a fatal error. Each step is bounded in time.

A record's path, one module each, in one direction: :mod:`worker.kafka_io` polls it;
:mod:`worker.pipeline.intake` decodes and tokenizes it into an Entry; :mod:`worker.pipeline.batch`
puts it in a window; :mod:`worker.pipeline.infer` classifies the window on the model's thread;
:mod:`worker.pipeline.render` turns it into a Delivery (result and routed copies, or dead letter);
:mod:`worker.pipeline.publish` produces it and returns it once acknowledged or committed; back
here its offset is marked done. The loop owns offsets, epochs and replays; :mod:`worker.policy`
says what each error means; :mod:`worker.backpressure` pauses reading while too much is in flight.

Everything consumed from a partition carries the partition's epoch; revoking, losing or
rewinding the partition renews it, so nothing consumed before is published or committed after.
Failures that concern one record end in the dead-letter topic; failures that concern everything
(:class:`~worker.errors.FatalError`) make the worker not-ready, commit only what was delivered,
and end it with exit code 4.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from worker.backpressure import Backpressure
from worker.engines.base import Classifier, Encoding, is_multi_label
from worker.errors import EXIT_CLEAN, EXIT_FATAL, EXIT_UNFINISHED, ConfigError, FatalError
from worker.health import Health
from worker.kafka_io import (
    ClientEvents,
    KafkaCallError,
    KafkaPort,
    OffsetTracker,
    Partition,
    PartitionEpochs,
    PartitionProgress,
)
from worker.metrics import WorkerMetrics
from worker.pipeline.batch import Batcher
from worker.pipeline.infer import CANARY_TEXT, InferenceThread, ModelBroken, WindowJob
from worker.pipeline.intake import Entry, decode_and_tokenize
from worker.pipeline.publish import Published, make_publisher
from worker.pipeline.render import DEAD_LETTER, RESULT, ROUTED, Delivery, Renderer
from worker.policy import DEAD_PRODUCER_REASONS, Action, ClientError, exit_code_for, fatal_for, for_client_error
from worker.settings import Settings
from worker.throttle import Throttle
from worker.watchdog import Overrun, Watchdog, default_on_overrun
from worker.wire.routing import check_labels
from worker.wire.rules import Rules, check_thresholds, rules_from, split_thresholds
from worker.wire.types import InputRecord

log = logging.getLogger(__name__)

POLL_CHUNK = 1000
IDLE_POLL_S = 0.1
BUSY_WAIT_S = 0.005
FATAL_STOP_S = 10.0


def default_clients(settings: Settings, events: ClientEvents, watchdog: Watchdog) -> KafkaPort:
    from worker.kafka_io.clients import KafkaClients

    return KafkaClients(settings, events, watchdog)


def rules_for(settings: Settings, classifier: Classifier) -> Rules:
    """The rules in force at start (WORKER_ROUTES, WORKER_LABEL_THRESHOLDS), checked against the loaded model.

    A route or threshold naming a label the model does not have is a ConfigError (one line, exit 2).
    """
    thresholds, default = split_thresholds(settings.label_thresholds)
    for variable, check in (
        ("WORKER_ROUTES", lambda: check_labels(settings.routes, classifier.labels)),
        ("WORKER_LABEL_THRESHOLDS", lambda: check_thresholds(settings.label_thresholds, classifier.labels,
                                                                  is_multi_label(classifier))),
    ):
        try:
            check()
        except ValueError as exc:
            raise ConfigError(f"invalid settings: {variable}: {exc}") from None
    return rules_from(settings.routes, thresholds, default)


def overrun_handler(health: Health) -> Callable[[Overrun], None]:
    """What the watchdog does (on its own thread) when a call is stuck: not-ready, one line, exit."""

    def on_overrun(overrun: Overrun) -> None:
        if overrun.exit_code == EXIT_FATAL:
            health.block("stuck_call", overrun.describe())
        health.set_phase("stopping")
        default_on_overrun(overrun)

    return on_overrun


class Worker:
    """One worker process. :meth:`run` blocks until :meth:`request_stop` or a fatal error."""

    def __init__(
        self,
        settings: Settings,
        classifier: Classifier,
        metrics: WorkerMetrics | None = None,
        health: Health | None = None,
        clients_factory: Callable[[Settings, ClientEvents, Watchdog], KafkaPort] = default_clients,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        watchdog: Watchdog | None = None,
    ) -> None:
        rules = rules_for(settings, classifier)
        self.settings = settings
        self.classifier = classifier
        self.metrics = metrics or WorkerMetrics()
        self.health = health or Health(self.metrics)
        self._clock = clock
        self._wall_clock = wall_clock
        self.watchdog = watchdog or Watchdog(on_overrun=overrun_handler(self.health), clock=clock)
        events = ClientEvents(
            self._on_assigned, self._on_revoked, self._on_lost, self._on_client_error, self._on_progress,
            on_wait=self._raise_if_fatal,
        )
        self.port = clients_factory(settings, events, self.watchdog)
        self.tracker = OffsetTracker()
        self.epochs = PartitionEpochs()
        self.batcher: Batcher[Entry] = Batcher(
            settings.batch_max_messages, settings.batch_max_tokens, settings.batch_max_wait_ms / 1000, clock
        )
        self.model_ref = {"id": classifier.info.get("model", "?"), "revision": classifier.info.get("revision", "?")}
        self.renderer = Renderer(
            settings.output_topic, settings.dlq_topic, self.model_ref, rules, self.port.max_record_bytes,
            settings.max_message_bytes, settings.result_field_names,
        )
        self.publisher = make_publisher(self.port, self.renderer, self._is_current, lambda: self.health.beat(),
                                        clock, wall_clock)
        self.backpressure = Backpressure(self.port, settings.max_in_flight_messages)
        self.inference: InferenceThread | None = None
        self.exit_code = EXIT_CLEAN
        self.fatal: FatalError | None = None
        self._stop = threading.Event()
        self._started = False
        self._pending_fatal: FatalError | None = None
        self._access_since: float | None = None
        self._deadline: float | None = None  # the one shutdown deadline, once stopping
        self._throttle = Throttle(10.0, clock)

    # --- lifecycle ---
    def request_stop(self) -> None:
        """Safe from any thread and from a signal handler: only sets a flag."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def started(self) -> bool:
        return self._started

    def run(self) -> bool:
        """Serve until stopped. True if everything in flight was finished; see :attr:`exit_code`."""
        self.watchdog.start()
        try:
            self.start()
            while not self._stop.is_set():
                self.step()
        except FatalError as exc:
            self.fatal = exc
        except KafkaCallError as exc:
            self.fatal = fatal_for(exc.error, exc.call)
        finally:
            self.health.set_phase("stopping")
        return self.shutdown()

    def start(self) -> None:
        """Connect, join the group and start the model's thread; the worker is then serving."""
        self.health.set_phase("starting")
        canary: Encoding = self.classifier.encode([CANARY_TEXT])[0]
        self.inference = InferenceThread(self.classifier, self.settings.sub_batch_max_tokens, canary, self._clock)
        self.port.start([route.topic for route in self.settings.routes])
        self._started = True
        self.inference.start()
        self.health.set_phase("serving")

    def step(self) -> None:
        """One turn: read, close a due window, publish finished ones, settle deliveries. Raises FatalError."""
        self.health.beat()
        self._raise_if_fatal()
        inference = self.inference
        assert inference is not None, "start() first"
        if inference.busy:
            # The model is working: read what has arrived without waiting, and otherwise wait for
            # the model (not for Kafka), so a finished window is published the moment it is done.
            records = self.port.poll(POLL_CHUNK, 0)
            if not records:
                self._publish(inference.take(BUSY_WAIT_S))
        else:
            timeout = BUSY_WAIT_S if len(self.tracker) else IDLE_POLL_S
            records = self.port.poll(POLL_CHUNK, min(timeout, self.batcher.time_left()))
        if records:
            self._accept(records)
        if self.batcher.is_due() and not inference.busy:
            self._dispatch()
        self._publish(inference.take())
        self._serve_publisher()
        in_flight = len(self.tracker)
        self.backpressure.update(in_flight)
        self.metrics.in_flight.set(in_flight)

    def drain(self, deadline: float) -> bool:
        """Classify, publish and get acknowledged every record consumed so far, before ``deadline``."""
        inference = self.inference
        assert inference is not None, "start() first"
        self._dispatch()
        while True:
            self.health.beat()
            self._publish(inference.take(0.01 if inference.busy else 0.0))
            self._serve_publisher()
            if not inference.busy and self.publisher.idle and len(self.tracker) == 0 and len(self.batcher) == 0:
                return True
            if self._clock() >= deadline or inference.error is not None:
                return False
            if not inference.busy:
                self.port.serve(min(0.01, max(0.0, deadline - self._clock())))

    def shutdown(self) -> bool:
        """Stop serving and leave the group. True if everything in flight was finished; see :attr:`exit_code`.

        After a fatal error only what was delivered is committed; otherwise everything in flight is
        drained within ``WORKER_SHUTDOWN_TIMEOUT_S``.
        """
        if self.fatal is not None:
            return self._stop_after_fatal()
        self.health.set_phase("stopping")
        timeout = self.settings.shutdown_timeout_s
        self._deadline = self._clock() + timeout
        reserve = min(2.0, 0.2 * timeout)  # kept for leaving the group
        self.backpressure.freeze()
        try:
            clean = self.drain(self._deadline - reserve)
            if not clean:
                self._abandon(self._deadline - reserve / 2)
            self.publisher.store_offsets(self.tracker.committable())
        except (FatalError, KafkaCallError) as exc:
            log.warning("shutdown: %s", exc)
            clean = False
        self._close(EXIT_UNFINISHED)
        unfinished = len(self.tracker)
        if not clean:
            log.warning("stopped with unfinished records; they will be read again",
                        extra={"fields": {"in_flight": unfinished}})
        self.exit_code = exit_code_for(None, clean)
        return clean

    # --- the loop's parts ---
    def _raise_if_fatal(self) -> None:
        if self._pending_fatal is not None:
            raise self._pending_fatal
        if self._access_since is not None:
            refused_for = self._clock() - self._access_since
            if refused_for >= self.settings.access_failure_timeout_s:
                raise FatalError(
                    "access_denied",
                    f"the cluster has refused the worker's credentials or permissions for {refused_for:.0f} s "
                    f"({self.health.blocked.get('access_denied', '')})",
                )
        inference = self.inference
        if inference is not None and inference.error is not None:
            if isinstance(inference.error, ModelBroken):
                raise FatalError("model_broken", str(inference.error))
            raise FatalError("model_broken", f"the inference thread failed: {inference.error!r}")

    def _accept(self, records: list[InputRecord]) -> None:
        now = self._clock()
        self._access_ok()
        s = self.settings
        entries = decode_and_tokenize(records, self.classifier, input_format=s.input_format, text_field=s.text_field,
                                      max_bytes=s.max_message_bytes)
        for entry in entries:
            record = entry.record
            partition = (record.topic, record.partition)
            epoch = self.epochs.of(partition)
            if epoch is None:
                continue  # its partition was revoked while this poll was being served
            self.tracker.add(partition, record.offset)
            self.metrics.consumed.labels(topic=record.topic).inc()
            entry.epoch, entry.arrived_at = epoch, now
            if entry.encoding is not None:
                tokens = len(entry.encoding.ids)
                if self.batcher.would_overflow(tokens):
                    self._dispatch()
                self.batcher.add(entry, tokens)
            else:
                self.batcher.add(entry, None)
            if self.batcher.is_full():
                self._dispatch()

    def _dispatch(self) -> None:
        if len(self.batcher) == 0:
            return
        window = self.batcher.take()
        self.metrics.batch_wait.observe(window.closed_at - window.opened_at)
        batching = self.metrics.stage_seconds.labels(stage="batching")
        for entry in window.items:
            batching.observe(window.closed_at - entry.arrived_at)
        assert self.inference is not None
        self.inference.submit(window)

    def _publish(self, finished: list[WindowJob]) -> None:
        for job in finished:
            self._observe_window(job)
            now_ms = self._wall_clock() * 1000
            deliveries = [
                self.renderer.render(entry, now_ms)
                for entry in job.window.items
                if self.epochs.is_current((entry.record.topic, entry.record.partition), entry.epoch)
            ]
            self._settle(self.publisher.publish(deliveries))

    def _serve_publisher(self) -> None:
        """Let the publisher advance (reports, commits, retries); hand Kafka what is now committable."""
        self._settle(self.publisher.step())
        self.publisher.store_offsets(self.tracker.committable())

    def _observe_window(self, job: WindowJob) -> None:
        m = self.metrics
        now = self._clock()
        count = len(job.window.items)
        for stage, seconds in (("queued", job.started_at - job.dispatched_at), ("inference", job.inference_s),
                               ("publish", now - job.finished_at)):
            histogram = m.stage_seconds.labels(stage=stage)
            for _ in range(count):
                histogram.observe(max(0.0, seconds))
        if job.failures:
            m.errors.labels(kind="inference").inc(len(job.failures))
        classified = [e for e in job.window.items if e.prediction is not None]
        if not classified:
            return
        m.batch_messages.observe(len(classified))
        m.batch_tokens.observe(job.real_tokens)
        m.real_tokens.inc(job.real_tokens)
        m.padded_tokens.inc(job.padded_tokens)
        if job.padded_tokens:
            m.padding_efficiency.set(job.real_tokens / job.padded_tokens)
        m.inference_seconds.observe(job.inference_s)
        m.inference_per_message.observe(job.inference_s / len(classified))
        for entry in classified:
            assert entry.prediction is not None
            m.score.observe(entry.prediction.score)

    # --- what publishers finish ---
    def _is_current(self, delivery: Delivery) -> bool:
        return self.epochs.is_current(delivery.partition, delivery.epoch)

    def _settle(self, published: Published) -> None:
        for delivery in published.done:
            self._done(delivery)
        if published.replay is not None:
            self._replay(published.replay)

    def _done(self, delivery: Delivery) -> None:
        m = self.metrics
        source = delivery.source
        self.tracker.mark_done(delivery.partition, source.offset)
        m.stage_seconds.labels(stage="delivery").observe(max(0.0, self._clock() - delivery.produced_at))
        self._access_ok()
        for message in delivery.messages:
            if message.kind == RESULT:
                m.produced.labels(topic=message.topic).inc()
                m.predictions.labels(label=message.label).inc()
                if source.timestamp_ms:
                    m.end_to_end.observe(max(0.0, self._wall_clock() - source.timestamp_ms / 1000))
            elif message.kind == ROUTED:
                m.routed.labels(route=message.route).inc()
            elif message.kind == DEAD_LETTER:
                m.dead_letters.labels(reason=message.reason).inc()

    def _replay(self, reason: str) -> None:
        """Drop everything unfinished and read it again from each partition's first unfinished record."""
        positions = self.tracker.unfinished()
        self.epochs.renew(positions)
        self.tracker.forget(positions)
        self.batcher.take()  # whatever it held is stale now
        self.port.seek(positions)
        self.metrics.errors.labels(kind="replay").inc()
        log.warning("replaying from the first unfinished records: %s", reason,
                    extra={"fields": {"positions": {f"{t}[{p}]": o for (t, p), o in positions.items()}}})

    # --- client events (inside poll, on the main thread) ---
    def _on_assigned(self, partitions: list[Partition]) -> None:
        for partition in partitions:
            self.epochs.assign(partition)
        self.health.partitions = len(self.epochs.owned())
        self.backpressure.on_assigned(partitions)
        self._access_ok()
        log.info("partitions assigned", extra={"fields": {"partitions": partitions}})

    def _on_revoked(self, partitions: list[Partition]) -> None:
        log.info("partitions revoked; finishing their in-flight records", extra={"fields": {"partitions": partitions}})
        if self.fatal is None and self._started:
            # One deadline: during shutdown the revocation shares the shutdown's.
            deadline = self._deadline if self._deadline is not None else self._clock() + self.settings.shutdown_timeout_s
            if not self.drain(deadline):
                log.warning("in-flight records not finished before revocation; the new owner will read them again")
                self._abandon(deadline)
        self.publisher.store_offsets(self.tracker.committable())
        self._forget(partitions)

    def _on_lost(self, partitions: list[Partition]) -> None:
        log.warning("partitions lost; their uncommitted records will be read again by the new owner",
                    extra={"fields": {"partitions": partitions}})
        self._forget(partitions)

    def _forget(self, partitions: list[Partition]) -> None:
        self.tracker.forget(partitions)
        self.epochs.release(partitions)
        self.health.partitions = len(self.epochs.owned())

    def _on_client_error(self, error: ClientError) -> None:
        self.metrics.errors.labels(kind=f"kafka_{error.code}").inc()
        action = for_client_error(error)
        if action is Action.WAIT_FOR_ACCESS:
            if self._access_since is None:
                self._access_since = self._clock()
            self.health.block("access_denied", str(error))
        elif action is Action.FATAL and self._pending_fatal is None:
            self._pending_fatal = fatal_for(error, "kafka client")
        allowed, left_out = self._throttle.allow(error.code)
        if allowed:
            more = f" ({left_out} more like it)" if left_out else ""
            if action is Action.WAIT_FOR_ACCESS:
                log.error("the cluster refuses the worker: %s%s; exiting in %.0f s unless it recovers", error, more,
                          self.settings.access_failure_timeout_s - (self._clock() - self._access_since))
            else:
                log.warning("kafka: %s%s", error, more)

    def _access_ok(self) -> None:
        if self._access_since is not None:
            self._access_since = None
            self.health.unblock("access_denied")
            log.info("the cluster accepts the worker again")

    def _on_progress(self, progress: dict[Partition, PartitionProgress]) -> None:
        """Lag = end of the log (last stable offset when reading committed) − the first record not yet done."""
        lag: dict[Partition, int] = {}
        for partition, p in progress.items():
            end = p.end(self.port.read_committed)
            position = self.tracker.first_unfinished(partition)
            if position is None:
                position = self.tracker.position(partition)
            if position is None:
                position = p.committed if p.committed >= 0 else (p.position if p.position >= 0 else None)
            if end >= 0 and position is not None:
                lag[partition] = max(0, end - position)
        self.metrics.set_lag(lag)

    # --- stopping ---
    def _abandon(self, deadline: float) -> None:
        try:
            self._settle(self.publisher.abandon(deadline))
        except (FatalError, KafkaCallError) as exc:
            log.warning("could not abort the open transaction: %s", exc)

    def _stop_after_fatal(self) -> bool:
        fatal = self.fatal
        assert fatal is not None
        for delivery in self.publisher.salvage():  # finished by the call that failed
            self._done(delivery)
        self.health.block(fatal.reason, fatal.detail)
        self.health.set_phase("stopping")
        self.metrics.errors.labels(kind=f"fatal_{fatal.reason}").inc()
        # The detail is the process's last line (cli); said once, here only the decision.
        log.critical("cannot go on (%s); committing what was delivered and exiting", fatal.reason)
        self._deadline = self._clock() + min(self.settings.shutdown_timeout_s, FATAL_STOP_S)
        if self._started:
            self.backpressure.freeze()
            try:
                self.publisher.store_offsets(self.tracker.committable())
            except KafkaCallError as exc:
                log.warning("could not store the delivered offsets: %s", exc)
            if fatal.reason not in DEAD_PRODUCER_REASONS:  # a dead producer cannot abort anything
                self._abandon(self._deadline - 1)
            self._close(EXIT_FATAL)
        self.exit_code = exit_code_for(fatal, clean=False)
        return False

    def _close(self, exit_code: int) -> None:
        if self.inference is not None:
            self.inference.stop()
        if self._started:
            assert self._deadline is not None
            self.port.close(max(0.5, self._deadline - self._clock()), exit_code=exit_code)


__all__: list[Any] = ["Worker", "EXIT_CLEAN", "EXIT_UNFINISHED", "EXIT_FATAL"]
