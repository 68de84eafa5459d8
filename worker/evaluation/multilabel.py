"""Per-category precision, recall, share flagged, thresholds and calibration of a multi-label classifier
(``worker eval`` on multi-label data: a set of categories per text).

A multi-label model gives every category its own probability (a sigmoid each, not summing to 1); a text is
flagged for a category when that category's probability is at or above its threshold. Each category is
therefore its own binary problem ("is this text an insult?"), and everything here is computed per category
from (probability, truth) pairs. As in the binary evaluation, the model run and the numbers are separate,
so a test checks the numbers against its own sums.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from tqdm import tqdm

from worker.datasets import DatasetError, LabelledText
from worker.engines.base import Classifier, classify_encoded
from worker.errors import WorkerError
from worker.wire.rules import DEFAULT_THRESHOLD
from worker.evaluation.common import binned_calibration, lowest_threshold_for, percent, share

# The table printed per category: 0.05 steps. The threshold reaching the target precision is searched on a
# 0.001 grid (and the charts are drawn on it).
DEFAULT_GRID = tuple(round(i * 0.05, 2) for i in range(1, 20))
FINE_GRID = tuple(round(i / 1000, 3) for i in range(1, 1000))
DEFAULT_TARGET_PRECISION = 0.9
# A category's probability lies anywhere in [0, 1] (no winner, so no floor of 0.5 as for a binary model).
CALIBRATION_BINS = 10
CALIBRATION_RANGE = (0.0, 1.0)

DEFINITIONS = {
    "flagged": "a text is flagged for a category when P(category) >= threshold",
    "support": "texts that truly belong to the category",
    "precision": "share of the texts flagged for the category that truly belong to it (null when none is flagged)",
    "recall": "share of the texts of the category that are flagged (null when the category has no text)",
    "f1": "2 TP / (2 TP + FP + FN) (null when nothing is flagged and the category has no text)",
    "flagged_share": "texts flagged for the category / all texts",
    "threshold": "the configured threshold of the category (WORKER_LABEL_THRESHOLDS or --label-thresholds, "
    "else 0.5)",
    "lowest_threshold_for_precision": "the lowest threshold on a 0.001 grid whose precision reaches the target "
    "(null: not reached)",
    "calibration": "ECE of P(category): 10 equal-width bins over [0, 1]; sum of (bin's share of texts) x "
    "|share of the bin's texts truly in the category - mean P(category) in the bin|",
    "micro": "TP, FP and FN summed over the categories, each at its configured threshold",
    "macro": "unweighted mean over the categories that have at least one text (a precision with nothing "
    "flagged counts as 0); ece: mean over all categories",
    "exact_match": "share of texts whose flagged categories are exactly their true categories",
    "any_flagged_share": "share of texts flagged for at least one category",
}


@dataclass(frozen=True)
class MultiLabelScored:
    """Per-text outcome of a model run over multi-label rows: the true categories and every category's
    probability, in the order of ``categories`` (the model's labels)."""

    categories: list[str]
    truths: list[frozenset[str]]
    probabilities: list[list[float]]
    seconds: float
    real_tokens: int
    padded_tokens: int

    def scores(self, category: str) -> list[float]:
        index = self.categories.index(category)
        return [row[index] for row in self.probabilities]

    def truth(self, category: str) -> list[bool]:
        return [category in truth for truth in self.truths]


def check_categories(rows: Sequence[LabelledText], categories: Sequence[str], path: Path) -> None:
    """Every category named in the data must be one of the model's; the first that is not stops the run."""
    known = set(categories)
    for row in rows:
        unknown = sorted(row.categories - known)
        if unknown:
            raise DatasetError(
                f"{path}:{row.line}: unknown category {unknown[0]!r}; the model's categories are "
                f"{', '.join(categories)}"
            )


def score_multi_label(
    classifier: Classifier, rows: Sequence[LabelledText], window: int = 1024, sub_batch_max_tokens: int = 2048
) -> MultiLabelScored:
    """Classify every row in length-sorted windows, with a progress bar; one probability per category."""
    categories = list(classifier.labels)
    probabilities: list[list[float]] = []
    real = padded = 0
    started = time.perf_counter()
    with tqdm(total=len(rows), unit="text", desc="eval") as progress:
        for start in range(0, len(rows), window):
            chunk = rows[start : start + window]
            outcome = classify_encoded(classifier, classifier.encode([row.text for row in chunk]), sub_batch_max_tokens)
            real += outcome.real_tokens
            padded += outcome.padded_tokens
            for probs in outcome.probabilities:
                if len(probs) != len(categories):
                    raise WorkerError(
                        f"the model gave {len(probs)} probabilities for its {len(categories)} categories "
                        f"({', '.join(categories)})"
                    )
                probabilities.append([float(p) for p in probs])
            progress.update(len(chunk))
    return MultiLabelScored(
        categories, [row.categories for row in rows], probabilities, time.perf_counter() - started, real, padded
    )


def _row(threshold: float, true_positives: int, flagged: int, support: int, total: int) -> dict[str, Any]:
    return {
        "threshold": threshold,
        "precision": share(true_positives, flagged),
        "recall": share(true_positives, support),
        "f1": share(2 * true_positives, flagged + support),
        "flagged_share": share(flagged, total),
        "flagged": flagged,
        "true_positives": true_positives,
    }


def category_table(scores: Sequence[float], truths: Sequence[bool], thresholds: Sequence[float]) -> list[dict[str, Any]]:
    """One row per threshold for one category; the columns are defined in ``DEFINITIONS``."""
    all_sorted = sorted(scores)
    true_sorted = sorted(s for s, truth in zip(scores, truths) if truth)
    rows = []
    for threshold in thresholds:
        flagged = len(all_sorted) - bisect_left(all_sorted, threshold)
        caught = len(true_sorted) - bisect_left(true_sorted, threshold)
        rows.append(_row(threshold, caught, flagged, len(true_sorted), len(all_sorted)))
    return rows


def category_calibration(scores: Sequence[float], truths: Sequence[bool], category: str) -> dict[str, Any]:
    """ECE of one category's probability; each bin reports the share of its texts truly in the category."""
    return binned_calibration(scores, truths, CALIBRATION_BINS, CALIBRATION_RANGE, f"P({category})", "observed_share")


def _mean(values: Sequence[float | None]) -> float | None:
    present = [0.0 if v is None else v for v in values]
    return sum(present) / len(present) if present else None


def summarize_multi_label(
    scored: MultiLabelScored,
    thresholds: Mapping[str, float],
    grid: Sequence[float] = DEFAULT_GRID,
    target_precision: float = DEFAULT_TARGET_PRECISION,
) -> dict[str, Any]:
    """The multi-label eval report: per category a threshold table, the configured threshold's row (a category
    missing from ``thresholds`` is at the worker's default, as in :class:`worker.wire.rules.Rules`), the lowest
    threshold reaching ``target_precision`` and the ECE; a micro/macro summary at the configured thresholds."""
    total = len(scored.truths)
    categories: dict[str, Any] = {}
    flagged_sets: list[set[str]] = [set() for _ in scored.truths]
    for name in scored.categories:
        scores, truths = scored.scores(name), scored.truth(name)
        threshold = thresholds.get(name, DEFAULT_THRESHOLD)
        (at_threshold,) = category_table(scores, truths, (threshold,))
        for flagged, score in zip(flagged_sets, scores):
            if score >= threshold:
                flagged.add(name)
        support = sum(truths)
        categories[name] = {
            "support": support,
            "prevalence": share(support, total),
            "threshold": threshold,
            "at_threshold": at_threshold,
            "lowest_threshold_for_precision": lowest_threshold_for(category_table(scores, truths, FINE_GRID), target_precision),
            "calibration": category_calibration(scores, truths, name),
            "thresholds": category_table(scores, truths, grid),
        }
    true_positives = sum(c["at_threshold"]["true_positives"] for c in categories.values())
    flagged = sum(c["at_threshold"]["flagged"] for c in categories.values())
    support = sum(c["support"] for c in categories.values())
    present = [c for c in categories.values() if c["support"]]
    elapsed = scored.seconds
    return {
        "mode": "multi_label",
        "texts": total,
        "clean_texts": sum(not truth for truth in scored.truths),
        "target_precision": target_precision,
        "definitions": DEFINITIONS,
        "summary": {
            "micro": {
                "precision": share(true_positives, flagged),
                "recall": share(true_positives, support),
                "f1": share(2 * true_positives, flagged + support),
                "true_positives": true_positives,
                "flagged": flagged,
                "support": support,
            },
            "macro": {
                "precision": _mean([c["at_threshold"]["precision"] for c in present]),
                "recall": _mean([c["at_threshold"]["recall"] for c in present]),
                "f1": _mean([c["at_threshold"]["f1"] for c in present]),
                "ece": _mean([c["calibration"]["ece"] for c in categories.values()]) if total else None,
                "categories": len(present),
            },
            "exact_match": share(sum(f == truth for f, truth in zip(flagged_sets, scored.truths)), total),
            "any_flagged_share": share(sum(bool(f) for f in flagged_sets), total),
        },
        "categories": categories,
        "seconds": round(elapsed, 3),
        "texts_per_second": round(total / elapsed, 1) if elapsed else None,
        "padding_efficiency": round(scored.real_tokens / scored.padded_tokens, 4) if scored.padded_tokens else None,
    }


def _number(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _reached(row: dict[str, Any] | None) -> str:
    if row is None:
        return "not reached"
    return f"{row['threshold']:.3f} (recall {percent(row['recall'])}, flags {percent(row['flagged_share'])})"


def format_multi_label_report(report: dict[str, Any]) -> str:
    """The report as a summary, one line per category and a threshold table per category (the JSON has all)."""
    summary, micro, macro = report["summary"], report["summary"]["micro"], report["summary"]["macro"]
    target = percent(report["target_precision"])
    lines = [
        f"texts {report['texts']:,} ({report['clean_texts']:,} clean: no category)   "
        f"{report['texts_per_second']} texts/s",
        f"at the configured thresholds: micro precision {percent(micro['precision'])} recall "
        f"{percent(micro['recall'])} F1 {_number(micro['f1'])}; exact match {percent(summary['exact_match'])}; "
        f"flagged in any category {percent(summary['any_flagged_share'])}",
        f"macro ({macro['categories']} categories with texts): precision {percent(macro['precision'])} recall "
        f"{percent(macro['recall'])} F1 {_number(macro['f1'])}; mean ECE {_number(macro['ece'])}",
        "",
        f"category | support | threshold | precision | recall | F1 | flagged | ECE | precision >= {target} from",
        "-------- | ------- | --------- | --------- | ------ | -- | ------- | --- | ---------------------",
    ]
    for name, category in report["categories"].items():
        row = category["at_threshold"]
        lines.append(
            f"{name} | {category['support']:,} ({percent(category['prevalence'])}) | {category['threshold']:.2f} | "
            f"{percent(row['precision'])} | {percent(row['recall'])} | {_number(row['f1'])} | "
            f"{percent(row['flagged_share'])} | {_number(category['calibration']['ece'])} | "
            f"{_reached(category['lowest_threshold_for_precision'])}"
        )
    for name, category in report["categories"].items():
        lines += [
            "",
            f"{name}: flagged = P({name}) >= threshold",
            "threshold | precision |  recall |    F1 | flagged",
            "--------- | --------- | ------- | ----- | -------",
        ]
        for row in category["thresholds"]:
            lines.append(
                f"{row['threshold']:>9.2f} | {percent(row['precision']):>9} | {percent(row['recall']):>7} | "
                f"{_number(row['f1']):>5} | {percent(row['flagged_share']):>7}"
            )
    return "\n".join(lines)
