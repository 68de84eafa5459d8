"""Issue 16 part 3: a shadow model through the real broker.

Two tiny random models (different seeds, so they disagree on part of the texts): every record gets
the primary's result on the output topic and the shadow's on the shadow topic only; the agreement
metrics the worker exposes equal a comparison of the two topics made here. A shadow that raises for
everything is switched off and costs the primary no record.
"""

from __future__ import annotations

import math
import time
from collections import Counter

import pytest

from harness.clients import consume_all, produce
from harness.models import build_tiny_model
from harness.probes import metric, scrape
from harness.processes import free_port, start_worker_process, terminate, wait_ready, worker_env
from harness.topics import create_topics

pytestmark = pytest.mark.integration

COUNT = 400
STARTUP_S = 600  # two models to load (on a busy 2-vCPU machine each takes a minute or more)


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    # A larger initializer spread makes the scores depend on the words, so the two seeds disagree on some texts.
    root = tmp_path_factory.mktemp("shadow-models")
    return (build_tiny_model(root / "primary", seed=1, initializer_range=0.3),
            build_tiny_model(root / "shadow", seed=2, initializer_range=0.3))


def shadow_env(bootstrap, topics, primary, shadow, port, **extra):
    shadow_topic = f"shadow-{topics['input']}"
    create_topics(bootstrap, {shadow_topic: 1})
    env = worker_env(bootstrap, topics, primary, WORKER_ENGINE="torch", WORKER_SHADOW_MODEL=str(shadow),
                     WORKER_SHADOW_TOPIC=shadow_topic, WORKER_SHADOW_ENGINE="torch", WORKER_SHADOW_DTYPE="float32",
                     WORKER_METRICS_PORT=str(port), WORKER_BATCH_MAX_MESSAGES="32", **extra)
    return env, shadow_topic


def feed(bootstrap, topic, rows):
    keys = [f"{i}-{doc_id}" for i, (doc_id, _, _) in enumerate(rows)]
    produce(bootstrap, topic, [(k.encode(), doc.encode(), [("trace", k.encode())]) for k, (_, doc, _) in zip(keys, rows)])
    return keys


def scrape_until(port, condition, timeout_s):
    """The worker's metrics once ``condition(samples)`` holds (the last scrape at the timeout)."""
    deadline = time.monotonic() + timeout_s
    while True:
        samples = scrape(port) or {}
        if condition(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.3)


def samples_of(samples, name):
    return {tuple(sorted(labels.items())): value for labels, value in samples.get(name, [])}


def test_shadow_results_are_complete_and_separate_and_the_metrics_equal_the_topics(
        kafka_bootstrap, topics, two_models, nsmc_rows, tmp_path, fault_report):
    primary_dir, shadow_dir = two_models
    port = free_port()
    # Enough room that no window is dropped for the shadow: completeness is what this test checks.
    env, shadow_topic = shadow_env(kafka_bootstrap, topics, primary_dir, shadow_dir, port,
                                   WORKER_SHADOW_MAX_BEHIND_WINDOWS="100")
    keys = feed(kafka_bootstrap, topics["input"], nsmc_rows[:COUNT])
    log = tmp_path / "worker.log"
    process = start_worker_process(env, log)
    try:
        wait_ready(process, port, STARTUP_S, log)
        results = consume_all(kafka_bootstrap, topics["output"], expected=COUNT, timeout_s=180)
        shadows = consume_all(kafka_bootstrap, shadow_topic, expected=COUNT, timeout_s=120)
        dead = consume_all(kafka_bootstrap, topics["dlq"], idle_s=2, timeout_s=10)
        samples = scrape_until(port, lambda s: metric(s, "worker_shadow_compared_total") >= COUNT, 30)
        assert process.poll() is None, log.read_text()
    finally:
        code, _ = terminate(process, 60)
    assert code == 0, log.read_text()[-3000:]

    primary = {r.key.decode(): r for r in results}
    shadow = {r.key.decode(): r for r in shadows}
    assert len(results) == COUNT and set(primary) == set(keys) and dead == [], log.read_text()[-3000:]
    assert len(shadows) == COUNT and set(shadow) == set(keys), "every record once on the shadow topic"
    primary_model = primary[keys[0]].json()["model"]["id"]
    for key in keys:
        p, s = primary[key], shadow[key]
        assert "worker.shadow.of" not in p.headers and p.json()["model"]["id"] == primary_model
        assert s.headers["worker.shadow.of"] == primary_model and s.headers["trace"] == key
        assert s.json()["model"]["id"] != primary_model and s.json()["source"] == p.json()["source"]

    # The comparison, made here from the two topics alone.
    flips: Counter = Counter()
    categories: Counter = Counter()
    diffs = []
    for key in keys:
        p, s = primary[key].json(), shadow[key].json()
        if p["label"] != s["label"]:
            flips[(p["label"], s["label"])] += 1
        diffs.append(abs(p["score"] - s["probabilities"][p["label"]]))
        for category in p["probabilities"]:  # single-label: a model decides for its winner only
            agree = (category == p["label"]) == (category == s["label"])
            categories[(category, "agree" if agree else "disagree")] += 1
    assert 0 < sum(flips.values()) < COUNT, "the two seeds should disagree on some texts, not all"

    assert metric(samples, "worker_shadow_compared_total") == COUNT
    assert samples_of(samples, "worker_shadow_label_flips_total") == {
        (("primary", p), ("shadow", s)): float(n) for (p, s), n in flips.items()}
    assert samples_of(samples, "worker_shadow_category_agreement_total") == {
        (("category", c), ("outcome", o)): float(n) for (c, o), n in categories.items()}
    assert metric(samples, "worker_shadow_diff_score_count") == COUNT
    assert math.isclose(metric(samples, "worker_shadow_diff_score_sum"), sum(diffs), rel_tol=1e-6, abs_tol=1e-6)
    windows = samples_of(samples, "worker_shadow_windows_total")
    assert windows.get((("outcome", "dropped_behind"),), 0) == 0 and windows.get((("outcome", "failed"),), 0) == 0
    assert metric(samples, "worker_shadow_active") == 1
    fault_report("shadow", records=COUNT, flips=sum(flips.values()),
                 windows=int(windows.get((("outcome", "scored"),), 0)))


def test_a_shadow_that_raises_costs_the_primary_no_record(kafka_bootstrap, topics, two_models, nsmc_rows, tmp_path,
                                                           fault_report):
    primary_dir, shadow_dir = two_models
    port = free_port()
    env, shadow_topic = shadow_env(kafka_bootstrap, topics, primary_dir, shadow_dir, port,
                                   WORKER_SHADOW_MAX_FAILURES="3")
    keys = feed(kafka_bootstrap, topics["input"], nsmc_rows[:COUNT])
    log = tmp_path / "worker.log"
    process = start_worker_process(env, log, module="tests.integration.faulty_model", args=["shadow"])
    try:
        wait_ready(process, port, STARTUP_S, log)
        results = consume_all(kafka_bootstrap, topics["output"], expected=COUNT, timeout_s=180)
        samples = scrape_until(port, lambda s: s.get("worker_shadow_disabled_info"), 60)
        assert process.poll() is None, log.read_text()
    finally:
        code, _ = terminate(process, 60)
    assert code == 0, log.read_text()[-3000:]
    shadows = consume_all(kafka_bootstrap, shadow_topic, idle_s=2, timeout_s=10)
    dead = consume_all(kafka_bootstrap, topics["dlq"], idle_s=2, timeout_s=10)

    counts = Counter(r.key.decode() for r in results)
    assert set(counts) == set(keys) and all(n == 1 for n in counts.values()), "every record once, none lost"
    assert shadows == [] and dead == []
    assert metric(samples, "worker_shadow_active") == 0
    failed = samples_of(samples, "worker_shadow_windows_total").get((("outcome", "failed"),), 0)
    assert failed >= 3
    reasons = [labels.get("reason", "") for labels, _ in samples.get("worker_shadow_disabled_info", [])]
    assert reasons and "injected fault" in reasons[0]
    text = log.read_text()
    assert text.count("shadow model switched off") == 1
    fault_report("shadow-raises", records=COUNT, shadow_failed_windows=int(failed))
