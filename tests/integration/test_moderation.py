"""Issue 12: moderation routes against the real broker, in both delivery modes.

A stream of NSMC reviews goes through a `worker run` process with two rules. Each routed topic must
hold exactly the results its rule selects, computed here independently from the main results, with
the main result's key, value and headers plus `worker.route`, and nothing twice under read_committed.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter

import pytest

from harness.clients import consume_all, produce
from harness.processes import start_worker_process, worker_env
from harness.topics import create_topics

pytestmark = pytest.mark.integration

COUNT = 600


def thresholds(classifier, texts):
    """A label and thresholds in the middle of this model's score range, so each rule picks a real subset
    (the tests' tiny random model is not a sentiment model: its scores sit close together)."""
    from worker.engines.base import classify_encoded, to_prediction

    encodings = classifier.encode(texts)
    probabilities = classify_encoded(classifier, encodings, 4096).probabilities
    predictions = [to_prediction(p, classifier.labels, e) for p, e in zip(probabilities, encodings)]
    label = Counter(p.label for p in predictions).most_common(1)[0][0]
    scores = sorted(p.score for p in predictions if p.label == label)
    every = sorted(p.score for p in predictions)
    return label, round(statistics.median(scores), 6), round(every[len(every) // 3], 6)


@pytest.mark.parametrize("delivery", ["at_least_once", "exactly_once"])
def test_routes_hold_exactly_what_their_rules_select(delivery, kafka_bootstrap, topics, tiny_classifier,
                                                      tiny_model_dir, nsmc_rows, tmp_path, fault_report):
    rows = nsmc_rows[:COUNT]
    label, flagged_min, review_below = thresholds(tiny_classifier, [doc for _, doc, _ in rows])
    route_topics = {"flagged": f"flagged-{topics['input']}", "review": f"review-{topics['input']}"}
    create_topics(kafka_bootstrap, {t: 2 for t in route_topics.values()})
    routes = [
        {"name": "flagged", "topic": route_topics["flagged"], "labels": [label], "min_score": flagged_min},
        {"name": "review", "topic": route_topics["review"], "below": review_below},
    ]
    keys = [f"{i}-{doc_id}" for i, (doc_id, _, _) in enumerate(rows)]
    produce(kafka_bootstrap, topics["input"],
            [(k.encode(), doc.encode(), [("trace", k.encode())]) for k, (_, doc, _) in zip(keys, rows)])
    env = worker_env(kafka_bootstrap, topics, tiny_model_dir, WORKER_ROUTES=json.dumps(routes),
                     WORKER_DELIVERY=delivery, WORKER_TRANSACTIONAL_ID=f"tx-{topics['input']}")
    log = tmp_path / "worker.log"
    process = start_worker_process(env, log)
    try:
        results = consume_all(kafka_bootstrap, topics["output"], expected=COUNT, timeout_s=180)
        routed = {name: consume_all(kafka_bootstrap, topic, idle_s=4, timeout_s=60) for name, topic in route_topics.items()}
        assert process.poll() is None, log.read_text()
    finally:
        process.terminate()
        assert process.wait(60) == 0, log.read_text()

    main = {r.key.decode(): r for r in results}
    assert len(results) == COUNT and set(main) == set(keys)
    expected = {
        "flagged": {k for k, r in main.items() if r.json()["label"] == label and r.json()["score"] >= flagged_min},
        "review": {k for k, r in main.items() if r.json()["score"] < review_below},
    }
    for name, records in routed.items():
        counts = Counter(r.key.decode() for r in records)
        assert all(n == 1 for n in counts.values()), f"{name}: routed twice: {[k for k, n in counts.items() if n > 1]}"
        assert set(counts) == expected[name], f"{name}: {len(set(counts) ^ expected[name])} records differ"
        assert 0 < len(counts) < COUNT, f"{name}: the rule should select a real subset"
        for record in records:
            original = main[record.key.decode()]
            assert record.value == original.value
            assert record.headers["worker.route"] == name
            assert record.headers["trace"] == record.key.decode()
        fault_report(f"routes-{delivery}", **{name: len(counts)})
