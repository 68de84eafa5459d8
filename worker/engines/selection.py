"""``WORKER_ENGINE=auto``: time the candidate engines and precisions, keep the fastest that agrees with the reference.

No CPU flag decides anything here. Every candidate classifies the same calibration texts (shipped
with the package), interleaved round by round so that a burst of load on a shared machine hits them
all alike; round 0 only warms up, and each candidate's speed is its best later round. A candidate
qualifies when its labels match the float32 torch reference on at least 99.5 % of the texts and,
for positive/negative models, its accuracy on their NSMC labels is within 0.3 points of the
reference's. Among those that qualify the one with the lowest cost wins, where cost is seconds per
text in small windows (8 texts: everyday load, where latency is made) plus seconds per text in a
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
from typing import Any, Callable, Mapping, Sequence

from worker.model import Classifier, Encoding, classify_encoded, usable_cpus

log = logging.getLogger(__name__)

MIN_SAME_LABEL = 0.995  # share of texts whose label equals the reference's
MAX_ACCURACY_CHANGE = 0.003  # 0.3 points, either way
SMALL_WINDOW = 8
SMALL_WINDOWS_PER_ROUND = 8
ROUNDS = 4


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


def check_agreement(
    reference: Sequence[Sequence[float]],
    candidate: Sequence[Sequence[float]],
    truths: Sequence[int] | None = None,
    positive_index: int | None = None,
) -> Agreement:
    """Compare a candidate's probabilities with the reference's on the same texts.

    ``truths`` are NSMC labels (1 = positive); they grade accuracy only for a positive/negative
    model (``positive_index`` set); other models are compared on labels alone.
    """
    if len(reference) != len(candidate) or not reference:
        raise ValueError("reference and candidate must cover the same, non-empty list of texts")
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
    large_per_s: float | None = None  # texts/s in one full window per round
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
    classifiers: Mapping[Candidate, Classifier],
    encodings: Sequence[Encoding],
    truths: Sequence[int] | None,
    positive_index: int | None,
    sub_batch_max_tokens: int,
    eligible: Callable[[Candidate], bool] = lambda c: True,
    rounds: int = ROUNDS,
    clock: Callable[[], float] = time.perf_counter,
    progress: Callable[[str], None] = lambda message: None,
) -> list[Measurement]:
    """Time every classifier on the same encoded texts, interleaved by round; check each against :data:`REFERENCE`.

    ``classifiers`` must include the reference. Each round's slice is classified as
    ``SMALL_WINDOWS_PER_ROUND`` windows of ``SMALL_WINDOW`` texts, then the rest as one window.
    """
    if REFERENCE not in classifiers:
        raise ValueError("the float32 torch reference must be measured too")
    if rounds < 2:
        raise ValueError("at least two rounds: the first one only warms up")
    order = sorted(classifiers)
    per_round = len(encodings) // rounds
    small = SMALL_WINDOW * SMALL_WINDOWS_PER_ROUND
    if per_round <= small:
        raise ValueError(f"need more than {small * rounds} calibration texts for {rounds} rounds")
    probabilities: dict[Candidate, list[list[float]]] = {c: [] for c in order}
    best: dict[Candidate, list[float]] = {c: [0.0, 0.0] for c in order}
    errors: dict[Candidate, str] = {}
    for round_no in range(rounds):
        progress(f"round {round_no + 1}/{rounds}{' (warm-up)' if round_no == 0 else ''}")
        chunk = encodings[round_no * per_round : (round_no + 1) * per_round]
        windows = [chunk[i : i + SMALL_WINDOW] for i in range(0, small, SMALL_WINDOW)], [chunk[small:]]
        rotated = order[round_no % len(order):] + order[: round_no % len(order)]
        for candidate in rotated:
            if candidate in errors:
                continue
            try:
                for kind, group in enumerate(windows):
                    started = clock()
                    for window in group:
                        probabilities[candidate].extend(
                            classify_encoded(classifiers[candidate], window, sub_batch_max_tokens).probabilities
                        )
                    elapsed = clock() - started
                    if round_no > 0 and elapsed > 0:
                        texts = sum(len(w) for w in group)
                        best[candidate][kind] = max(best[candidate][kind], texts / elapsed)
            except Exception as exc:  # noqa: BLE001 - one broken candidate must not stop the others
                errors[candidate] = f"{type(exc).__name__}: {exc}"
                log.warning("engine candidate failed while measuring", extra={"fields": {"candidate": str(candidate), "error": errors[candidate]}})
    measured_texts = per_round * rounds
    reference = probabilities[REFERENCE]
    truths = list(truths[:measured_texts]) if truths is not None else None
    results = []
    for candidate in order:
        m = Measurement(candidate, eligible(candidate))
        if candidate in errors:
            m.error = errors[candidate]
        else:
            m.small_per_s, m.large_per_s = (round(v, 1) for v in best[candidate])
            if REFERENCE not in errors:
                m.agreement = check_agreement(reference, probabilities[candidate], truths, positive_index)
        results.append(m)
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
                   value.get("seconds", 0.0), value.get("texts", 0))
