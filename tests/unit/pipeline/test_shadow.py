"""The shadow model (issue 16 part 3) against the fake Kafka port: its results are separate, it is dropped
when behind, switched off after failures, and whatever it does costs the primary nothing."""

from __future__ import annotations

import json
import threading
import time

import pytest

from tests.unit.test_loop import FakeClassifier, drive, make_worker, settled
from worker.errors import ConfigError
from worker.metrics import WorkerMetrics
from worker.pipeline.shadow import SHADOW_OF_HEADER, compare
from worker.settings import Settings, load_settings
from worker.wire.rules import rules_from
from worker.wire.types import Prediction

SHADOW_TOPIC = "shadow"


class ShadowClassifier(FakeClassifier):
    """Disagrees with FakeClassifier on texts of odd length; can raise or wait for a gate."""

    info = {"model": "shadow-model", "revision": "1", "device": "cpu", "dtype": "float32"}

    def __init__(self, raises: bool = False, gate: threading.Event | None = None):
        super().__init__(gate=gate)
        self.raises = raises

    def predict(self, batch):
        self.calls += 1
        if self.gate is not None:
            self.gate.wait(10)
        if self.raises:
            raise RuntimeError("injected: the shadow model fails")
        return [[0.6, 0.4] if len(ids) % 2 else [0.8, 0.2] for ids in batch]


def shadow_worker(shadow, **overrides):
    """make_worker's worker, with a shadow model."""
    values = dict(input_topic="in", shadow_model="shadow-model", shadow_topic=SHADOW_TOPIC, batch_max_messages=5)
    values.update(overrides)
    return make_worker(shadow=shadow, **values)


def sample(worker, name, **labels):
    return worker.metrics.registry.get_sample_value(name, labels) or 0.0


def feed_texts(fake, count, partition=0):
    fake.feed(partition, [("글" * (1 + i % 3) + str(i)).encode() for i in range(count)])


def test_shadow_results_go_to_the_shadow_topic_only_and_agreement_counts_every_record():
    worker, fake = shadow_worker(ShadowClassifier(), routes=[{"name": "all", "topic": "flagged", "min_score": 0.0}],
                                 shadow_max_behind_windows=10)
    feed_texts(fake, 23)
    drive(worker, fake, seconds=30, until=lambda: settled(worker, fake) and len(fake.visible(SHADOW_TOPIC)) == 23)
    assert worker.shutdown()

    primary = {w.key: json.loads(w.value) for w in fake.visible("out")}
    shadow = {w.key: w for w in fake.visible(SHADOW_TOPIC)}
    assert set(primary) == set(shadow) and len(primary) == 23
    assert len(fake.visible("flagged")) == 23  # routes hold the primary's results only
    assert all(SHADOW_OF_HEADER not in dict(w.headers) for w in fake.visible("out") + fake.visible("flagged"))
    flips = 0
    for key, record in shadow.items():
        value = json.loads(record.value)
        headers = dict(record.headers)
        assert headers[SHADOW_OF_HEADER] == b"fake" and headers["h"] == b"v"  # the input's headers, as the primary's
        assert value["model"]["id"] == "shadow-model" and primary[key]["model"]["id"] == "fake"
        assert value["source"] == primary[key]["source"]
        flips += value["label"] != primary[key]["label"]
    # independent comparison of the two topics = the metrics
    assert 0 < flips < 23
    assert sample(worker, "worker_shadow_compared_total") == 23
    assert sum(sample(worker, "worker_shadow_label_flips_total", primary=p, shadow=s)
               for p in ("negative", "positive") for s in ("negative", "positive")) == flips
    assert sample(worker, "worker_shadow_category_agreement_total", category="positive", outcome="disagree") == flips
    assert sample(worker, "worker_shadow_windows_total", outcome="scored") >= 5
    assert sample(worker, "worker_shadow_active") == 1


def test_a_shadow_that_raises_is_switched_off_and_costs_the_primary_nothing():
    worker, fake = shadow_worker(ShadowClassifier(raises=True), shadow_max_failures=3)
    worker.start()
    rounds = 0
    while worker.shadow.active and rounds < 50:  # a stream that goes on: window after window
        feed_texts(fake, 5)
        drive(worker, fake, seconds=30)
        time.sleep(0.01)
        rounds += 1
    assert not worker.shadow.active
    drive(worker, fake)
    total = 5 * rounds
    assert worker.shutdown()
    assert len(fake.visible("out")) == total and fake.committed.get(("in", 0)) == total
    assert fake.visible(SHADOW_TOPIC) == [] and fake.visible("dlq") == []
    # then off: nothing more offered (a window already on the thread may still fail)
    assert 3 <= sample(worker, "worker_shadow_windows_total", outcome="failed") <= 4
    assert sample(worker, "worker_shadow_active") == 0
    assert "injected: the shadow model fails" in sample_info(worker)
    assert "3 windows in a row failed" in worker.shadow.reason


def sample_info(worker):
    for metric in worker.metrics.registry.collect():
        if metric.name == "worker_shadow_disabled":
            return " ".join(s.labels.get("reason", "") for s in metric.samples)
    return ""


def test_a_shadow_that_falls_behind_is_dropped_for_those_windows_and_the_primary_goes_on():
    gate = threading.Event()
    worker, fake = shadow_worker(ShadowClassifier(gate=gate))
    feed_texts(fake, 40)  # 8 windows; the shadow holds the first one until the gate opens
    drive(worker, fake)
    assert len(fake.visible("out")) == 40  # while the shadow is held up
    dropped = sample(worker, "worker_shadow_windows_total", outcome="dropped_behind")
    assert dropped >= 8 - 3  # one on the thread, two queued
    gate.set()
    drive(worker, fake, seconds=30, until=lambda: sample(worker, "worker_shadow_windows_total", outcome="scored") == 8 - dropped)
    assert worker.shadow.active
    assert worker.shutdown()
    assert len(fake.visible(SHADOW_TOPIC)) == 5 * (8 - dropped)


def test_a_stuck_shadow_is_switched_off_after_its_window_timeout():
    gate = threading.Event()
    worker, fake = shadow_worker(ShadowClassifier(gate=gate), shadow_window_timeout_s=0.2)
    worker.start()
    deadline = time.monotonic() + 5
    while worker.shadow.active and time.monotonic() < deadline:
        feed_texts(fake, 5)
        drive(worker, fake)
        time.sleep(0.05)
    gate.set()
    assert not worker.shadow.active and "took more than 0.2 s" in worker.shadow.reason
    total = sum(len(records) for records in fake.input.values())
    assert worker.shutdown()
    assert len(fake.visible("out")) == total


def test_exactly_once_shadow_results_are_committed_and_the_primary_stays_exactly_once():
    worker, fake = shadow_worker(ShadowClassifier(), delivery="exactly_once", shadow_max_behind_windows=10)
    feed_texts(fake, 17)
    drive(worker, fake, seconds=30, until=lambda: settled(worker, fake) and len(fake.visible(SHADOW_TOPIC)) == 17)
    assert worker.shutdown()
    assert len(fake.visible("out")) == 17 and fake.committed[("in", 0)] == 17


def test_a_refused_shadow_result_is_dropped_and_counted_never_dead_lettered():
    from tests.fakes.kafka_io import TOO_LARGE

    worker, fake = shadow_worker(ShadowClassifier(), shadow_max_behind_windows=10)
    fake.fail_delivery = lambda message: TOO_LARGE if message.topic == SHADOW_TOPIC else None
    feed_texts(fake, 12)
    drive(worker, fake, seconds=30, until=lambda: settled(worker, fake)
          and sample(worker, "worker_shadow_records_total", outcome="refused") == 12)
    assert worker.shutdown()
    assert len(fake.visible("out")) == 12 and fake.visible("dlq") == [] and fake.committed[("in", 0)] == 12


def prediction(probabilities, multi_label=False):
    label = max(probabilities, key=probabilities.get)
    return Prediction(label, probabilities[label], probabilities, False, 3, multi_label=multi_label)


def test_compare_uses_the_rules_thresholds_for_multi_label_and_the_winner_for_single_label():
    rules = rules_from([], {"spam": 0.9})
    primary = prediction({"hate": 0.7, "spam": 0.8, "insult": 0.1}, multi_label=True)
    shadow = prediction({"hate": 0.4, "spam": 0.95, "insult": 0.6}, multi_label=True)
    c = compare(primary, shadow, rules)
    assert (c.primary_label, c.shadow_label, c.flipped) == ("spam", "spam", False)
    assert c.score_diff == pytest.approx(0.15)
    assert c.categories == {"hate": False, "spam": False, "insult": False}
    single = compare(prediction({"negative": 0.3, "positive": 0.7}), prediction({"negative": 0.6, "positive": 0.4}), rules)
    assert single.flipped and single.score_diff == pytest.approx(0.3)
    assert single.categories == {"negative": False, "positive": False}


@pytest.mark.parametrize("values, message", [
    ({"shadow_model": "m"}, "WORKER_SHADOW_TOPIC is required"),
    ({"shadow_topic": "s"}, "WORKER_SHADOW_MODEL is not"),
    ({"shadow_model": "m", "shadow_topic": "comments-classified"}, "must differ"),
])
def test_shadow_settings_are_checked(values, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(**values)


def test_a_shadow_model_that_cannot_load_is_switched_off_and_the_primary_serves(monkeypatch, caplog):
    import worker.cli

    def fails(settings):
        raise OSError("no such model directory")

    monkeypatch.setattr(worker.cli, "load_shadow_classifier", fails)
    metrics = WorkerMetrics()
    settings = Settings(shadow_model="/nowhere", shadow_topic="shadow", metrics_port=0)
    assert worker.cli.shadow_classifier(settings, metrics) is None
    assert metrics.registry.get_sample_value("worker_shadow_disabled_info", {"reason": "could not load /nowhere: "
                                             "OSError: no such model directory"}) == 1
    assert [r.message for r in caplog.records if "switched off" in r.message]
    assert worker.cli.shadow_classifier(Settings(metrics_port=0), metrics) is None  # no shadow model: nothing to load
