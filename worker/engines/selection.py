"""``WORKER_ENGINE=auto``: time the candidate engines and precisions, keep the fastest that agrees with the reference.

No CPU flag decides anything here. Every candidate classifies the same calibration texts (shipped
with the package), one candidate at a time after its warm-up. A candidate
qualifies when its labels match the float32 torch reference on at least 99.5 % of the texts (for a
multi-label model: every category's decision at its threshold) and,
for positive/negative models, its accuracy on their NSMC labels is within 0.3 points of the
reference's. Among those that qualify the one with the lowest cost wins, where cost is seconds per
text in windows of one text (everyday load: a window goes to the model as soon as it is free, so at
100 msg/s windows hold 1.0-1.1 texts, and that is where latency is made) plus seconds per text in a
full window (throughput under a backlog): a candidate must be fast at both to win.
"""

from __future__ import annotations

import hashlib
import logging
import math
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from worker.engines.base import Classifier, Encoding, classify_encoded
from worker.engines.device import usable_cpus

log = logging.getLogger(__name__)

MIN_SAME_LABEL = 0.995  # share of texts whose label equals the reference's
MAX_ACCURACY_CHANGE = 0.003  # 0.3 points, either way
SMALL_WINDOW = 1  # texts per window at everyday load
SMALL_WINDOWS = 32  # windows timed per repeat
SMALL_REPEATS = 3  # best of these: noise on shared vCPUs only ever slows a repeat down
LARGE_WINDOW = 250  # texts per full window
GIVE_UP = 1.5  # stop a candidate whose cost is this many times the reference's


@dataclass(frozen=True, order=True)
class Candidate:
    engine: str
    precision: str

    def __str__(self) -> str:
        return f"{self.engine}/{self.precision}"

    @classmethod
    def parse(cls, text: str) -> Candidate:
        engine, precision = text.split("/", 1)
        return cls(engine, precision)


REFERENCE = Candidate("torch", "float32")


@dataclass(frozen=True)
class Agreement:
    texts: int
    same_label: float  # share of texts with the reference's label
    reference_accuracy: float | None  # on the texts' own labels; None for models that are not positive/negative
    accuracy: float | None

    @property
    def accuracy_change(self) -> float | None:
        if self.accuracy is None or self.reference_accuracy is None:
            return None
        return self.accuracy - self.reference_accuracy

    @property
    def passed(self) -> bool:
        change = self.accuracy_change
        # The small epsilon keeps a change of exactly 0.3 points (3 texts in 1,000) inside the limit.
        return self.same_label >= MIN_SAME_LABEL and (change is None or abs(change) <= MAX_ACCURACY_CHANGE + 1e-9)

    def reason(self) -> str:
        if self.passed:
            return "agrees"
        if self.same_label < MIN_SAME_LABEL:
            return f"same label on {self.same_label:.2%} < {MIN_SAME_LABEL:.1%}"
        return f"accuracy {100 * (self.accuracy_change or 0):+.2f} pt (limit ±{100 * MAX_ACCURACY_CHANGE:.1f})"


def argmax(row: Sequence[float]) -> int:
    return max(range(len(row)), key=row.__getitem__)


def decisions(row: Sequence[float], thresholds: Sequence[float]) -> tuple[bool, ...]:
    """A multi-label row's categories, each present (at or above its threshold) or not."""
    return tuple(p >= t for p, t in zip(row, thresholds))


def check_agreement(
    reference: Sequence[Sequence[float]],
    candidate: Sequence[Sequence[float]],
    truths: Sequence[int] | None = None,
    positive_index: int | None = None,
    thresholds: Sequence[float] | None = None,
) -> Agreement:
    """Compare a candidate's probabilities with the reference's on the same texts.

    ``truths`` are NSMC labels (1 = positive); they grade accuracy only for a positive/negative
    model (``positive_index`` set); other models are compared on labels alone. For a multi-label
    model ``thresholds`` holds each category's threshold, and a text counts as the same when every
    category's decision (present or not) is the reference's; the winner alone says little there.
    """
    if len(reference) != len(candidate) or not reference:
        raise ValueError("reference and candidate must cover the same, non-empty list of texts")
    if thresholds is not None:
        same = sum(decisions(r, thresholds) == decisions(c, thresholds)
                   for r, c in zip(reference, candidate)) / len(reference)
        return Agreement(len(reference), same, None, None)
    same = sum(argmax(r) == argmax(c) for r, c in zip(reference, candidate)) / len(reference)
    if truths is None or positive_index is None:
        return Agreement(len(reference), same, None, None)

    def accuracy(rows: Sequence[Sequence[float]]) -> float:
        return sum((argmax(row) == positive_index) == bool(truth) for row, truth in zip(rows, truths)) / len(rows)

    return Agreement(len(reference), same, accuracy(reference), accuracy(candidate))


@dataclass
class Measurement:
    candidate: Candidate
    eligible: bool = True  # False: measured only as the reference, not a choice
    small_per_s: float | None = None  # texts/s in windows of SMALL_WINDOW texts
    large_per_s: float | None = None  # texts/s in windows of LARGE_WINDOW texts
    agreement: Agreement | None = None
    error: str | None = None
    note: str = ""

    @property
    def cost(self) -> float:
        """Seconds per text in small windows plus in full windows: lower is better."""
        if not self.small_per_s or not self.large_per_s:
            return math.inf
        return 1 / self.small_per_s + 1 / self.large_per_s

    @property
    def qualifies(self) -> bool:
        if self.error is not None:
            return False
        return self.candidate == REFERENCE or (self.agreement is not None and self.agreement.passed)

    def status(self) -> str:
        if self.error is not None:
            return f"failed: {self.error}"
        if self.note:
            return self.note
        if self.candidate == REFERENCE:
            return "reference" if self.eligible else "reference (not a candidate)"
        return self.agreement.reason() if self.agreement else "not checked"


def choose(measurements: Sequence[Measurement]) -> Measurement:
    """The eligible candidate of lowest cost among those that agree with the reference.

    When none agrees (only possible if the reference itself was excluded, e.g. WORKER_DTYPE=int8),
    the fastest one that runs is taken, with a warning: the operator asked for that precision.
    """
    runnable = [m for m in measurements if m.eligible and m.error is None and math.isfinite(m.cost)]
    if not runnable:
        raise RuntimeError("no engine candidate could run: " + "; ".join(f"{m.candidate}: {m.status()}" for m in measurements))
    qualified = [m for m in runnable if m.qualifies]
    if qualified:
        return min(qualified, key=lambda m: (m.cost, m.candidate != REFERENCE))
    best = min(runnable, key=lambda m: m.cost)
    log.warning("no candidate agrees with the reference; using the fastest of those requested",
                extra={"fields": {"chosen": str(best.candidate), "status": best.status()}})
    return best


def measure(
    build: Callable[[Candidate], Classifier],
    candidates: Sequence[Candidate],
    encodings: Sequence[Encoding],
    truths: Sequence[int] | None,
    positive_index: int | None,
    sub_batch_max_tokens: int,
    eligible: Callable[[Candidate], bool] = lambda c: True,
    clock: Callable[[], float] = time.perf_counter,
    release: Callable[[], None] = lambda: None,
    thresholds: Sequence[float] | None = None,
) -> list[Measurement]:
    """Build, time and check each candidate in turn, the reference first; only numbers are kept.

    One engine at a time: memory stays at one model (plus the reference's probabilities), and no
    engine's idle threads compete with another's. Small windows: the first
    ``SMALL_WINDOW * SMALL_WINDOWS`` texts in windows of ``SMALL_WINDOW``, best of ``SMALL_REPEATS``.
    Full windows: every text in windows of ``LARGE_WINDOW`` (these probabilities are the agreement
    check too), total texts over total time. A candidate whose cost so far is ``GIVE_UP`` times the
    reference's is stopped: it cannot win while the reference is a choice. ``thresholds`` (per
    category, for a multi-label model) make the agreement check compare per-category decisions.
    """
    order = [REFERENCE] + [c for c in candidates if c != REFERENCE]
    small = list(encodings[: SMALL_WINDOW * SMALL_WINDOWS])
    small_windows = [small[i : i + SMALL_WINDOW] for i in range(0, len(small), SMALL_WINDOW)]
    large_windows = [encodings[i : i + LARGE_WINDOW] for i in range(0, len(encodings), LARGE_WINDOW)]
    reference: list[list[float]] | None = None
    reference_cost = math.inf
    results = []
    for number, candidate in enumerate(order, 1):
        m = Measurement(candidate, eligible(candidate))
        results.append(m)
        classifier = None
        try:
            classifier = build(candidate)
            best = 0.0
            for _ in range(SMALL_REPEATS):
                started = clock()
                for window in small_windows:
                    classify_encoded(classifier, window, sub_batch_max_tokens)
                best = max(best, len(small) / max(clock() - started, 1e-9))
            m.small_per_s = round(best, 1)
            probabilities: list[list[float]] = []
            elapsed = 0.0
            for window in large_windows:
                started = clock()
                probabilities.extend(classify_encoded(classifier, window, sub_batch_max_tokens).probabilities)
                elapsed += clock() - started
                cost_so_far = 1 / best + elapsed / len(probabilities)
                if candidate != REFERENCE and eligible(REFERENCE) and cost_so_far > GIVE_UP * reference_cost:
                    m.note = f"stopped after {len(probabilities)} texts: over {GIVE_UP}x the reference's cost"
                    break
            m.large_per_s = round(len(probabilities) / max(elapsed, 1e-9), 1)
            if candidate == REFERENCE:
                reference, reference_cost = probabilities, m.cost
            elif reference is not None and len(probabilities) == len(reference):
                m.agreement = check_agreement(reference, probabilities, truths, positive_index, thresholds)
        except Exception as exc:  # noqa: BLE001 - one broken candidate must not stop the others
            if candidate == REFERENCE:
                raise
            m.error = f"{type(exc).__name__}: {exc}"
            log.warning("engine candidate failed", extra={"fields": {"candidate": str(candidate), "error": m.error}})
        finally:
            del classifier
            release()
        log.info(f"engine selection {number}/{len(order)}: {candidate}: {m.small_per_s} texts/s in windows of "
                 f"{SMALL_WINDOW}, {m.large_per_s} in full windows; {m.status()}")
    return results


def machine() -> dict[str, Any]:
    """What makes timings from one machine apply to another: CPU model, its flags, the cores we may use."""
    name = flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not name:
                name = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = value.strip()
    except OSError:
        pass
    name = name or platform.processor() or platform.machine()
    return {
        "cpu": name,
        "cpu_flags_sha": hashlib.sha256(" ".join(sorted(flags.split())).encode()).hexdigest()[:12],
        "cpu_flags": flags,
        "cpus": usable_cpus(),
    }


@dataclass
class SelectionReport:
    chosen: Candidate
    measurements: list[Measurement]
    origin: str  # "measured" now, or "cached" from an earlier start on the same machine
    measured_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    measured_unix: float = field(default_factory=time.time)
    seconds: float = 0.0  # time the measurement took (exports and loading included)
    texts: int = 0

    def table(self) -> str:
        lines = [
            f"| candidate | texts/s, windows of {SMALL_WINDOW} | texts/s, full window | same label | accuracy Δ (pt) | status |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for m in sorted(self.measurements, key=lambda m: m.cost):
            a = m.agreement
            change = a.accuracy_change if a else None
            mark = " **chosen**" if m.candidate == self.chosen else ""
            lines.append(
                f"| {m.candidate}{mark} | {m.small_per_s or '–'} | {m.large_per_s or '–'} | "
                f"{f'{a.same_label:.2%}' if a else '–'} | {f'{100 * change:+.2f}' if change is not None else '–'} | {m.status()} |"
            )
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "chosen": str(self.chosen),
            "origin": self.origin,
            "measured_at": self.measured_at,
            "measured_unix": self.measured_unix,
            "seconds": self.seconds,
            "texts": self.texts,
            "measurements": [
                {**asdict(m), "candidate": str(m.candidate), "cost": m.cost if math.isfinite(m.cost) else None,
                 "status": m.status()}
                for m in self.measurements
            ],
        }

    @classmethod
    def from_json(cls, value: dict[str, Any], origin: str = "cached") -> SelectionReport:
        measurements = []
        for row in value["measurements"]:
            agreement = Agreement(**row["agreement"]) if row.get("agreement") else None
            measurements.append(Measurement(
                Candidate.parse(row["candidate"]), row["eligible"], row["small_per_s"], row["large_per_s"],
                agreement, row["error"], row.get("note", ""),
            ))
        return cls(Candidate.parse(value["chosen"]), measurements, origin, value["measured_at"],
                   value.get("measured_unix", 0.0), value.get("seconds", 0.0), value.get("texts", 0))
