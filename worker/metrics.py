"""The worker's Prometheus metrics. They take a registry, so each test builds a fresh one.

The HTTP server that exposes them is :mod:`worker.endpoints`; what /healthz and /readyz answer is
:class:`~worker.health.Health`'s.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from worker.kafka_io import Partition

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0)
INFERENCE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
PER_MESSAGE_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
TOKEN_BUCKETS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
SCORE_DIFF_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)
SCORE_BUCKETS = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.99, 1.0)


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry if registry is not None else CollectorRegistry()
        self.registry = r
        self.consumed = Counter("worker_messages_consumed", "Records read from the input topic.", ["topic"], registry=r)
        self.produced = Counter(
            "worker_results_produced", "Results acknowledged by the broker on the output topic.", ["topic"], registry=r
        )
        self.dead_letters = Counter(
            "worker_dead_letters", "Records sent to the dead-letter topic, by reason.", ["reason"], registry=r
        )
        self.batch_messages = Histogram(
            "worker_batch_size_messages", "Messages classified per batch.", buckets=SIZE_BUCKETS, registry=r
        )
        self.batch_tokens = Histogram(
            "worker_batch_size_tokens", "Real (unpadded) tokens per batch.", buckets=TOKEN_BUCKETS, registry=r
        )
        self.real_tokens = Counter("worker_real_tokens", "Tokens of real text fed to the model.", registry=r)
        self.padded_tokens = Counter("worker_padded_tokens", "Tokens computed, padding included.", registry=r)
        self.padding_efficiency = Gauge(
            "worker_padding_efficiency_ratio", "Real over padded tokens in the last batch.", registry=r
        )
        self.inference_seconds = Histogram(
            "worker_inference_duration_seconds", "Model time per batch.", buckets=INFERENCE_BUCKETS, registry=r
        )
        self.inference_per_message = Histogram(
            "worker_inference_per_message_seconds", "Model time per batch divided by its messages.",
            buckets=PER_MESSAGE_BUCKETS, registry=r,
        )
        self.end_to_end = Histogram(
            "worker_end_to_end_latency_seconds", "Input record timestamp to acknowledged result.",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.batch_wait = Histogram(
            "worker_batch_wait_seconds", "Time a batch stayed open in the batcher.", buckets=LATENCY_BUCKETS, registry=r
        )
        self.predictions = Counter("worker_predictions", "Predictions by winning label.", ["label"], registry=r)
        self.routed = Counter(
            "worker_routed", "Results copied to a moderation route's topic (acknowledged), by rule.", ["route"], registry=r
        )
        self.score = Histogram("worker_prediction_score", "Probability of the winning label.", buckets=SCORE_BUCKETS, registry=r)
        self.lag = Gauge(
            "worker_consumer_lag_messages", "Consumer lag per partition (librdkafka statistics).",
            ["topic", "partition"], registry=r,
        )
        self.in_flight = Gauge(
            "worker_in_flight_messages", "Records consumed whose result is not yet acknowledged.", registry=r
        )
        self.model_info = Info("worker_model", "The loaded model (engine, precision and how they were chosen among the labels).", registry=r)
        self.engine_speed = Gauge(
            "worker_engine_candidate_texts_per_second",
            "WORKER_ENGINE=auto's measurement: texts/s of each candidate engine and precision, in small or full windows.",
            ["engine", "precision", "window", "chosen", "qualified"], registry=r,
        )
        self.engine_agreement = Gauge(
            "worker_engine_candidate_same_label_ratio",
            "WORKER_ENGINE=auto's check: share of calibration texts where a candidate's label equals the float32 reference's.",
            ["engine", "precision"], registry=r,
        )
        self.errors = Counter("worker_errors", "Errors by kind.", ["kind"], registry=r)
        self.commits = Counter(
            "worker_offset_commits", "At-least-once offset commits by outcome (committed, failed), as librdkafka reports them.",
            ["outcome"], registry=r,
        )
        self.ready = Gauge(
            "worker_ready", "1 while the worker is serving and nothing blocks it (what /readyz says).", registry=r
        )
        self.blocked = Gauge(
            "worker_blocked",
            "1 while the worker cannot go on for this reason (it then exits with code 4): access_denied, "
            "destination_unwritable, model_broken, model_stuck, stuck_call, fenced, kafka_fatal, group_stuck, internal_error.",
            ["reason"], registry=r,
        )
        self.stage_seconds = Histogram(
            "worker_stage_seconds",
            "Time each record spends in each stage of the loop: batching (poll to dispatch), queued (dispatch to "
            "inference start), inference, publish (inference end to produce), delivery (produce to acknowledgement).",
            ["stage"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.rules_reloads = Counter(
            "worker_rules_reloads",
            "Reloads of WORKER_ROUTES_FILE (on SIGHUP or a change of the file), by outcome: applied, unchanged, "
            "invalid (the rules in force were kept).",
            ["outcome"], registry=r,
        )
        self.rules_valid = Gauge(
            "worker_rules_valid", "0 after the rules file was found invalid, until a valid one is applied; else 1.", registry=r
        )
        self.rules_info = Gauge(
            "worker_rules_info", "1 for the version of the rules in force (header worker.rules.version).", ["version"],
            registry=r,
        )
        # The shadow model (WORKER_SHADOW_MODEL): what became of its windows, and how it agrees with the primary.
        self.shadow_active = Gauge("worker_shadow_active", "1 while a shadow model scores the stream.", registry=r)
        self.shadow_disabled = Info(
            "worker_shadow_disabled", "Why the shadow model was switched off (set once it is).", registry=r
        )
        self.shadow_windows = Counter(
            "worker_shadow_windows",
            "Windows offered to the shadow model: scored, dropped_behind (its queue was full) or failed (it raised).",
            ["outcome"], registry=r,
        )
        self.shadow_records = Counter(
            "worker_shadow_records",
            "Shadow results: produced (handed to the producer), refused (by the producer or the broker), "
            "unrenderable (the shadow's result could not be written).",
            ["outcome"], registry=r,
        )
        self.shadow_compared = Counter(
            "worker_shadow_compared", "Records scored by both models and compared (one per shadow result).", registry=r
        )
        self.shadow_flips = Counter(
            "worker_shadow_label_flips",
            "Records whose shadow label differs from the primary's, by pair of labels.", ["primary", "shadow"], registry=r,
        )
        self.shadow_score_diff = Histogram(
            "worker_shadow_diff_score",
            "|primary's score of its label - the shadow's probability of that label|, per record.",
            buckets=SCORE_DIFF_BUCKETS, registry=r,
        )
        self.shadow_category_agreement = Counter(
            "worker_shadow_category_agreement",
            "Per category and record: both models decided the same (flagged or not; single-label: the winner) or not.",
            ["category", "outcome"], registry=r,
        )
        self._lag_partitions: set[Partition] = set()
        self._rules_version: str | None = None

    def describe_model(self, classifier: Any) -> None:
        """The loaded classifier's info, and (when ``auto`` chose it) what was measured to choose it."""
        self.model_info.info(classifier.info)
        report = getattr(classifier, "selection", None)
        if report is None:
            return
        for m in report.measurements:
            engine, precision = m.candidate.engine, m.candidate.precision
            chosen, qualified = str(m.candidate == report.chosen).lower(), str(m.qualifies).lower()
            for window, value in (("small", m.small_per_s), ("full", m.large_per_s)):
                if value:
                    self.engine_speed.labels(engine, precision, window, chosen, qualified).set(value)
            if m.agreement is not None:
                self.engine_agreement.labels(engine, precision).set(m.agreement.same_label)

    def rules_in_force(self, version: str) -> None:
        if self._rules_version is not None and self._rules_version != version:
            self.rules_info.remove(self._rules_version)
        self.rules_info.labels(version).set(1)
        self._rules_version = version

    def set_lag(self, lag: dict[Partition, int]) -> None:
        for gone in self._lag_partitions - lag.keys():
            self.lag.remove(gone[0], str(gone[1]))
        for (topic, partition), value in lag.items():
            self.lag.labels(topic, str(partition)).set(value)
        self._lag_partitions = set(lag)
