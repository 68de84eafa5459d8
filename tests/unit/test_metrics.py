"""Each metric, observed through the loop with a fresh registry; the health endpoints over HTTP."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry

from tests.unit.test_loop import FakeClassifier, finish, make_worker
from worker.endpoints import MetricsServer
from worker.health import Health
from worker.metrics import WorkerMetrics


def sample(registry: CollectorRegistry, name: str, labels: dict | None = None) -> float:
    value = registry.get_sample_value(name, labels or {})
    assert value is not None, f"{name}{labels or ''} not exported"
    return value


@pytest.fixture
def worked():
    values = ["좋다".encode(), "별로다 정말".encode(), b"\xff", None, "최고".encode()]
    worker, fake = make_worker(FakeClassifier(), routes=[{"name": "sure", "topic": "sure", "min_score": 0.5}])
    fake.feed(0, values)
    worker.metrics.model_info.info(FakeClassifier.info)
    finish(worker, fake)
    return worker.metrics.registry


def test_counters(worked):
    assert sample(worked, "worker_messages_consumed_total", {"topic": "in"}) == 5
    assert sample(worked, "worker_results_produced_total", {"topic": "out"}) == 3
    assert sample(worked, "worker_dead_letters_total", {"reason": "invalid_utf8"}) == 1
    assert sample(worked, "worker_dead_letters_total", {"reason": "tombstone"}) == 1
    positive = worked.get_sample_value("worker_predictions_total", {"label": "positive"}) or 0
    negative = worked.get_sample_value("worker_predictions_total", {"label": "negative"}) or 0
    assert positive + negative == 3
    assert sample(worked, "worker_routed_total", {"route": "sure"}) == 3


def test_batch_histograms_and_padding(worked):
    assert sample(worked, "worker_batch_size_messages_count") >= 1
    assert sample(worked, "worker_batch_size_messages_sum") == 3
    assert sample(worked, "worker_batch_size_tokens_sum") == sample(worked, "worker_real_tokens_total")
    real, padded = sample(worked, "worker_real_tokens_total"), sample(worked, "worker_padded_tokens_total")
    assert 0 < real <= padded
    assert 0 < sample(worked, "worker_padding_efficiency_ratio") <= 1


def test_latency_histograms(worked):
    assert sample(worked, "worker_inference_duration_seconds_count") >= 1
    assert sample(worked, "worker_inference_per_message_seconds_count") >= 1
    assert sample(worked, "worker_end_to_end_latency_seconds_count") == 3
    assert sample(worked, "worker_batch_wait_seconds_count") >= 1
    for stage in ("batching", "queued", "inference", "publish"):
        assert sample(worked, "worker_stage_seconds_count", {"stage": stage}) == 5
    assert sample(worked, "worker_stage_seconds_count", {"stage": "delivery"}) == 5
    assert sample(worked, "worker_prediction_score_count") == 3
    assert sample(worked, "worker_prediction_score_bucket", {"le": "0.5"}) == 0  # winners are >= 0.5


def test_gauges_and_info(worked):
    assert sample(worked, "worker_in_flight_messages") == 0
    assert worked.get_sample_value("worker_blocked", {"reason": "access_denied"}) in (None, 0)
    assert sample(worked, "worker_model_info", {"model": "fake", "revision": "0", "device": "cpu", "dtype": "float32"}) == 1


def test_lag_gauge_tracks_partitions():
    m = WorkerMetrics()
    m.set_lag({("in", 0): 5, ("in", 1): 0})
    assert sample(m.registry, "worker_consumer_lag_messages", {"topic": "in", "partition": "0"}) == 5
    m.set_lag({("in", 1): 2})  # partition 0 revoked: its series goes away
    assert m.registry.get_sample_value("worker_consumer_lag_messages", {"topic": "in", "partition": "0"}) is None
    assert sample(m.registry, "worker_consumer_lag_messages", {"topic": "in", "partition": "1"}) == 2


def test_errors_counter_by_kind():
    m = WorkerMetrics()
    m.errors.labels(kind="delivery").inc()
    assert sample(m.registry, "worker_errors_total", {"kind": "delivery"}) == 1


def test_metric_names_follow_conventions():
    m = WorkerMetrics()
    m.model_info.info({"model": "x", "revision": "r", "device": "cpu", "dtype": "float32"})
    for family in m.registry.collect():
        assert family.name.startswith("worker_")
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples)
        if family.type == "histogram":
            assert family.name.endswith(("_seconds", "_messages", "_tokens", "_score"))


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def get(url: str) -> tuple[int, dict | str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body = response.read().decode()
            status = response.status
    except urllib.error.HTTPError as error:
        body, status = error.read().decode(), error.code
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


def test_health_endpoints():
    clock = Clock()
    health = Health(stale_after_s=10, clock=clock)
    metrics = WorkerMetrics()
    server = MetricsServer("127.0.0.1", 0, metrics.registry, health)
    server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        clock.now = 100  # a slow model load is not a dead loop
        assert get(base + "/healthz")[0] == 200
        status, body = get(base + "/readyz")
        assert status == 503 and body["phase"] == "loading"
        health.set_phase("starting")  # joining the group: alive, not ready
        clock.now = 200
        assert get(base + "/healthz")[0] == 200 and get(base + "/readyz")[0] == 503
        health.set_phase("serving")
        assert get(base + "/readyz")[0] == 200
        clock.now = 211  # the loop stopped beating: neither alive nor ready
        status, body = get(base + "/healthz")
        assert status == 503 and body["heartbeat_age_s"] == 11
        assert get(base + "/readyz")[0] == 503
        health.beat()
        assert get(base + "/healthz")[0] == 200
        health.block("access_denied", "SASL authentication failed")
        status, body = get(base + "/readyz")
        assert status == 503 and "SASL authentication failed" in body["reason"]
        health.unblock("access_denied")
        health.set_phase("stopping")
        assert get(base + "/readyz")[0] == 503
        status, text = get(base + "/metrics")
        assert status == 200 and "worker_messages_consumed" in text
        assert get(base + "/nope")[0] == 404
    finally:
        server.stop()


def test_json_logs_mask_nothing_secret(capsys, monkeypatch):
    import logging

    from worker.logs import configure_logging
    from worker.settings import load_settings

    monkeypatch.setenv("WORKER_KAFKA_SASL_PASSWORD", "hunter2")
    configure_logging("json", "INFO")
    logging.getLogger("worker").info("starting", extra={"fields": {"settings": load_settings().masked_dump()}})
    line = capsys.readouterr().err.strip().splitlines()[-1]
    entry = json.loads(line)
    assert entry["message"] == "starting" and entry["level"] == "info"
    assert entry["settings"]["kafka"]["sasl.password"] == "**********"
    assert "hunter2" not in line
    logging.getLogger().handlers.clear()
