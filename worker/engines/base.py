"""What every engine is to the rest of the worker: the :class:`Classifier` protocol and the code around it.

The loop, the evaluation and the command line talk to a :class:`Classifier` (so tests can pass a
fake and nothing outside ``worker.engines`` touches torch); :func:`classify_encoded` sends encoded
texts through one in length-sorted sub-batches whose padded size fits a token budget
(:func:`plan_sub_batches`), so little compute is spent on padding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence

from worker.wire.types import Prediction


@dataclass(frozen=True)
class Encoding:
    """Token ids of one text, with special tokens, already cut to the model's limit."""

    ids: list[int]
    truncated: bool


class Classifier(Protocol):
    labels: list[str]
    info: dict[str, str]
    # True for a multi-label model: predict() gives an independent sigmoid per category, not a softmax.
    multi_label: bool

    def encode(self, texts: Sequence[str]) -> list[Encoding]: ...

    def predict(self, batch: Sequence[Sequence[int]]) -> list[list[float]]:
        """Class probabilities for each id sequence (a sigmoid per category for a multi-label model); the caller
        keeps batches length-homogeneous."""
        ...

    def warm_up(self) -> None:
        """Make the first real batch as fast as the rest (run once before serving)."""
        ...


def is_multi_label(classifier: Classifier) -> bool:
    """Whether ``classifier`` scores categories independently; one that does not say (a test's fake) is single-label."""
    return bool(getattr(classifier, "multi_label", False))


def to_prediction(probabilities: Sequence[float], labels: Sequence[str], encoding: Encoding,
                  multi_label: bool = False) -> Prediction:
    """``label``/``score``: the most probable class (of a multi-label model: the most probable category)."""
    best = max(range(len(probabilities)), key=probabilities.__getitem__)
    return Prediction(
        label=labels[best],
        score=float(probabilities[best]),
        probabilities={label: float(p) for label, p in zip(labels, probabilities)},
        truncated=encoding.truncated,
        tokens=len(encoding.ids),
        multi_label=multi_label,
    )


@dataclass(frozen=True)
class BatchOutcome:
    probabilities: list[list[float]]
    real_tokens: int
    padded_tokens: int
    passes: int


# One forward pass's fixed cost (dispatch, thread wake-ups, the small operators that do not scale with
# the input), in padded tokens' worth of compute: ONNX Runtime int8 on a 2-vCPU AMD EPYC, one text of 24
# tokens took 10.9 ms and four of 32 41.3 ms, about 0.3 ms per token plus ~4 ms per call (docs/speed.md).
CALL_COST_TOKENS = 12


def plan_sub_batches(lengths: Sequence[int], max_padded_tokens: int, max_rows: int | None = None,
                     call_cost_tokens: int = CALL_COST_TOKENS) -> list[list[int]]:
    """Group indices of ``lengths`` into length-sorted sub-batches, each within ``rows * longest <=
    max_padded_tokens`` (a single over-long text still gets its own sub-batch) and ``max_rows``.

    Each sub-batch pads to its longest member. Of all the ways to cut the sorted texts into runs, the
    one chosen costs least: padded tokens plus ``call_cost_tokens`` per forward pass (dynamic
    programming over the cut points). A greedy cut that fills each pass to the budget pads short
    texts up to much longer ones where lengths jump, which at the window sizes of a steady stream
    (tens of texts) wasted 30 % of the compute.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    ordered = [lengths[i] for i in order]
    n = len(ordered)
    best = [0] * (n + 1)  # best[j]: the cheapest plan for the j shortest texts
    start = [0] * (n + 1)  # where the last sub-batch of that plan starts
    for j in range(1, n + 1):
        longest = ordered[j - 1]  # ascending order: the last text is the longest of any run ending here
        rows = max(1, max_padded_tokens // longest)  # an over-long text alone
        if max_rows is not None:
            rows = min(rows, max_rows)
        cut = min(range(max(0, j - rows), j), key=lambda i: best[i] + (j - i) * longest)
        best[j], start[j] = best[cut] + (j - cut) * longest + call_cost_tokens, cut
    plan: list[list[int]] = []
    j = n
    while j > 0:
        plan.append(order[start[j]:j])
        j = start[j]
    plan.reverse()
    return plan


def padding_efficiency(lengths: Sequence[int], plan: Sequence[Sequence[int]]) -> tuple[int, int]:
    """(real tokens, padded tokens) for a plan."""
    real = sum(lengths)
    padded = sum(len(group) * max(lengths[i] for i in group) for group in plan if group)
    return real, padded


def classify_encoded(classifier: Classifier, encodings: Sequence[Encoding], sub_batch_max_tokens: int) -> BatchOutcome:
    """Length-sorted sub-batches through the classifier; results in input order."""
    lengths = [len(e.ids) for e in encodings]
    plan = plan_sub_batches(lengths, sub_batch_max_tokens)
    results: list[list[float]] = [[] for _ in encodings]
    for group in plan:
        for index, probs in zip(group, classifier.predict([encodings[i].ids for i in group])):
            results[index] = probs
    real, padded = padding_efficiency(lengths, plan)
    return BatchOutcome(results, real, padded, len(plan))


def softmax(logits: Any) -> list[list[float]]:
    """Row-wise softmax of a numpy array of logits, in float32 whatever the engine computed in."""
    import numpy as np

    values = np.asarray(logits, dtype=np.float32)
    values = np.exp(values - values.max(axis=-1, keepdims=True))
    return (values / values.sum(axis=-1, keepdims=True)).tolist()


def sigmoid(logits: Any) -> list[list[float]]:
    """Element-wise logistic function of a numpy array of logits, in float32: a multi-label model's probabilities.

    Written from exp(-|x|), which never overflows, so that large logits of either sign keep their
    precision (1 / (1 + exp(-x)) overflows for x below about -88 in float32).
    """
    import numpy as np

    values = np.asarray(logits, dtype=np.float32)
    small = np.exp(-np.abs(values))
    return np.where(values >= 0, 1 / (1 + small), small / (1 + small)).tolist()


def activate(logits: Any, multi_label: bool) -> list[list[float]]:
    """Logits to probabilities: a sigmoid per category for a multi-label model, else a softmax over the classes."""
    return sigmoid(logits) if multi_label else softmax(logits)


def warm_up_shapes(classifier: Classifier) -> None:
    """One row and several rows, short and long, once each: lazy initialisation happens here, not in the first batch.

    With torch.compile's dynamic shapes these are also the specialisations it makes (a size of 1 is its own case).
    """
    for text, rows in (("워밍업", 1), ("워밍업", 8), ("워밍업 " * 40, 1), ("워밍업 " * 40, 8)):
        classify_encoded(classifier, classifier.encode([text] * rows), 4096)
