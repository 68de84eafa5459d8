"""Accuracy of the worker's own classifier on an NSMC-format TSV (``worker eval``)."""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any, Sequence

from tqdm import tqdm

from worker.model import Classifier, classify_encoded


def read_nsmc_rows(path: Path, limit: int | None = None) -> list[tuple[str, str, int]]:
    """(id, document, label) rows; NSMC has literal quotes, so no CSV quoting. Empty documents are skipped."""
    rows: list[tuple[str, str, int]] = []
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader)
        if header[:3] != ["id", "document", "label"]:
            raise ValueError(f"{path}: expected header id, document, label; found {header}")
        for line_no, row in enumerate(reader, start=2):
            if len(row) != 3 or row[2] not in ("0", "1"):
                raise ValueError(f"{path}:{line_no}: expected 3 columns with label 0 or 1, got {row!r}")
            if row[1].strip():
                rows.append((row[0], row[1], int(row[2])))
            if limit is not None and len(rows) >= limit:
                break
    return rows


def read_nsmc(path: Path, limit: int | None = None) -> list[tuple[str, int]]:
    """(document, label) rows of :func:`read_nsmc_rows`."""
    return [(document, label) for _, document, label in read_nsmc_rows(path, limit)]


def evaluate(
    classifier: Classifier, rows: Sequence[tuple[str, int]], window: int = 1024, sub_batch_max_tokens: int = 2048
) -> dict[str, Any]:
    labels = classifier.labels
    positive = labels.index("positive") if "positive" in labels else 1
    confusion = [[0, 0], [0, 0]]  # [true][predicted]
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
                predicted = 1 if probs[positive] >= 0.5 else 0
                confusion[truth][predicted] += 1
            progress.update(len(chunk))
    elapsed = time.perf_counter() - started
    total = len(rows)
    tp, fp, fn = confusion[1][1], confusion[0][1], confusion[1][0]
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {
        "texts": total,
        "accuracy": (confusion[0][0] + tp) / total if total else 0.0,
        "f1_positive": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "precision_positive": precision,
        "recall_positive": recall,
        "confusion_matrix": {"rows": "true label 0, 1", "columns": "predicted 0, 1", "values": confusion},
        "seconds": round(elapsed, 3),
        "texts_per_second": round(total / elapsed, 1) if elapsed else None,
        "padding_efficiency": round(real / padded, 4) if padded else None,
    }
