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

A Schema Registry that cannot be reached concerns no record: the records from the first one that
needed it are *held* (in order, none committed, reading paused) and offered again every
``REGISTRY_RETRY_S`` while the worker is not-ready (``worker_blocked{reason="registry_unreachable"}``).

Failures that concern one record end in the dead-letter topic; failures that concern everything
(:class:`~worker.errors.FatalError`) make the worker not-ready, commit only what was delivered,
and end it with exit code 4.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

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
from worker.pipeline.intake import Entry, take_in
from worker.pipeline.publish import Published, make_publisher
from worker.pipeline.render import DEAD_LETTER, RESULT, ROUTED, Delivery, Renderer
from worker.pipeline.shadow import Shadow, ShadowItem
from worker.policy import AUTHENTICATION_CODES, DEAD_PRODUCER_REASONS, Action, ClientError, exit_code_for, fatal_for, for_client_error
from worker.rules_file import RulesFile
from worker.settings import Settings
from worker.throttle import Throttle
from worker.tracing import NoTracing, Tracing
from worker.watchdog import Overrun, Watchdog, default_on_overrun
from worker.wire.framing import RegistryUnreachable, SchemaPort
from worker.wire.routing import check_labels
from worker.wire.rules import Rules, check_thresholds, rules_from, split_thresholds
from worker.wire.sizes import record_size
from worker.wire.types import Comment, InputRecord

log = logging.getLogger(__name__)

POLL_CHUNK = 1000
IDLE_POLL_S = 0.1
BUSY_WAIT_S = 0.005
FATAL_STOP_S = 10.0
REGISTRY_RETRY_S = 1.0  # how often held records are offered again while the registry cannot be reached
SEEK_RETRY_S = 0.2  # how often a refused rewind is tried again
REGISTRY_BLOCKED = "registry_unreachable"


def default_clients(settings: Settings, events: ClientEvents, watchdog: Watchdog) -> KafkaPort:
    from worker.kafka_io.clients import KafkaClients

    return KafkaClients(settings, events, watchdog)


def default_schemas(settings: Settings) -> SchemaPort:
    try:
        from worker.kafka_io.schema_registry import RegistrySchemas
    except ImportError as exc:
        raise ConfigError(
            f"WORKER_INPUT_FORMAT={settings.input_format} / WORKER_OUTPUT_FORMAT={settings.output_format} need "
            f"the Schema Registry client ({exc}): pip install 'koelectra-worker[schema-registry]'"
        ) from None

    return RegistrySchemas(settings)


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
            raise ConfigError(f"{variable}: {exc}") from None
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
        schemas: SchemaPort | None = None,
        tracing: Tracing | None = None,
        shadow: Classifier | None = None,
    ) -> None:
        rules = rules_for(settings, classifier)
        self.settings = settings
        self.classifier = classifier
        self.metrics = metrics or WorkerMetrics()
        self.health = health or Health(self.metrics)
        self._clock = clock
        self._wall_clock = wall_clock
        self.tracing = tracing or NoTracing()
        self.watchdog = watchdog or Watchdog(on_overrun=overrun_handler(self.health), clock=clock)
        events = ClientEvents(
            self._on_assigned, self._on_revoked, self._on_lost, self._on_client_error, self._on_progress,
            on_wait=self._raise_if_fatal, on_broker_answers=self._on_broker_answers, on_commit=self._on_commit,
            on_group_answers=self._on_group_answers,
        )
        self.port = clients_factory(settings, events, self.watchdog)
        if schemas is None and settings.uses_schema_registry:
            schemas = default_schemas(settings)
        self.schemas = schemas
        self._held: list[InputRecord] = []  # consumed, not yet decoded: the registry could not be reached
        self._held_retry_at = 0.0
        # Rules from WORKER_ROUTES_FILE are read in start() (no I/O here) and may be reloaded between windows.
        self.rules_file = None if settings.routes_file is None else RulesFile(
            settings.routes_file, settings.reserved_topics, classifier.labels, self.metrics, clock
        )
        self.tracker = OffsetTracker()
        self.epochs = PartitionEpochs()
        self.batcher: Batcher[Entry] = Batcher(
            settings.batch_max_messages, settings.batch_max_tokens, settings.batch_max_wait_ms / 1000, clock
        )
        self.model_ref = {"id": classifier.info.get("model", "?"), "revision": classifier.info.get("revision", "?")}
        self.renderer = Renderer(
            settings.output_topic, settings.dlq_topic, self.model_ref, rules, self.port.max_record_bytes,
            settings.max_message_bytes, settings.result_field_names,
            encode=schemas.encode if schemas is not None and settings.output_format != "json" else None,
        )
        if self.rules_file is None:
            self.metrics.rules_in_force(self.renderer.rules.version)
            self.metrics.rules_valid.set(1)
        self.publisher = make_publisher(self.port, self.renderer, self._is_current, lambda: self.health.beat(),
                                        clock, wall_clock, settings.transaction_timeout_s, self._on_shadow_record)
        self.shadow: Shadow | None = None
        if shadow is not None:
            assert settings.shadow_topic is not None  # the settings require it with a shadow model
            topic = settings.shadow_topic
            self.shadow = Shadow(
                shadow, topic, self.model_ref["id"], lambda: self.renderer.rules,
                lambda: min(self.renderer.limit, self.port.max_record_bytes(topic)), self.metrics,
                settings.sub_batch_max_tokens, settings.shadow_max_failures, settings.shadow_window_timeout_s,
                settings.shadow_max_behind_windows, settings.result_field_names, clock,
            )
        self.backpressure = Backpressure(self.port, settings.max_in_flight_messages, settings.max_in_flight_bytes)
        self.inference: InferenceThread | None = None
        self.exit_code = EXIT_CLEAN
        self.fatal: FatalError | None = None
        self._stop = threading.Event()
        self._started = False
        self._pending_fatal: FatalError | None = None
        self._access_since: float | None = None
        # When the group coordinator last answered (None: not watched, the statistics being off or the
        # worker not started), and how long it may stay silent (read once: checked on every turn).
        self._group_heard_at: float | None = None
        self._group_silence_limit_s = settings.group_silence_limit_s
        self._access_refused_by: str | None = None
        self._stop_requested_at: float | None = None  # the shutdown deadline counts from here
        self._replays = 0  # how often everything unfinished was dropped to be read again
        # Partitions whose rewind Kafka refused: their fetch went on past the records to read again, so
        # what they deliver is dropped until a seek succeeds (committing past those records loses them).
        self._unsought: dict[Partition, int] = {}
        self._seek_retry_at = 0.0
        self._deadline: float | None = None  # the one shutdown deadline, once stopping
        self._throttle = Throttle(10.0, clock)

    # --- lifecycle ---
    def request_stop(self) -> None:
        """Safe from any thread and from a signal handler: only sets a flag (and when it was first set)."""
        if self._stop_requested_at is None:
            self._stop_requested_at = self._clock()
        self._stop.set()

    def request_reload(self) -> None:
        """Read WORKER_ROUTES_FILE again before the next window (SIGHUP). Safe from any thread: sets a flag."""
        if self.rules_file is None:
            log.warning("reload requested, but the rules come from WORKER_ROUTES (no WORKER_ROUTES_FILE): nothing to reload")
            return
        self.rules_file.request_reload()

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
        except ConfigError:
            raise  # a setting the cluster or the model refuses at start: one line and exit 2 (cli)
        except Exception as exc:  # noqa: BLE001 - a bug: stop as after a fatal error, not with a native abort
            # The loop's state may be wrong after it, so nothing is drained: what was delivered is
            # committed, the rest is read again by the next owner (a restart by the supervisor).
            log.exception("internal error in the worker's loop")
            self.fatal = FatalError("internal_error", f"{type(exc).__name__}: {exc}"[:500])
        finally:
            self.health.set_phase("stopping")
        return self.shutdown()

    def start(self) -> None:
        """Connect, join the group and start the model's thread; the worker is then serving."""
        self.health.set_phase("starting")
        if self.rules_file is not None:
            self.renderer.use(self.rules_file.load())
        canary: Encoding = self.classifier.encode([CANARY_TEXT])[0]
        self.inference = InferenceThread(self.classifier, self.settings.sub_batch_max_tokens, canary, self._clock,
                                         self.tracing)
        destinations = list(self.renderer.rules.topics)
        if self.settings.output_format != "json":
            self._register_result_schemas([self.settings.output_topic, *destinations])
        shadow_topics = [self.shadow.topic] if self.shadow is not None else []
        self.port.start(destinations + shadow_topics)
        self._started = True
        if self.settings.statistics_interval_ms:
            self._group_heard_at = self._clock()
        self.inference.start()
        if self.shadow is not None:
            self.shadow.start()
        self.health.set_phase("serving")

    def step(self) -> None:
        """One turn: read, close a due window, publish finished ones, settle deliveries. Raises FatalError."""
        self.health.beat()
        self._raise_if_fatal()
        if self.rules_file is not None:
            # Between windows: every window is rendered (below, in _publish) under one version of the rules.
            rules = self.rules_file.poll()
            if rules is not None:
                self.renderer.use(rules)
        inference = self.inference
        assert inference is not None, "start() first"
        if self._unsought and self._clock() >= self._seek_retry_at:
            self._seek(dict(self._unsought))
        if self._held and self._clock() >= self._held_retry_at:
            held, self._held = self._held, []
            self._accept(held)
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
        self._publish_shadow()
        self._serve_publisher()
        in_flight = len(self.tracker)
        self.backpressure.update(in_flight, self.tracker.bytes, hold=bool(self._held))
        self.metrics.in_flight.set(in_flight)

    def drain(self, deadline: float) -> bool:
        """Classify, publish and get acknowledged every record consumed so far, before ``deadline``."""
        inference = self.inference
        assert inference is not None, "start() first"
        replays = self._replays
        with self._within(deadline):
            return self._drain(inference, deadline, replays)

    @contextmanager
    def _within(self, deadline: float) -> Iterator[None]:
        """Every wait inside the publisher's calls keeps to ``deadline`` (and to an outer one)."""
        outer = self.publisher.deadline
        self.publisher.deadline = deadline if outer is None else min(outer, deadline)
        try:
            yield
        finally:
            self.publisher.deadline = outer

    def _stop_deadline(self) -> float:
        """When a stop was requested (a signal during a revocation drain), the drain ends by the shutdown's deadline."""
        if self._stop_requested_at is None:
            return float("inf")
        timeout = self.settings.shutdown_timeout_s
        return self._stop_requested_at + timeout - min(2.0, 0.2 * timeout)

    def _drain(self, inference: InferenceThread, deadline: float, replays: int) -> bool:
        self._dispatch()
        while True:
            # A stop requested before or during the drain (a signal) ends it by the shutdown's deadline;
            # every wait inside the publisher's calls below keeps to it (_within set the first one).
            deadline = min(deadline, self._stop_deadline())
            self.publisher.deadline = min(self.publisher.deadline or deadline, deadline)
            self.health.beat()
            self._publish(inference.take(0.01 if inference.busy else 0.0))
            self._publish_shadow()  # what the shadow has finished; it is not waited for
            self._serve_publisher()
            if not inference.busy and self.publisher.idle and len(self.tracker) == 0 and len(self.batcher) == 0:
                # A replay (a timed-out delivery, an aborted transaction) empties the tracker too,
                # but what it dropped will be read again: that is not a finished drain; nor is one with
                # a partition whose rewind Kafka refused (what it delivered meanwhile was dropped).
                return self._replays == replays and not self._unsought
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
        # From the signal, not from now: a revocation drain may have run since.
        self._deadline = (self._stop_requested_at if self._stop_requested_at is not None else self._clock()) + timeout
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
        if self._group_heard_at is not None:
            silent_for = self._clock() - self._group_heard_at
            if silent_for >= self._group_silence_limit_s:
                # librdkafka 2.16 was seen keeping a consumer's group request queued for a coordinator
                # connection that was gone (after the broker restarted; like librdkafka#5511): the loop
                # polls on, owns nothing and never rejoins. Only a new client gets out of it, so the
                # supervisor is asked for one.
                raise FatalError(
                    "group_stuck",
                    f"the group coordinator has not answered the consumer for {silent_for:.0f} s "
                    f"(group {self.settings.group_id}); a fresh client is needed to rejoin",
                )
        inference = self.inference
        if inference is not None:
            stuck = inference.overdue(self._clock(), self.settings.model_stuck_after_s, self.settings.model_stuck_factor)
            if stuck is not None:
                raise FatalError("model_stuck", stuck)
        if inference is not None and inference.error is not None:
            if isinstance(inference.error, ModelBroken):
                raise FatalError("model_broken", str(inference.error))
            raise FatalError("model_broken", f"the inference thread failed: {inference.error!r}")

    def _register_result_schemas(self, topics: list[str]) -> None:
        """Register the result schema for every destination; while the registry cannot be reached, wait."""
        assert self.schemas is not None
        while True:
            self.health.beat()
            try:
                self.schemas.prepare(topics)
            except RegistryUnreachable as exc:
                self._registry_down(str(exc), "registering the result schema")
                if self._stop.wait(REGISTRY_RETRY_S):
                    raise FatalError(REGISTRY_BLOCKED, f"stopped while the Schema Registry could not be reached: {exc}")
                continue
            self._registry_up()
            return

    def _registry_down(self, why: str, doing: str) -> None:
        self.health.block(REGISTRY_BLOCKED, why)
        allowed, left_out = self._throttle.allow(REGISTRY_BLOCKED)
        if allowed:
            more = f" ({left_out} more like it)" if left_out else ""
            log.warning("the Schema Registry cannot be reached (%s) while %s; waiting for it%s", why, doing, more,
                        extra={"fields": {"held": len(self._held)}})

    def _registry_up(self) -> None:
        if REGISTRY_BLOCKED in self.health.blocked:
            self.health.unblock(REGISTRY_BLOCKED)
            log.info("the Schema Registry answers again")

    def _accept(self, records: list[InputRecord]) -> None:
        if self._unsought:  # read from past a refused rewind: they come again once a seek succeeds
            records = [r for r in records if (r.topic, r.partition) not in self._unsought]
        if self._held:  # nothing overtakes a held record
            self._held.extend(records)
            return
        now = self._clock()
        self._access_ok()
        s = self.settings
        taken = take_in(records, self.classifier, input_format=s.input_format, text_field=s.text_field,
                        max_bytes=s.max_message_bytes, schemas=self.schemas)
        if taken.held:
            self._held, self._held_retry_at = taken.held, now + REGISTRY_RETRY_S
            self._registry_down(taken.why or "unknown", f"decoding {len(taken.held)} records")
        elif self.schemas is not None:
            self._registry_up()
        if self.tracing.enabled:  # tracing off: this check, once per poll, is all it costs
            for entry in taken.entries:
                entry.trace = self.tracing.extract(entry.record)
        for entry in taken.entries:
            record = entry.record
            partition = (record.topic, record.partition)
            epoch = self.epochs.of(partition)
            if epoch is None:
                continue  # its partition was revoked while this poll was being served
            self.tracker.add(partition, record.offset, record_size(record.key, record.value, record.headers))
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
        trace = None
        if self.tracing.enabled:
            trace = self.tracing.start_window([e.record for e in window.items], [e.trace for e in window.items])
        self.inference.submit(window, trace)

    def _publish(self, finished: list[WindowJob]) -> None:
        for job in finished:
            self._observe_window(job)
            now_ms = self._wall_clock() * 1000
            current = [e for e in job.window.items
                       if self.epochs.is_current((e.record.topic, e.record.partition), e.epoch)]
            if job.trace is None:
                deliveries = [self.renderer.render(entry, now_ms) for entry in current]
            else:
                deliveries = [self._render_traced(job.trace, entry, now_ms) for entry in current]
                self.tracing.end_window(job.trace)
            self._settle(self.publisher.publish(deliveries))
            if self.shadow is not None:
                # Only the records whose result the primary produced: the shadow is compared with it.
                self.shadow.offer([
                    ShadowItem(entry.item, entry.prediction)
                    for entry, delivery in zip(current, deliveries)
                    if isinstance(entry.item, Comment) and entry.prediction is not None
                    and delivery.messages[0].kind == RESULT
                ])

    def _publish_shadow(self) -> None:
        """Shadow results finished since the last turn: to the producer, outside the offset accounting."""
        if self.shadow is not None:
            messages = self.shadow.collect(self._wall_clock() * 1000)
            if messages:
                self.publisher.publish_shadow(messages)

    def _on_shadow_record(self, outcome: str) -> None:
        self.metrics.shadow_records.labels(outcome=outcome).inc()

    def _render_traced(self, window_trace: Any, entry: Entry, now_ms: float) -> Delivery:
        """Render inside the record's span, whose id goes into the traceparent of every message it produces."""
        span = self.tracing.start_record(window_trace, entry.trace, entry.record)
        delivery = self.renderer.render(entry, now_ms, span.headers)
        span.end(next((m.reason for m in delivery.messages if m.kind == DEAD_LETTER), None))
        return delivery

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
        self._replays += 1
        self._drop_held(positions)  # read again from before them
        self.epochs.renew(positions)
        self.tracker.forget(positions)
        self.batcher.take()  # whatever it held is stale now
        self._seek(positions)
        self.metrics.errors.labels(kind="replay").inc()
        log.warning("replaying from the first unfinished records: %s", reason,
                    extra={"fields": {"positions": {f"{t}[{p}]": o for (t, p), o in positions.items()}}})

    def _seek(self, positions: dict[Partition, int]) -> None:
        """Rewind; a partition Kafka would not rewind is tried again every SEEK_RETRY_S and read nothing from meanwhile."""
        for partition in positions:
            self._unsought.pop(partition, None)
        refused = self.port.seek(positions)
        if refused:
            self._unsought.update(refused)
            self._seek_retry_at = self._clock() + SEEK_RETRY_S
            self.metrics.errors.labels(kind="seek_refused").inc(len(refused))

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

    def _drop_held(self, partitions: Any) -> None:
        dropped = set(partitions)
        self._held = [r for r in self._held if (r.topic, r.partition) not in dropped]

    def _forget(self, partitions: list[Partition]) -> None:
        self._drop_held(partitions)
        for partition in partitions:
            self._unsought.pop(partition, None)  # its next owner starts at the committed offset
        self.tracker.forget(partitions)
        self.epochs.release(partitions)
        self.health.partitions = len(self.epochs.owned())

    def _on_client_error(self, error: ClientError) -> None:
        self.metrics.errors.labels(kind=f"kafka_{error.code}").inc()
        action = for_client_error(error)
        if action is Action.WAIT_FOR_ACCESS:
            if self._access_since is None:
                self._access_since = self._clock()
            self._access_refused_by = error.code
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

    def _on_commit(self, error: ClientError | None) -> None:
        """librdkafka's result of an (automatic) offset commit, at-least-once."""
        if error is None:
            self.metrics.commits.labels(outcome="committed").inc()
            return
        self.metrics.commits.labels(outcome="failed").inc()
        allowed, left_out = self._throttle.allow(f"commit {error.code}")
        if allowed:
            more = f" ({left_out} more like it)" if left_out else ""
            log.warning("offset commit failed: %s%s; the records after the last commit will be read again if the "
                        "worker stops now", error, more)

    def _on_broker_answers(self) -> None:
        # An authenticated connection that answers proves the credentials are accepted again, so a
        # transient authentication or TLS failure clears even on an idle worker. It proves nothing
        # about permissions: an authorization refusal clears only with records, acknowledgements
        # or an assignment.
        if self._access_refused_by in AUTHENTICATION_CODES:
            self._access_ok()

    def _on_group_answers(self) -> None:
        if self._group_heard_at is not None:
            self._group_heard_at = self._clock()

    def _access_ok(self) -> None:
        if self._access_since is not None:
            self._access_since = None
            self._access_refused_by = None
            self.health.unblock("access_denied")
            log.info("the cluster accepts the worker again")

    def _on_progress(self, progress: dict[Partition, PartitionProgress]) -> None:
        """Lag = end of the log (last stable offset when reading committed) − the first record not yet done
        (at-least-once: or the committed offset, when that is further back)."""
        lag: dict[Partition, int] = {}
        for partition, p in progress.items():
            end = p.end(self.port.read_committed)
            position = self.tracker.first_unfinished(partition)
            if position is None:
                position = self.tracker.position(partition)
            if position is None:
                position = p.committed if p.committed >= 0 else (p.position if p.position >= 0 else None)
            if not self.port.transactional and p.committed >= 0 and position is not None:
                # At-least-once commits what is done a second later (or never, when commits fail):
                # the group's lag, which autoscalers read, counts from the committed offset.
                position = min(position, p.committed)
            if end >= 0 and position is not None:
                lag[partition] = max(0, end - position)
        self.metrics.set_lag(lag)

    # --- stopping ---
    def _abandon(self, deadline: float) -> None:
        try:
            with self._within(deadline):
                self._settle(self.publisher.abandon(deadline))
        except (FatalError, KafkaCallError) as exc:
            log.warning("could not abort the open transaction: %s", exc)

    def _stop_after_fatal(self) -> bool:
        fatal = self.fatal
        assert fatal is not None
        # Finished by the call that failed, and acknowledged while it failed: committed on the way out.
        for delivery in self.publisher.salvage(collect=self._started and fatal.reason not in DEAD_PRODUCER_REASONS):
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
        if self.shadow is not None:
            self.shadow.stop()
        if self._started:
            assert self._deadline is not None
            self.port.close(max(0.5, self._deadline - self._clock()), exit_code=exit_code)


__all__: list[Any] = ["Worker", "EXIT_CLEAN", "EXIT_UNFINISHED", "EXIT_FATAL"]
