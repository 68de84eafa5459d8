"""Issue 16: a multi-label model through the real broker, checked against an independent sigmoid.

A random multi-label model of KoELECTRA's shape (hate, insult, spam, clean; ``problem_type:
multi_label_classification`` in its config) runs in a `worker run` process with per-category
thresholds and routes. The test computes every text's probabilities itself, with transformers and
``torch.sigmoid`` (not the worker's code), and from them the expected ``labels`` and routed copies.
The engine is pinned to float32 torch, so the worker's numbers equal the independent ones to float
rounding; a decision closer than that to its threshold is not judged.
"""

from __future__ import annotations

import json
import statistics

import pytest

from harness.clients import consume_all, produce
from harness.models import MULTI_LABEL_CATEGORIES
from harness.processes import start_worker_process, worker_env
from harness.topics import create_topics

pytestmark = pytest.mark.integration

COUNT = 300
CATEGORIES = list(MULTI_LABEL_CATEGORIES.values())
TOLERANCE = 1e-5  # float32 torch, batched and padded vs one text at a time


def independent_sigmoid(model_dir, texts):
    """Each text alone through transformers' own model and tokenizer, then torch.sigmoid of the logits."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    assert model.config.problem_type == "multi_label_classification"
    out = []
    with torch.inference_mode():
        for text in texts:
            inputs = tokenizer(text, return_tensors="pt", truncation=True, max_length=512)
            out.append(dict(zip(CATEGORIES, torch.sigmoid(model(**inputs).logits)[0].tolist())))
    return out


def near(p: float, bound: float | None) -> bool:
    return bound is not None and abs(p - bound) <= TOLERANCE


def test_multi_label_probabilities_labels_and_routes_match_an_independent_sigmoid(
        kafka_bootstrap, topics, tiny_multi_label_model_dir, nsmc_rows, tmp_path):
    rows = nsmc_rows[:COUNT]
    texts = [doc for _, doc, _ in rows]
    expected = independent_sigmoid(tiny_multi_label_model_dir, texts)

    def quantile(category, q):
        return round(statistics.quantiles([e[category] for e in expected], n=100)[q - 1], 6)

    # Thresholds and bands from this model's own spread, so each picks a real subset.
    thresholds = {"hate": quantile("hate", 50), "insult": quantile("insult", 40), "default": quantile("spam", 60)}
    routes = [
        {"name": "insult", "topic": f"insult-{topics['input']}", "labels": ["insult"], "min_score": quantile("insult", 70)},
        {"name": "abuse-band", "topic": f"band-{topics['input']}", "labels": ["hate", "spam"],
         "min_score": min(quantile("hate", 30), quantile("spam", 30)),
         "below": max(quantile("hate", 60), quantile("spam", 60))},
    ]
    create_topics(kafka_bootstrap, {r["topic"]: 2 for r in routes})
    keys = [f"{i}-{doc_id}" for i, (doc_id, _, _) in enumerate(rows)]
    produce(kafka_bootstrap, topics["input"], [(k.encode(), t.encode()) for k, t in zip(keys, texts)])
    env = worker_env(kafka_bootstrap, topics, tiny_multi_label_model_dir, WORKER_ENGINE="torch",
                     WORKER_ROUTES=json.dumps(routes), WORKER_LABEL_THRESHOLDS=json.dumps(thresholds),
                     WORKER_BATCH_MAX_MESSAGES="64")
    log = tmp_path / "worker.log"
    process = start_worker_process(env, log)
    try:
        # Generous: the worker imports torch twice at start (preparing child, then itself) on shared CPUs.
        results = consume_all(kafka_bootstrap, topics["output"], expected=COUNT, timeout_s=360)
        routed = {r["name"]: consume_all(kafka_bootstrap, r["topic"], idle_s=4, timeout_s=60) for r in routes}
        assert process.poll() is None, log.read_text()
    finally:
        process.terminate()
        assert process.wait(60) == 0, log.read_text()

    by_key = {r.key.decode(): r.json() for r in results}
    assert len(results) == COUNT and set(by_key) == set(keys), log.read_text()[-3000:]
    threshold = {c: thresholds.get(c, thresholds["default"]) for c in CATEGORIES}
    judged = 0
    for key, probs in zip(keys, expected):
        value = by_key[key]
        assert value["probabilities"] == pytest.approx(probs, abs=TOLERANCE)
        assert value["label"] == max(probs, key=probs.get) and value["score"] == pytest.approx(max(probs.values()), abs=TOLERANCE)
        if any(near(p, threshold[c]) for c, p in probs.items()):
            continue  # too close to a threshold to say which side float rounding puts it
        judged += 1
        present = sorted((c for c in CATEGORIES if probs[c] >= threshold[c]), key=lambda c: -probs[c])
        assert value["labels"] == present, key
    assert judged > COUNT * 0.9
    for category in CATEGORIES:  # each threshold picks a real subset
        assert 0 < sum(category in v["labels"] for v in by_key.values()) < COUNT, category
    assert any(len(v["labels"]) > 1 for v in by_key.values())  # several categories at once

    for route in routes:
        listed, low, high = route["labels"], route["min_score"], route.get("below")
        matching, unsure = set(), set()
        for key, probs in zip(keys, expected):
            values = [probs[c] for c in listed]
            if any(near(p, low) or near(p, high) for p in values):
                unsure.add(key)
            elif any(p >= low and (high is None or p < high) for p in values):
                matching.add(key)
        got = [r.key.decode() for r in routed[route["name"]]]
        assert len(got) == len(set(got)), f"{route['name']}: a result routed twice"
        assert set(got) - unsure == matching, f"{route['name']}: {len((set(got) - unsure) ^ matching)} records differ"
        assert 0 < len(matching) < COUNT, f"{route['name']}: the rule should select a real subset"
        for record in routed[route["name"]]:
            assert record.json() == by_key[record.key.decode()]
            assert record.headers["worker.route"] == route["name"]
    # The abuse band (the last route) matches by each listed category's own probability: some copies
    # match on a category that is not the most probable one, which a route on the winner alone never selects.
    assert any(by_key[k]["label"] not in ("hate", "spam") for k in matching)
