"""The threshold table and the calibration error of `worker eval`, checked against independent numpy sums."""

import json
import random

import numpy as np
import pytest

from worker.evaluation import (
    DEFAULT_THRESHOLDS,
    Scored,
    calibration,
    format_report,
    lowest_threshold_for,
    summarize,
    threshold_table,
)


def made_up_scores(count: int, seed: int = 7) -> Scored:
    """Binary scores with ties, exact threshold values, and a cap below 0.99 like the stand-in model's."""
    rng = random.Random(seed)
    truths, negative, winning, predicted = [], [], [], []
    for i in range(count):
        truth = rng.randint(0, 1)
        if i % 17 == 0:
            p_negative = rng.choice(DEFAULT_THRESHOLDS[:-1])  # a score equal to a threshold is flagged (>=)
        else:
            p_negative = min(rng.betavariate(4, 1.5) if truth == 0 else rng.betavariate(1.5, 4), 0.985)
        truths.append(truth)
        negative.append(p_negative)
        winning.append(max(p_negative, 1 - p_negative))
        predicted.append(0 if p_negative > 0.5 else 1)
    return Scored(truths, negative, winning, predicted, seconds=1.0, real_tokens=90, padded_tokens=100)


def numpy_row(scored: Scored, threshold: float, review_below: float) -> dict:
    scores, truths, winning = (np.asarray(v) for v in (scored.negative_scores, scored.truths, scored.winning_scores))
    flagged = scores >= threshold
    caught = int(np.sum(flagged & (truths == 0)))
    return {
        "precision": caught / flagged.sum() if flagged.any() else None,
        "recall": caught / np.sum(truths == 0),
        "flagged_share": flagged.mean(),
        "review_share": np.mean((winning < review_below) & ~flagged),
    }


@pytest.mark.parametrize("review_below", [0.6, 0.75, 0.5])
def test_threshold_table_matches_numpy(review_below):
    scored = made_up_scores(3000)
    thresholds = (0.0, *DEFAULT_THRESHOLDS, 0.999, 1.0)
    table = threshold_table(scored.negative_scores, scored.truths, scored.winning_scores, thresholds, review_below)
    assert [row["threshold"] for row in table] == list(thresholds)
    for row in table:
        expected = numpy_row(scored, row["threshold"], review_below)
        for key, value in expected.items():
            if value is None:
                assert row[key] is None, (row, key)
            else:
                assert row[key] == pytest.approx(float(value), abs=1e-12), (row, key)


def test_threshold_table_edges_all_and_nothing_flagged():
    scored = made_up_scores(500)
    everything, nothing = threshold_table(scored.negative_scores, scored.truths, scored.winning_scores, (0.0, 0.99))
    negatives = scored.truths.count(0)
    assert everything["flagged"] == 500 and everything["flagged_share"] == 1.0
    assert everything["recall"] == 1.0 and everything["precision"] == negatives / 500
    assert everything["review"] == 0  # everything is flagged, so nothing is left for review
    assert nothing["flagged"] == 0 and nothing["precision"] is None and nothing["recall"] == 0.0
    assert nothing["review_share"] == sum(w < 0.6 for w in scored.winning_scores) / 500


def test_threshold_table_by_hand():
    #              P(negative) 0.95 0.80 0.60 0.55 0.30 0.05
    negative_scores = [0.95, 0.80, 0.60, 0.55, 0.30, 0.05]
    truths = [0, 0, 1, 0, 1, 1]
    winning = [max(s, 1 - s) for s in negative_scores]
    rows = threshold_table(negative_scores, truths, winning, (0.5, 0.6, 0.9), review_below=0.6)
    assert [(r["flagged"], r["negatives_flagged"], r["review"]) for r in rows] == [(4, 3, 0), (3, 2, 1), (1, 1, 1)]
    assert rows[1]["precision"] == 2 / 3 and rows[1]["recall"] == 2 / 3 and rows[1]["review_share"] == 1 / 6


def test_empty_input_gives_no_numbers_rather_than_a_crash():
    (row,) = threshold_table([], [], [], (0.5,))
    assert row["precision"] is None and row["recall"] is None and row["flagged_share"] is None
    assert calibration([], [])["ece"] is None


def numpy_ece(winning, correct, bins=10, low=0.5, high=1.0):
    winning, correct = np.asarray(winning), np.asarray(correct, dtype=float)
    index = np.clip(np.floor((winning - low) / (high - low) * bins).astype(int), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        members = index == b
        if members.any():
            total += members.mean() * abs(correct[members].mean() - winning[members].mean())
    return total


def test_ece_matches_numpy():
    rng = np.random.default_rng(3)
    winning = rng.uniform(0.5, 1.0, 5000)
    correct = rng.uniform(0, 1, 5000) < winning**2  # overconfident on purpose
    result = calibration(winning.tolist(), correct.tolist())
    assert result["ece"] == pytest.approx(numpy_ece(winning, correct), abs=1e-12)
    assert result["ece"] > 0.05
    assert sum(b["count"] for b in result["bins"]) == 5000
    assert result["binning"] == "10 equal-width bins of the winning score over [0.5, 1.0]"


def test_ece_bin_edges_and_perfect_calibration():
    # 0.5 opens the first bin, an inner edge belongs to the bin above it, 1.0 closes the last bin.
    result = calibration([0.5, 0.55, 0.999, 1.0], [True, True, True, True])
    assert [b["count"] for b in result["bins"]] == [1, 1, 0, 0, 0, 0, 0, 0, 0, 2]
    # Ten texts at 0.7, seven right: calibrated exactly.
    assert calibration([0.7] * 10, [True] * 7 + [False] * 3)["ece"] == pytest.approx(0.0)
    # All at 0.9, all wrong: the error is the whole 0.9.
    assert calibration([0.9] * 4, [False] * 4)["ece"] == pytest.approx(0.9)


def test_lowest_threshold_for_a_target_precision():
    table = [
        {"threshold": 0.5, "precision": 0.80},
        {"threshold": 0.7, "precision": 0.96},
        {"threshold": 0.6, "precision": 0.95},
        {"threshold": 0.9, "precision": None},
    ]
    assert lowest_threshold_for(table, 0.95)["threshold"] == 0.6
    assert lowest_threshold_for(table, 0.99) is None


def test_summary_report_is_json_and_readable():
    scored = made_up_scores(2000)
    report = summarize(scored, review_below=0.6)
    json.dumps(report)  # the --output file
    confusion = report["confusion_matrix"]["values"]
    assert sum(map(sum, confusion)) == 2000
    assert report["accuracy"] == sum(t == p for t, p in zip(scored.truths, scored.predicted)) / 2000
    assert report["negative_thresholds"]["rows"][0]["threshold"] == 0.5
    assert report["review_band"]["share"] == sum(w < 0.6 for w in scored.winning_scores) / 2000
    text = format_report(report)
    assert "threshold | precision | recall | flagged | review" in text
    assert "0.99 |         – |" in text  # nothing scored >= 0.99: no precision, not a division by zero
    assert "ECE" in text and "winning score < 0.6" in text
