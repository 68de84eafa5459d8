"""The shadow model: a second model scores every window the primary classified, on its own thread, best effort.

Its results go to ``WORKER_SHADOW_TOPIC`` only (never to routes, never in place of the primary's),
and what it says is compared with the primary, record by record, into the agreement metrics. It
must never slow or stop the primary stream, so:

- it runs on its own thread behind a queue of ``max_behind`` windows (``WORKER_SHADOW_MAX_BEHIND_WINDOWS``);
  a window that finds the queue full is dropped for the shadow (``dropped_behind``), the primary never waits;
- a window the shadow raises on is dropped (``failed``); after ``max_failures`` failed windows in a
  row, or one window that takes longer than ``window_timeout_s``, the shadow is switched off with a
  reason (one log line, ``worker_shadow_active`` 0, ``worker_shadow_disabled_info``);
- its results are not part of the offset accounting (:meth:`Publisher.publish_shadow`).

The shadow encodes the texts with its own tokenizer: the two models may not share one.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from worker.engines.base import Classifier, classify_encoded, to_prediction
from worker.metrics import WorkerMetrics
from worker.pipeline.render import SHADOW, Message, render_record
from worker.wire.rules import Rules
from worker.wire.sizes import header_size
from worker.wire.types import Comment, Prediction

log = logging.getLogger(__name__)

# Names the primary's model on a shadow result (the value itself names the shadow's).
SHADOW_OF_HEADER = "worker.shadow.of"
SCORED, DROPPED_BEHIND, FAILED = "scored", "dropped_behind", "failed"


@dataclass
class ShadowItem:
    """One record the primary classified, and what the shadow said about it."""

    comment: Comment
    primary: Prediction
    shadow: Prediction | None = None


@dataclass
class ShadowJob:
    items: list[ShadowItem]
    started_at: float = 0.0
    error: str | None = None  # why the shadow failed this window


@dataclass(frozen=True)
class Comparison:
    """How the shadow's prediction of one record compares with the primary's."""

    primary_label: str
    shadow_label: str
    score_diff: float  # |primary's score of its label - shadow's probability of that label|
    categories: dict[str, bool] = field(default_factory=dict)  # category -> both decided the same

    @property
    def flipped(self) -> bool:
        return self.primary_label != self.shadow_label


def decided(prediction: Prediction, rules: Rules) -> set[str]:
    """The categories a prediction decides for: multi-label, those at or above their threshold; single-label, the winner."""
    if prediction.multi_label:
        return set(rules.flagged(prediction.probabilities))
    return {prediction.label}


def compare(primary: Prediction, shadow: Prediction, rules: Rules) -> Comparison:
    """Label flip, score difference and per-category agreement (every category either model knows)."""
    mine, theirs = decided(primary, rules), decided(shadow, rules)
    categories = dict.fromkeys([*primary.probabilities, *shadow.probabilities])
    return Comparison(
        primary.label, shadow.label, abs(primary.score - shadow.probabilities.get(primary.label, 0.0)),
        {c: (c in mine) == (c in theirs) for c in categories},
    )


class Shadow:
    """The shadow model's thread and what the main thread does with its results.

    Main thread: :meth:`offer` after the primary's window is rendered, :meth:`collect` each turn of
    the loop (results to produce, agreement counted). The thread only encodes and classifies.
    """

    def __init__(
        self,
        classifier: Classifier,
        topic: str,
        primary_model: str,
        rules: Callable[[], Rules],
        max_bytes: Callable[[], int],
        metrics: WorkerMetrics,
        sub_batch_max_tokens: int,
        max_failures: int = 3,
        window_timeout_s: float = 60.0,
        max_behind: int = 2,
        fields: Sequence[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._classifier = classifier
        self.topic = topic
        self._primary_model = primary_model
        self._rules = rules
        self._max_bytes = max_bytes
        self._metrics = metrics
        self._sub_batch_max_tokens = sub_batch_max_tokens
        self._max_failures = max_failures
        self._window_timeout_s = window_timeout_s
        self._fields = fields
        self._clock = clock
        self.model_ref = {"id": classifier.info.get("model", "?"), "revision": classifier.info.get("revision", "?")}
        self._todo: queue.Queue[ShadowJob | None] = queue.Queue(maxsize=max_behind)
        self._done: queue.Queue[ShadowJob] = queue.Queue()
        self._current: ShadowJob | None = None  # the window on the thread (read by the main thread)
        self._failures = 0  # windows failed in a row (main thread)
        self._thread: threading.Thread | None = None
        self.active = False
        self.reason: str | None = None  # why it was switched off
        metrics.shadow_active.set(0)

    def start(self) -> None:
        self.active = True
        self._metrics.shadow_active.set(1)
        self._thread = threading.Thread(target=self._run, name="shadow", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.active = False
        try:
            self._todo.put_nowait(None)
        except queue.Full:
            pass  # busy or stuck: the thread is a daemon and holds nothing the worker needs

    # --- main thread ---
    def offer(self, items: list[ShadowItem]) -> None:
        """Hand the shadow a window the primary classified; dropped for the shadow when it is behind."""
        if not self.active or not items:
            return
        self._check_stuck()
        if not self.active:
            return
        try:
            self._todo.put_nowait(ShadowJob(items))
        except queue.Full:
            self._metrics.shadow_windows.labels(outcome=DROPPED_BEHIND).inc()

    def collect(self, now_ms: float) -> list[Message]:
        """The shadow results finished since the last call, agreement counted; switches off a failing shadow."""
        messages: list[Message] = []
        while True:
            try:
                job = self._done.get_nowait()
            except queue.Empty:
                break
            if job.error is not None:
                self._failed(job.error)
                continue
            self._failures = 0
            self._metrics.shadow_windows.labels(outcome=SCORED).inc()
            messages.extend(self._render(job, now_ms))
        if self.active:
            self._check_stuck()
        return messages

    def _failed(self, error: str) -> None:
        self._metrics.shadow_windows.labels(outcome=FAILED).inc()
        self._failures += 1
        if self._failures >= self._max_failures and self.active:
            self._switch_off(f"{self._failures} windows in a row failed; last: {error}")

    def _check_stuck(self) -> None:
        job = self._current
        if job is not None and job.started_at and self._clock() - job.started_at > self._window_timeout_s:
            self._switch_off(f"one window took more than {self._window_timeout_s:g} s")

    def _switch_off(self, reason: str) -> None:
        self.reason = reason[:500]
        self.stop()
        self._metrics.shadow_active.set(0)
        self._metrics.shadow_disabled.info({"reason": self.reason})
        log.error("shadow model switched off: %s; the primary goes on", self.reason)

    def _render(self, job: ShadowJob, now_ms: float) -> list[Message]:
        m = self._metrics
        rules = self._rules()
        reserve = header_size(SHADOW_OF_HEADER, self._primary_model.encode())
        limit = self._max_bytes()
        messages = []
        for item in job.items:
            if item.shadow is None:
                continue
            kwargs = {} if self._fields is None else {"fields": self._fields}
            out = render_record(item.comment, item.shadow, model=self.model_ref, now_ms=now_ms, max_bytes=limit,
                                reserve_bytes=reserve, **kwargs)
            if out.reason is not None:  # the shadow's own result cannot be written: it is only left out
                m.shadow_records.labels(outcome="unrenderable").inc()
                continue
            comparison = compare(item.primary, item.shadow, rules)
            if comparison.flipped:
                m.shadow_flips.labels(primary=comparison.primary_label, shadow=comparison.shadow_label).inc()
            m.shadow_score_diff.observe(comparison.score_diff)
            for category, agree in comparison.categories.items():
                m.shadow_category_agreement.labels(category=category, outcome="agree" if agree else "disagree").inc()
            m.shadow_compared.inc()
            headers = [*out.headers, (SHADOW_OF_HEADER, self._primary_model.encode())]
            messages.append(Message(self.topic, out.key, out.value, headers, SHADOW, label=item.shadow.label))
        return messages

    # --- the shadow's thread ---
    def _run(self) -> None:
        while (job := self._todo.get()) is not None:
            if not self.active:
                continue  # switched off while this window waited: not worth scoring any more
            job.started_at = self._clock()
            self._current = job
            try:
                self._score(job)
            except Exception as exc:  # noqa: BLE001 - a failing shadow costs the primary nothing
                job.error = f"{type(exc).__name__}: {exc}"[:1000]
            self._current = None
            self._done.put(job)

    def _score(self, job: ShadowJob) -> None:
        classifier = self._classifier
        encodings = classifier.encode([item.comment.text for item in job.items])
        if len(encodings) != len(job.items):
            raise ValueError(f"{len(encodings)} encodings for {len(job.items)} texts")
        outcome = classify_encoded(classifier, encodings, self._sub_batch_max_tokens)
        for item, probabilities, encoding in zip(job.items, outcome.probabilities, encodings):
            item.shadow = to_prediction(probabilities, classifier.labels, encoding)
