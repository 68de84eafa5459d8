"""`worker eval` on multi-label data: the per-category numbers checked against independent numpy sums and a
hand-computed case, the JSONL/TSV readers and their one-line errors, and the per-category charts."""

import json
import random

import numpy as np
import pytest

from worker.datasets import DatasetError, LabelledText, is_multi_label_file, read_multi_label
from worker.evaluation.multilabel import (
    DEFAULT_GRID,
    FINE_GRID,
    MultiLabelScored,
    category_table,
    check_categories,
    format_multi_label_report,
    summarize_multi_label,
)

CATEGORIES = ["insult", "spam", "hate"]


def made_up(count: int, seed: int = 5) -> MultiLabelScored:
    """Independent sigmoid-like probabilities per category (not summing to 1), with ties on grid values and a
    category ('hate') that is rare and never scored high."""
    rng = random.Random(seed)
    prevalence = {"insult": 0.3, "spam": 0.15, "hate": 0.03}
    truths, probabilities = [], []
    for i in range(count):
        truth = frozenset(c for c in CATEGORIES if rng.random() < prevalence[c])
        row = []
        for c in CATEGORIES:
            if i % 13 == 0:
                p = rng.choice(DEFAULT_GRID)  # a probability equal to a threshold is flagged (>=)
            elif c == "hate":
                p = rng.uniform(0, 0.6)
            else:
                p = rng.betavariate(5, 1.5) if c in truth else rng.betavariate(1.2, 5)
            row.append(p)
        truths.append(truth)
        probabilities.append(row)
    return MultiLabelScored(CATEGORIES, truths, probabilities, seconds=2.0, real_tokens=80, padded_tokens=100)


def arrays(scored: MultiLabelScored):
    probs = np.asarray(scored.probabilities)
    truth = np.asarray([[c in t for c in scored.categories] for t in scored.truths])
    return probs, truth


def numpy_counts(probs, truth, j, threshold):
    flagged = probs[:, j] >= threshold
    return int(np.sum(flagged & truth[:, j])), int(flagged.sum()), int(truth[:, j].sum())


def numpy_ece(p, y, bins=10):
    index = np.clip(np.floor(p * bins).astype(int), 0, bins - 1)
    return sum(np.mean(index == b) * abs(y[index == b].mean() - p[index == b].mean()) for b in range(bins) if np.any(index == b))


def test_category_tables_match_numpy():
    scored = made_up(2500)
    probs, truth = arrays(scored)
    thresholds = (0.0, *DEFAULT_GRID, 0.999, 1.0)
    for j, name in enumerate(CATEGORIES):
        table = category_table(scored.scores(name), scored.truth(name), thresholds)
        assert [row["threshold"] for row in table] == list(thresholds)
        for row in table:
            tp, flagged, support = numpy_counts(probs, truth, j, row["threshold"])
            assert (row["true_positives"], row["flagged"]) == (tp, flagged)
            assert row["precision"] == (pytest.approx(tp / flagged, abs=1e-12) if flagged else None)
            assert row["recall"] == pytest.approx(tp / support, abs=1e-12)
            assert row["flagged_share"] == pytest.approx(flagged / 2500, abs=1e-12)
            precision, recall = (tp / flagged if flagged else 0.0), tp / support
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            assert row["f1"] == pytest.approx(f1, abs=1e-12)


def test_report_matches_numpy_per_category_and_in_summary():
    scored = made_up(3000)
    probs, truth = arrays(scored)
    configured = {"insult": 0.6, "spam": 0.35}  # hate: the default 0.5
    report = summarize_multi_label(scored, configured, target_precision=0.9)
    json.dumps(report)  # the --output file
    assert report["texts"] == 3000 and report["clean_texts"] == sum(not t for t in scored.truths)
    assert list(report["categories"]) == CATEGORIES
    tps = flags = supports = 0
    per_category = []
    for j, name in enumerate(CATEGORIES):
        category = report["categories"][name]
        threshold = configured.get(name, 0.5)
        tp, flagged, support = numpy_counts(probs, truth, j, threshold)
        assert category["threshold"] == threshold and category["support"] == support
        assert category["at_threshold"]["true_positives"] == tp and category["at_threshold"]["flagged"] == flagged
        assert [r["threshold"] for r in category["thresholds"]] == list(DEFAULT_GRID)
        assert category["calibration"]["ece"] == pytest.approx(numpy_ece(probs[:, j], truth[:, j]), abs=1e-12)
        assert sum(b["count"] for b in category["calibration"]["bins"]) == 3000
        # The lowest threshold on the 0.001 grid whose precision reaches 90 %, by brute force.
        reaching = [t for t in FINE_GRID if numpy_counts(probs, truth, j, t)[1]
                    and numpy_counts(probs, truth, j, t)[0] / numpy_counts(probs, truth, j, t)[1] >= 0.9]
        found = category["lowest_threshold_for_precision"]
        assert (found and found["threshold"]) == (reaching[0] if reaching else None), name
        tps, flags, supports = tps + tp, flags + flagged, supports + support
        per_category.append((tp / flagged if flagged else 0.0, tp / support, 2 * tp / (flagged + support)))
    assert report["categories"]["insult"]["lowest_threshold_for_precision"] is not None
    assert report["categories"]["hate"]["lowest_threshold_for_precision"] is None  # never scored high: not reached
    micro, macro = report["summary"]["micro"], report["summary"]["macro"]
    assert micro["precision"] == pytest.approx(tps / flags) and micro["recall"] == pytest.approx(tps / supports)
    assert micro["f1"] == pytest.approx(2 * tps / (flags + supports))
    for index, key in enumerate(("precision", "recall", "f1")):
        assert macro[key] == pytest.approx(np.mean([values[index] for values in per_category]))
    thresholds = np.asarray([configured.get(c, 0.5) for c in CATEGORIES])
    predicted = probs >= thresholds
    assert report["summary"]["exact_match"] == pytest.approx(np.mean(np.all(predicted == truth, axis=1)))
    assert report["summary"]["any_flagged_share"] == pytest.approx(np.mean(predicted.any(axis=1)))


def test_by_hand():
    # insult: P 0.9 0.7 0.4 0.2 | truth yes yes no yes ; spam: P 0.6 0.1 0.55 0.3 | truth no no yes no
    scored = MultiLabelScored(
        ["insult", "spam"],
        [frozenset({"insult"}), frozenset({"insult"}), frozenset({"spam"}), frozenset({"insult"})],
        [[0.9, 0.6], [0.7, 0.1], [0.4, 0.55], [0.2, 0.3]],
        seconds=1.0, real_tokens=1, padded_tokens=1,
    )
    report = summarize_multi_label(scored, {}, grid=(0.5,), target_precision=1.0)
    insult, spam = report["categories"]["insult"], report["categories"]["spam"]
    # At 0.5: insult flags texts 1, 2 (both right): precision 1, recall 2/3, F1 0.8. spam flags 1, 3: 1 of 2 right.
    assert insult["at_threshold"]["precision"] == 1.0 and insult["at_threshold"]["recall"] == 2 / 3
    assert insult["at_threshold"]["f1"] == pytest.approx(0.8)
    assert spam["at_threshold"]["precision"] == 0.5 and spam["at_threshold"]["recall"] == 1.0
    # Precision 100 %: insult once the false 0.4 is out, so from 0.401 on the 0.001 grid. spam never: up to 0.55
    # the false 0.6 is flagged beside the true 0.55, above 0.55 only the false 0.6.
    assert insult["lowest_threshold_for_precision"]["threshold"] == 0.401
    assert spam["lowest_threshold_for_precision"] is None
    # Micro: TP 2 + 1, flagged 2 + 2, support 3 + 1.
    assert report["summary"]["micro"]["precision"] == 3 / 4 and report["summary"]["micro"]["recall"] == 3 / 4
    # Flagged sets {insult, spam}, {insult}, {spam}, {}: texts 2 and 3 match their truth exactly.
    assert report["summary"]["exact_match"] == 0.5 and report["summary"]["any_flagged_share"] == 0.75
    # ECE of insult: bins [0.9], [0.7], [0.4], [0.2], each a quarter: |1-0.9| + |1-0.7| + |0-0.4| + |1-0.2|, / 4.
    assert insult["calibration"]["ece"] == pytest.approx((0.1 + 0.3 + 0.4 + 0.8) / 4)
    text = format_multi_label_report(report)
    assert "insult | 3 (75.0 %) | 0.50 | 100.0 % | 66.7 % | 0.800 | 50.0 %" in text
    assert "| not reached" in text and "precision >= 100.0 % from" in text


def test_a_category_without_texts_and_an_empty_run_give_no_numbers_rather_than_a_crash():
    scored = MultiLabelScored(["insult", "spam"], [frozenset(), frozenset({"insult"})], [[0.2, 0.7], [0.8, 0.1]], 1, 1, 1)
    report = summarize_multi_label(scored, {})
    spam = report["categories"]["spam"]
    assert spam["support"] == 0 and spam["at_threshold"]["recall"] is None and spam["at_threshold"]["precision"] == 0
    assert report["summary"]["macro"]["categories"] == 1  # spam has no text: out of the macro means
    empty = summarize_multi_label(MultiLabelScored(["insult"], [], [], 0, 0, 0), {})
    assert empty["categories"]["insult"]["calibration"]["ece"] is None and empty["summary"]["micro"]["precision"] is None
    format_multi_label_report(empty)


# --- the readers -------------------------------------------------------------------------------------------


def test_jsonl_and_tsv_read_the_same_rows(tmp_path):
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text(
        '{"text": "꺼져 광고", "labels": ["insult", "spam"]}\n\n{"text": "좋은 글", "labels": []}\n'
        '{"text": "  ", "labels": ["spam"]}\n{"id": 7, "text": "바보", "labels": ["insult", "insult"]}\n',
        encoding="utf-8",
    )
    tsv = tmp_path / "data.tsv"
    tsv.write_text("id\tdocument\tlabels\n1\t꺼져 광고\tinsult, spam\n2\t좋은 글\t\n3\t \tspam\n4\t바보\tinsult\n", encoding="utf-8")
    rows_jsonl, rows_tsv = read_multi_label(jsonl), read_multi_label(tsv)
    assert [(r.text, r.categories) for r in rows_jsonl] == [(r.text, r.categories) for r in rows_tsv] == [
        ("꺼져 광고", {"insult", "spam"}), ("좋은 글", frozenset()), ("바보", {"insult"})
    ]
    assert [r.line for r in rows_jsonl] == [1, 3, 5] and [r.line for r in rows_tsv] == [2, 3, 5]
    assert is_multi_label_file(jsonl) and is_multi_label_file(tsv)
    unnamed = tmp_path / "data.txt"  # JSON lines under another name: told apart by the first line
    unnamed.write_text(jsonl.read_text(encoding="utf-8"), encoding="utf-8")
    assert is_multi_label_file(unnamed) and read_multi_label(unnamed) == rows_jsonl
    nsmc = tmp_path / "nsmc.tsv"
    nsmc.write_text("id\tdocument\tlabel\n1\t좋다\t1\n", encoding="utf-8")
    assert not is_multi_label_file(nsmc)
    assert len(read_multi_label(jsonl, limit=2)) == 2


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("a.jsonl", '{"text": "a", "labels": []}\n{"text": "b", "labels": ["spam"\n', "a.jsonl:2: not JSON"),
        ("a.jsonl", '["text", "labels"]\n', "a.jsonl:1: expected a JSON object"),
        ("a.jsonl", '{"text": 5, "labels": []}\n', 'a.jsonl:1: "text" must be a string'),
        ("a.jsonl", '{"text": "a", "labels": "spam"}\n', 'a.jsonl:1: "labels" must be a list'),
        ("a.jsonl", '{"text": "a"}\n', 'a.jsonl:1: "labels" must be a list'),
        ("a.jsonl", '{"text": "a", "labels": [""]}\n', 'a.jsonl:1: "labels" must be a list'),
        ("a.tsv", "id\tdocument\tlabels\n1\ta\tspam\n2\tb\n", "a.tsv:3: expected 3 tab-separated columns"),
        ("a.tsv", "id\tdocument\tlabels\n1\ta\tspam,,insult\n", "a.tsv:2: empty category name"),
        ("a.jsonl", b'{"text": "\xff", "labels": []}\n', "a.jsonl: not UTF-8"),
        ("a.tsv", b"id\tdocument\tlabels\n1\t\xff\tspam\n", "a.tsv: not UTF-8"),
    ],
)
def test_bad_rows_are_one_line_naming_file_and_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DatasetError) as error:
        read_multi_label(path)
    assert str(error.value).startswith(f"{tmp_path}/{message}") and "\n" not in str(error.value)


def test_missing_file_and_unknown_category(tmp_path):
    with pytest.raises(DatasetError, match="No such file"):
        read_multi_label(tmp_path / "missing.jsonl")
    rows = [LabelledText(2, "a", frozenset({"spam"})), LabelledText(9, "b", frozenset({"insult", "threat"}))]
    with pytest.raises(DatasetError) as error:
        check_categories(rows, ["insult", "spam"], tmp_path / "x.tsv")
    assert str(error.value) == f"{tmp_path}/x.tsv:9: unknown category 'threat'; the model's categories are insult, spam"


# --- the charts --------------------------------------------------------------------------------------------


def test_charts_per_category(tmp_path):
    pytest.importorskip("matplotlib")
    from worker.plots.multilabel import chart_stems, write_multi_label_plots

    assert chart_stems(["insult", "여성/가족", "spam", "Spam", "기타 혐오"]) == [
        "insult", "category-02", "spam", "category-04", "category-05"
    ]
    scored = made_up(400)
    report = summarize_multi_label(scored, {"insult": 0.7}, target_precision=0.8)
    paths = write_multi_label_plots(scored, report, tmp_path / "charts", "fake-model")
    assert [p.name for p in paths] == [
        f"{c}-{chart}.png" for c in CATEGORIES for chart in ("precision-recall-threshold", "reliability")
    ]
    for path in paths:
        data = path.read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000, path


def test_a_model_giving_fewer_probabilities_than_categories_is_an_error_not_a_wrong_report():
    from worker.engines.base import Encoding
    from worker.errors import WorkerError
    from worker.evaluation.multilabel import score_multi_label

    class Short:
        labels = ["insult", "spam"]

        def encode(self, texts):
            return [Encoding([2, 5, 3], False) for _ in texts]

        def predict(self, batch):
            return [[0.5] for _ in batch]

    with pytest.raises(WorkerError, match="the model gave 1 probabilities for its 2 categories"):
        score_multi_label(Short(), [LabelledText(1, "a", frozenset())])
