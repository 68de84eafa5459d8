"""Issue 11: the worker with each installed engine against the real broker, its results compared with float32 torch.

What this proves: the worker's results through Kafka, with engine X, are the float32 torch model's
(to 1e-4 for float32 engines, within the measured tolerance of reduced precision, see
tests/unit/test_engines.py), on a random model whose scores really depend on the text
(``initializer_range=0.2``). And that ``WORKER_ENGINE=auto`` started as a real process refuses
reduced precision where it changes the labels: on a model made sensitive on purpose
(``initializer_range=0.5``; bfloat16 and int8 change 2-6 % of its labels) every result equals
float32 torch, and /metrics names the candidates that failed the check.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.clients import consume_all, produce
from harness.in_process import running_worker, worker_settings
from harness.models import build_tiny_model
from harness.probes import http_get, wait_for
from harness.processes import free_port, start_worker_process, terminate, worker_env
from worker.engines.base import classify_encoded
from worker.engines.loading import load_classifier
from worker.engines.registry import ENGINES, unavailable
from worker.engines.selection import Candidate
from worker.engines.torch_engine import HFClassifier
from worker.metrics import WorkerMetrics

pytestmark = pytest.mark.integration

TOLERANCE = {"float32": 1e-4, "bfloat16": 0.02, "int8": 0.1}  # measured: tests/unit/test_engines.py
INSTALLED = [
    Candidate(engine, precision)
    for engine in ("torch", "onnxruntime", "openvino")
    for precision in ENGINES[engine].supported
    if precision != "float16" and unavailable(Candidate(engine, precision)) is None
]


@pytest.fixture(scope="module")
def spread_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("engines-spread"), initializer_range=0.2)


@pytest.fixture(scope="module")
def sensitive_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("engines-sensitive"), initializer_range=0.5)


def torch_reference(model_dir: Path, texts: list[str]) -> dict[str, list[float]]:
    reference = HFClassifier.load(str(model_dir), device="cpu", dtype="float32", threads=2, compile="off")
    probabilities = classify_encoded(reference, reference.encode(texts), 4096).probabilities
    return dict(zip(texts, probabilities))


def results_by_key(bootstrap: str, topic: str, expected: int) -> dict[str, dict]:
    records = consume_all(bootstrap, topic, expected=expected, timeout_s=180)
    by_key = {record.key.decode(): record.json() for record in records}
    assert len(records) == len(by_key) == expected, "one result per input, no duplicates"
    return by_key


def test_every_installed_engine_is_tested():
    # CI installs the `test` extra, which brings every engine: none may be left out silently.
    assert {c.engine for c in INSTALLED} == {"torch", "onnxruntime", "openvino"}
    assert len(INSTALLED) == 7


@pytest.mark.parametrize("candidate", INSTALLED, ids=str)
def test_worker_with_engine_gives_the_torch_results(candidate, kafka_bootstrap, topics, spread_model, nsmc_rows,
                                                   engine_cache_dir):
    rows = nsmc_rows[:300]
    texts = {doc_id: doc for doc_id, doc, _ in rows}
    produce(kafka_bootstrap, topics["input"], [(doc_id.encode(), doc.encode()) for doc_id, doc, _ in rows])
    settings = worker_settings(kafka_bootstrap, topics, spread_model, engine=candidate.engine,
                               dtype=candidate.precision, engine_cache_dir=str(engine_cache_dir), batch_max_messages=64)
    classifier = load_classifier(settings)
    classifier.warm_up()
    assert (classifier.info["engine"], classifier.info["precision"]) == (candidate.engine, candidate.precision)
    with running_worker(settings, classifier, WorkerMetrics()):
        results = results_by_key(kafka_bootstrap, topics["output"], len(rows))

    reference = torch_reference(spread_model, list(texts.values()))
    tolerance = TOLERANCE[candidate.precision]
    for key, value in results.items():
        want = reference[texts[key]]
        assert [value["probabilities"][label] for label in ("negative", "positive")] == pytest.approx(want, abs=tolerance)
        if abs(want[1] - 0.5) > tolerance:
            assert value["label"] == ("positive" if want[1] > 0.5 else "negative")


def test_auto_started_as_a_process_keeps_float32_where_reduced_precision_changes_labels(
    kafka_bootstrap, topics, sensitive_model, nsmc_rows, engine_cache_dir, tmp_path
):
    rows = nsmc_rows[:200]
    texts = {doc_id: doc for doc_id, doc, _ in rows}
    produce(kafka_bootstrap, topics["input"], [(doc_id.encode(), doc.encode()) for doc_id, doc, _ in rows])
    port = free_port()
    env = worker_env(kafka_bootstrap, topics, sensitive_model, WORKER_ENGINE="auto", WORKER_DTYPE="auto",
                     WORKER_ENGINE_CACHE_DIR=str(engine_cache_dir), WORKER_METRICS_PORT=str(port),
                     WORKER_METRICS_HOST="127.0.0.1")
    log_path = tmp_path / "worker.log"
    process = start_worker_process(env, log_path)
    try:
        results = results_by_key(kafka_bootstrap, topics["output"], len(rows))
        wait_for(lambda: "worker_engine_candidate" in metrics_text(port), 30, message="engine metrics")
        metrics = metrics_text(port)
    finally:
        terminate(process, 60)  # a worker that will not stop is killed, then reported
    assert process.returncode == 0, log_path.read_text()[-3000:]

    reference = torch_reference(sensitive_model, list(texts.values()))
    for key, value in results.items():
        want = reference[texts[key]]
        assert [value["probabilities"][label] for label in ("negative", "positive")] == pytest.approx(want, abs=1e-4)
    info = next(line for line in metrics.splitlines() if line.startswith("worker_model_info{"))
    assert 'precision="float32"' in info and 'selection="measured"' in info
    rejected = [line for line in metrics.splitlines()
                if line.startswith("worker_engine_candidate_texts_per_second{") and 'qualified="false"' in line]
    rejected_precisions = {p for line in rejected for p in ("bfloat16", "int8") if f'precision="{p}"' in line}
    assert rejected_precisions == {"bfloat16", "int8"}, metrics
    log_text = log_path.read_text()
    assert "engine chosen:" in log_text and "| candidate |" in log_text


def metrics_text(port: int) -> str:
    status, body = http_get(f"http://127.0.0.1:{port}/metrics", timeout_s=5)
    return body if status == 200 else ""
