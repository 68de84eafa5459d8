"""Accuracy, thresholds and calibration of a binary (NSMC) classifier on an NSMC-format TSV (``worker eval``).

Scoring (the model run) and the numbers drawn from the scores are separate, so the threshold table and the
calibration error are plain functions of (score, truth) pairs that a test can check against its own sums.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from dataclasses import dataclass
from typing import Any, Sequence

from tqdm import tqdm

from worker.engines.base import Classifier, classify_encoded
from worker.evaluation.common import binned_calibration, lowest_threshold_for, percent, share

# Thresholds on the "negative" score reported by default: the coarse steps, then the fine steps where
# moderators usually set an automatic flag.
DEFAULT_THRESHOLDS = (0.50, 0.55, 0.60, 0.65, 0.70, 0.75, 0.80, 0.85, 0.90, 0.95, 0.96, 0.97, 0.98, 0.99)
# Texts whose winning score is below this go to human review (the example rule "any label, score < 0.6").
DEFAULT_REVIEW_BELOW = 0.6
# Top-label calibration: the winning score of a binary model lies in [0.5, 1], cut into 10 bins of 0.05.
CALIBRATION_BINS = 10
CALIBRATION_RANGE = (0.5, 1.0)
TARGET_PRECISIONS = (0.90, 0.95, 0.99)
# The grid searched for the lowest threshold that reaches a target precision (and drawn in the charts).
FINE_THRESHOLDS = tuple(round(0.5 + i / 1000, 3) for i in range(500))

THRESHOLD_DEFINITIONS = {
    "negative_score": "the model's probability of the label 'negative'",
    "flagged": "negative_score >= threshold (for thresholds >= 0.5: label negative and score >= threshold)",
    "precision": "share of the flagged texts whose true label is negative (null when nothing is flagged)",
    "recall": "share of the truly negative texts that are flagged",
    "flagged_share": "flagged texts / all texts",
    "review_share": "texts in the review band (winning score, either label, below review_below) that are not "
    "flagged at this threshold / all texts",
}


@dataclass(frozen=True)
class Scored:
    """Per-text outcome of a model run over labelled rows; NSMC convention: truth 0 negative, 1 positive."""

    truths: list[int]
    negative_scores: list[float]
    winning_scores: list[float]
    predicted: list[int]
    seconds: float
    real_tokens: int
    padded_tokens: int


def score_rows(
    classifier: Classifier, rows: Sequence[tuple[str, int]], window: int = 1024, sub_batch_max_tokens: int = 2048
) -> Scored:
    """Classify every row in length-sorted windows, with a progress bar; binary models only."""
    labels = classifier.labels
    if len(labels) != 2:
        raise ValueError(f"worker eval needs a binary model; this one has labels {labels}")
    positive = labels.index("positive") if "positive" in labels else 1
    negative = 1 - positive
    truths: list[int] = []
    negative_scores: list[float] = []
    winning_scores: list[float] = []
    predicted: list[int] = []
    real = padded = 0
    started = time.perf_counter()
    with tqdm(total=len(rows), unit="text", desc="eval") as progress:
        for start in range(0, len(rows), window):
            chunk = rows[start : start + window]
            encodings = classifier.encode([text for text, _ in chunk])
            outcome = classify_encoded(classifier, encodings, sub_batch_max_tokens)
            real += outcome.real_tokens
            padded += outcome.padded_tokens
            for (_, truth), probs in zip(chunk, outcome.probabilities):
                truths.append(truth)
                negative_scores.append(float(probs[negative]))
                winning_scores.append(float(max(probs)))
                predicted.append(1 if probs[positive] >= 0.5 else 0)
            progress.update(len(chunk))
    return Scored(truths, negative_scores, winning_scores, predicted, time.perf_counter() - started, real, padded)


def threshold_table(
    negative_scores: Sequence[float],
    truths: Sequence[int],
    winning_scores: Sequence[float],
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    review_below: float = DEFAULT_REVIEW_BELOW,
) -> list[dict[str, Any]]:
    """One row per threshold on the negative score; the columns are defined in ``THRESHOLD_DEFINITIONS``."""
    total = len(negative_scores)
    all_sorted = sorted(negative_scores)
    negatives_sorted = sorted(s for s, truth in zip(negative_scores, truths) if truth == 0)
    review_sorted = sorted(s for s, win in zip(negative_scores, winning_scores) if win < review_below)
    rows = []
    for threshold in thresholds:
        flagged = total - bisect_left(all_sorted, threshold)
        caught = len(negatives_sorted) - bisect_left(negatives_sorted, threshold)
        review = bisect_left(review_sorted, threshold)  # in the band and below the threshold
        rows.append(
            {
                "threshold": threshold,
                "precision": share(caught, flagged),
                "recall": share(caught, len(negatives_sorted)),
                "flagged_share": share(flagged, total),
                "review_share": share(review, total),
                "flagged": flagged,
                "negatives_flagged": caught,
                "review": review,
            }
        )
    return rows


def calibration(
    winning_scores: Sequence[float],
    correct: Sequence[bool],
    bins: int = CALIBRATION_BINS,
    score_range: tuple[float, float] = CALIBRATION_RANGE,
) -> dict[str, Any]:
    """Expected calibration error of the winning score (:func:`worker.evaluation.common.binned_calibration`):
    each bin's observed share is the accuracy of the texts in it."""
    return binned_calibration(winning_scores, correct, bins, score_range, "the winning score", "accuracy")


def summarize(
    scored: Scored,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    review_below: float = DEFAULT_REVIEW_BELOW,
) -> dict[str, Any]:
    """The eval report: accuracy and F1 (positive class), the negative-class threshold table, calibration."""
    confusion = [[0, 0], [0, 0]]  # [true][predicted]
    for truth, guess in zip(scored.truths, scored.predicted):
        confusion[truth][guess] += 1
    total = len(scored.truths)
    tp, fp, fn = confusion[1][1], confusion[0][1], confusion[1][0]
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    correct = [truth == guess for truth, guess in zip(scored.truths, scored.predicted)]
    fine = threshold_table(scored.negative_scores, scored.truths, scored.winning_scores, FINE_THRESHOLDS, review_below)
    in_band = [right for right, win in zip(correct, scored.winning_scores) if win < review_below]
    elapsed = scored.seconds
    return {
        "texts": total,
        "accuracy": (confusion[0][0] + tp) / total if total else 0.0,
        "f1_positive": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "precision_positive": precision,
        "recall_positive": recall,
        "confusion_matrix": {"rows": "true label 0, 1", "columns": "predicted 0, 1", "values": confusion},
        "negative_thresholds": {
            "definitions": THRESHOLD_DEFINITIONS,
            "review_below": review_below,
            "rows": threshold_table(
                scored.negative_scores, scored.truths, scored.winning_scores, thresholds, review_below
            ),
            "lowest_threshold_for_precision": {
                f"{target:.2f}": lowest_threshold_for(fine, target) for target in TARGET_PRECISIONS
            },
        },
        "review_band": {
            "review_below": review_below,
            "share": share(len(in_band), total),
            "accuracy": share(sum(in_band), len(in_band)),
        },
        "calibration": calibration(scored.winning_scores, correct),
        "seconds": round(elapsed, 3),
        "texts_per_second": round(total / elapsed, 1) if elapsed else None,
        "padding_efficiency": round(scored.real_tokens / scored.padded_tokens, 4) if scored.padded_tokens else None,
    }


def evaluate(
    classifier: Classifier,
    rows: Sequence[tuple[str, int]],
    window: int = 1024,
    sub_batch_max_tokens: int = 2048,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    review_below: float = DEFAULT_REVIEW_BELOW,
) -> dict[str, Any]:
    return summarize(score_rows(classifier, rows, window, sub_batch_max_tokens), thresholds, review_below)


def format_report(report: dict[str, Any]) -> str:
    """The report as a few readable lines and the threshold table (the JSON holds every number)."""
    matrix = report["confusion_matrix"]["values"]
    thresholds = report["negative_thresholds"]
    review_below = thresholds["review_below"]
    calibration = report["calibration"]
    band = report["review_band"]
    lines = [
        f"texts {report['texts']:,}   accuracy {report['accuracy']:.4f}   F1 (positive) {report['f1_positive']:.4f}   "
        f"{report['texts_per_second']} texts/s",
        f"confusion (rows true 0/1, columns predicted 0/1): {matrix[0]} {matrix[1]}",
        "ECE {:.4f} ({})".format(calibration["ece"] or 0.0, calibration["binning"]),
        f"review band (winning score < {review_below:g}, either label): {percent(band['share'])} of texts, "
        f"model accuracy there {percent(band['accuracy'])}",
        "",
        "Flagging negatives: flagged = P(negative) >= threshold; review = in the review band and not flagged",
        "threshold | precision | recall | flagged | review",
        "--------- | --------- | ------ | ------- | ------",
    ]
    for row in thresholds["rows"]:
        lines.append(
            f"{row['threshold']:>9.2f} | {percent(row['precision']):>9} | {percent(row['recall']):>6} | "
            f"{percent(row['flagged_share']):>7} | {percent(row['review_share']):>6}"
        )
    lines.append("")
    for target, row in thresholds["lowest_threshold_for_precision"].items():
        if row is None:
            lines.append(f"precision {percent(float(target))}: no threshold up to 0.999 reaches it")
        else:
            lines.append(
                f"precision {percent(float(target))}: lowest threshold {row['threshold']:.3f} flags "
                f"{percent(row['flagged_share'])} of texts ({row['flagged']:,}) and catches "
                f"{percent(row['recall'])} of negatives (precision {percent(row['precision'])})"
            )
    return "\n".join(lines)
