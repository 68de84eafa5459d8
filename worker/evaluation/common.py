"""What the binary and the multi-label evaluation share: shares, the lowest threshold reaching a precision,
and binned calibration. Plain functions of numbers, no model."""

from __future__ import annotations

from bisect import bisect_right
from typing import Any, Sequence


def share(part: int, whole: int) -> float | None:
    """part / whole, or None when there is no whole (a share of nothing is not 0)."""
    return part / whole if whole else None


def percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def lowest_threshold_for(table: Sequence[dict[str, Any]], target_precision: float) -> dict[str, Any] | None:
    """The row with the lowest threshold whose precision reaches the target, or None if none does."""
    for row in sorted(table, key=lambda r: r["threshold"]):
        if row["precision"] is not None and row["precision"] >= target_precision:
            return row
    return None


def binned_calibration(
    scores: Sequence[float],
    outcomes: Sequence[bool],
    bins: int,
    score_range: tuple[float, float],
    score_name: str,
    outcome_key: str,
) -> dict[str, Any]:
    """Expected calibration error: sum over equal-width bins of
    (texts in bin / all texts) * |share of true outcomes in bin - mean score in bin|. A score equal to an inner
    edge belongs to the bin above it; the top edge belongs to the last bin. Each bin reports its share of
    true outcomes under ``outcome_key`` (a binary model's accuracy, a category's observed frequency)."""
    low, high = score_range
    edges = [low + (high - low) * i / bins for i in range(bins + 1)]
    counts = [0] * bins
    score_sums = [0.0] * bins
    hits = [0] * bins
    for score, outcome in zip(scores, outcomes):
        index = min(max(bisect_right(edges, score) - 1, 0), bins - 1)
        counts[index] += 1
        score_sums[index] += score
        hits[index] += bool(outcome)
    total = sum(counts)
    ece = 0.0
    table = []
    for i in range(bins):
        mean_score = score_sums[i] / counts[i] if counts[i] else None
        observed = hits[i] / counts[i] if counts[i] else None
        if counts[i]:
            ece += counts[i] / total * abs(observed - mean_score)
        table.append(
            {
                "lower": edges[i],
                "upper": edges[i + 1],
                "count": counts[i],
                "mean_score": mean_score,
                outcome_key: observed,
            }
        )
    return {
        "ece": ece if total else None,
        "binning": f"{bins} equal-width bins of {score_name} over [{low}, {high}]",
        "bins": table,
    }
