"""Inference: the model's own thread, which runs the model over closed windows, one at a time, in order.

The main thread hands it windows (each becomes a :class:`WindowJob`) and takes back the finished
jobs, their entries carrying predictions; nothing else crosses between the threads. A batch that
makes the model raise is split in halves until the failing texts are isolated (those become dead
letters). A row that is not a probability (NaN, infinity, outside [0, 1], the wrong number of
classes) is a failure of the same kind as an exception: the model returned nothing usable for that
text. Before blaming a text, the thread checks that the model still answers for a known-good one
(the canary): if the canary fails too (raises or returns no probability), the model itself is broken,
and the thread stops with :class:`ModelBroken` instead of dead-lettering the stream.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from worker.engines.base import BatchOutcome, Classifier, Encoding, classify_encoded, is_multi_label, to_prediction
from worker.errors import WorkerError
from worker.pipeline.batch import Window
from worker.pipeline.intake import Entry
from worker.tracing import NoTracing, Tracing
from worker.wire.types import INFERENCE_ERROR, Rejection

# A text every sentiment model classifies: when the model raises for some texts, it is tried
# once more on this one, to tell a broken model from texts the model cannot take.
CANARY_TEXT = "이 영화 정말 재밌다!"


class ModelBroken(WorkerError):
    """The model fails even for a text it classified before: nothing can be classified any more."""


@dataclass
class WindowJob:
    """One closed window on the model's thread: when it was dispatched, started and finished, and its cost."""

    window: Window[Entry]
    dispatched_at: float
    started_at: float = 0.0
    finished_at: float = 0.0
    real_tokens: int = 0
    padded_tokens: int = 0
    failures: dict[int, str] = field(default_factory=dict)
    trace: Any = None  # the window's span when tracing is on; the inference span is its child

    @property
    def inference_s(self) -> float:
        return self.finished_at - self.started_at


def not_a_probability(row: Sequence[float], classes: int) -> str | None:
    """Why a model's output row is not a probability per class, or None when it is one."""
    if len(row) != classes:
        return f"the model returned {len(row)} values for {classes} classes"
    if not all(math.isfinite(p) and 0.0 <= p <= 1.0 for p in row):
        return f"the model returned non-probabilities {[float(p) for p in row]}"[:1000]
    return None


def classify_isolating(
    classifier: Classifier, encodings: Sequence[Encoding], sub_batch_max_tokens: int
) -> tuple[list[list[float] | None], dict[int, str], BatchOutcome | None]:
    """Classify; if the model raises, split in halves until the failing texts are isolated.

    Rows that are not probabilities are classified again on their own (a batch-level fault then
    heals; a text that still gives NaN on its own is a failure of that text, as a raise is).
    """
    classes = len(classifier.labels)
    try:
        outcome = classify_encoded(classifier, encodings, sub_batch_max_tokens)
    except Exception as exc:  # noqa: BLE001 - any model failure must not stop the stream
        if len(encodings) == 1:
            return [None], {0: f"{type(exc).__name__}: {exc}"[:1000]}, None
    else:
        bad = [i for i, row in enumerate(outcome.probabilities) if not_a_probability(row, classes)]
        if not bad:
            return list(outcome.probabilities), {}, outcome
        if len(encodings) == 1:
            return [None], {0: not_a_probability(outcome.probabilities[0], classes) or ""}, outcome
        probabilities: list[list[float] | None] = list(outcome.probabilities)
        failures: dict[int, str] = {}
        for index in bad:
            (again,), failed, _ = classify_isolating(classifier, [encodings[index]], sub_batch_max_tokens)
            probabilities[index] = again
            if failed:
                failures[index] = failed[0]
        return probabilities, failures, outcome
    middle = len(encodings) // 2
    left, left_failed, _ = classify_isolating(classifier, encodings[:middle], sub_batch_max_tokens)
    right, right_failed, _ = classify_isolating(classifier, encodings[middle:], sub_batch_max_tokens)
    failures = {**left_failed, **{i + middle: reason for i, reason in right_failed.items()}}
    return left + right, failures, None


class InferenceThread:
    """Runs the model on its own thread. Windows go in with :meth:`submit`, come out of :meth:`take`."""

    def __init__(
        self,
        classifier: Classifier,
        sub_batch_max_tokens: int,
        canary: Encoding,
        clock: Callable[[], float] = time.monotonic,
        tracing: Tracing | None = None,
    ) -> None:
        self._classifier = classifier
        self._tracing = tracing or NoTracing()
        self._sub_batch_max_tokens = sub_batch_max_tokens
        self._canary = canary
        self._clock = clock
        self._todo: queue.Queue[WindowJob | None] = queue.Queue()
        self._done: queue.Queue[WindowJob] = queue.Queue()
        self._thread: threading.Thread | None = None
        self.in_flight = 0  # windows submitted and not yet taken back (main thread only)
        self.error: BaseException | None = None
        # Written by the model's thread, read by the main one (single attribute reads and writes:
        # atomic under the GIL). The window on the model now, and its padded-token count.
        self._running: tuple[float, int] | None = None
        self.seconds_per_token: float | None = None  # measured on finished windows (a moving average)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="inference", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._todo.put(None)

    @property
    def busy(self) -> bool:
        return self.in_flight > 0

    def submit(self, window: Window[Entry], trace: Any = None) -> None:
        """Queue a closed window; ``trace`` is its span (tracing on), the parent of the inference span."""
        self.in_flight += 1
        self._todo.put(WindowJob(window, dispatched_at=self._clock(), trace=trace))

    def take(self, block_s: float = 0.0) -> list[WindowJob]:
        """Finished windows, oldest first; waits up to ``block_s`` for the first one."""
        finished: list[WindowJob] = []
        try:
            finished.append(self._done.get(timeout=block_s) if block_s > 0 else self._done.get_nowait())
            while True:
                finished.append(self._done.get_nowait())
        except queue.Empty:
            pass
        self.in_flight -= len(finished)
        return finished

    def _run(self) -> None:
        try:
            while (job := self._todo.get()) is not None:
                self._classify(job)
                self._done.put(job)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which stops the worker
            self.error = exc

    def overdue(self, now: float, at_least_s: float, factor: float) -> str | None:
        """Why the window now on the model counts as stuck, or None.

        A call into the model cannot be interrupted, and the main loop keeps beating while it waits,
        so without this check a hung model would look healthy forever. The limit scales with the
        window: ``factor`` times its tokens at the measured speed, never below ``at_least_s``.
        """
        running = self._running
        if running is None:
            return None
        started, tokens = running
        expected = tokens * self.seconds_per_token if self.seconds_per_token is not None else 0.0
        limit = max(at_least_s, factor * expected)
        elapsed = now - started
        if elapsed <= limit:
            return None
        return (f"a window of {tokens} tokens has been on the model for {elapsed:.0f} s "
                f"(limit {limit:.0f} s; expected {expected:.2f} s at the measured speed)")

    def _classify(self, job: WindowJob) -> None:
        job.started_at = self._clock()
        entries = [e for e in job.window.items if e.encoding is not None]
        if not entries:
            job.finished_at = job.started_at
            return
        encodings = [e.encoding for e in entries]
        tokens = sum(len(e.ids) for e in encodings)  # type: ignore[union-attr]
        self._running = (job.started_at, tokens)
        # The window's span is handed over explicitly: the main thread's context does not cross threads.
        with self._tracing.inference(job.trace, self._classifier.info, len(entries)):
            try:
                probabilities, failures, outcome = classify_isolating(
                    self._classifier, encodings, self._sub_batch_max_tokens  # type: ignore[arg-type]
                )
                if failures:
                    self._check_canary(failures)
            finally:
                self._running = None
        job.finished_at = self._clock()
        if outcome is not None and outcome.padded_tokens:
            measured = job.inference_s / outcome.padded_tokens
            previous = self.seconds_per_token
            self.seconds_per_token = measured if previous is None else 0.8 * previous + 0.2 * measured
        labels = self._classifier.labels
        multi_label = is_multi_label(self._classifier)
        for entry, probs in zip(entries, probabilities):
            if probs is not None and entry.encoding is not None:
                entry.prediction = to_prediction(probs, labels, entry.encoding, multi_label)
        for index, reason in failures.items():
            entries[index].item = Rejection(entries[index].record, INFERENCE_ERROR, reason)
        job.failures = failures
        if outcome is not None:
            job.real_tokens, job.padded_tokens = outcome.real_tokens, outcome.padded_tokens
        else:
            job.real_tokens = sum(len(e.encoding.ids) for e in entries if e.encoding is not None)
            job.padded_tokens = job.real_tokens

    def _check_canary(self, failures: dict[int, str]) -> None:
        first = next(iter(failures.values()))
        try:
            (row,) = self._classifier.predict([self._canary.ids])
        except Exception as exc:  # noqa: BLE001 - the model fails for everything: that is not the texts' fault
            raise ModelBroken(
                f"the model fails for every input, even a text it classified at start-up ({type(exc).__name__}: "
                f"{exc}); first failure: {first}"[:1000]
            ) from exc
        why = not_a_probability(row, len(self._classifier.labels))
        if why is not None:
            raise ModelBroken(
                f"the model returns no probabilities, even for a text it classified at start-up ({why}); "
                f"first failure: {first}"[:1000]
            )
