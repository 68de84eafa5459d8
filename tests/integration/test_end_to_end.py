"""Issue 2: NSMC texts through the real broker, the worker and back, counted one by one."""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest

from harness.clients import consume_all, produce
from harness.in_process import running_worker, worker_settings
from harness.offsets import committed_and_end_offsets
from harness.probes import wait_for
from harness.processes import start_worker_process, worker_env
from worker.metrics import WorkerMetrics
from worker.engines.base import classify_encoded

pytestmark = pytest.mark.integration


def offline_predictions(classifier, texts):
    """Each text classified alone: the reference the worker's batched results must match."""
    out = {}
    for text in texts:
        encoding = classifier.encode([text])
        probs = classify_encoded(classifier, encoding, 4096).probabilities[0]
        out[text] = dict(zip(classifier.labels, probs))
    return out


def test_2000_texts_in_2000_results_out(kafka_bootstrap, topics, tiny_classifier, tiny_model_dir, nsmc_rows):
    rows = nsmc_rows[:2000]
    produce(kafka_bootstrap, topics["input"], [(doc_id.encode(), doc.encode()) for doc_id, doc, _ in rows],
            headers=[("trace", b"t-1")])
    settings = worker_settings(kafka_bootstrap, topics, tiny_model_dir, batch_max_messages=256)
    metrics = WorkerMetrics()
    with running_worker(settings, tiny_classifier, metrics):
        results = consume_all(kafka_bootstrap, topics["output"], expected=2000, timeout_s=180)

    by_key = {}
    for record in results:
        key = record.key.decode()
        assert key not in by_key, f"duplicate result for key {key}"
        by_key[key] = record
    assert len(results) == 2000
    assert set(by_key) == {doc_id for doc_id, _, _ in rows}

    reference = offline_predictions(tiny_classifier, [doc for _, doc, _ in rows])
    texts = {doc_id: doc for doc_id, doc, _ in rows}
    for key, record in by_key.items():
        value = record.json()
        assert value["input"] == texts[key]
        assert record.headers["trace"] == "t-1"
        expected = reference[texts[key]]
        assert value["label"] == max(expected, key=expected.get)
        for label, p in expected.items():
            assert value["probabilities"][label] == pytest.approx(p, abs=1e-4)
        assert value["score"] == pytest.approx(max(expected.values()), abs=1e-4)
        assert value["source"]["topic"] == topics["input"]
        assert value["model"]["id"] == str(tiny_model_dir)
        assert value["latency_ms"] is not None and value["latency_ms"] >= 0

    committed, end = committed_and_end_offsets(kafka_bootstrap, settings.group_id, topics["input"])
    assert committed == end, "every input offset is committed after a clean stop"
    assert metrics.consumed.labels(topic=topics["input"])._value.get() == 2000
    assert metrics.produced.labels(topic=topics["output"])._value.get() == 2000

    # A restart in the clean path finds nothing to do.
    with running_worker(settings, tiny_classifier, WorkerMetrics()) as worker:
        wait_for(lambda: worker.health.partitions == 3, 30, message="partitions assigned")
        time.sleep(3)
    assert len(consume_all(kafka_bootstrap, topics["output"], idle_s=3)) == 2000


def test_json_input_keeps_original_object(kafka_bootstrap, topics, tiny_classifier, tiny_model_dir):
    values = [{"id": i, "comment": {"body": f"정말 좋은 영화 {i}", "user": "u"}} for i in range(20)]
    produce(kafka_bootstrap, topics["input"], [(str(i).encode(), json.dumps(v).encode()) for i, v in enumerate(values)])
    settings = worker_settings(kafka_bootstrap, topics, tiny_model_dir, input_format="json", text_field="comment.body")
    with running_worker(settings, tiny_classifier):
        results = consume_all(kafka_bootstrap, topics["output"], expected=20, timeout_s=60)
    assert sorted(r.json()["input"]["id"] for r in results) == list(range(20))
    assert all(r.json()["input"]["comment"]["user"] == "u" for r in results)


def test_worker_cli_with_kcat_producer_commits_and_restarts_clean(
    kafka_bootstrap, topics, tiny_model_dir, nsmc_rows, tmp_path
):
    kcat = shutil.which("kcat")
    assert kcat, "kcat (Debian package kcat) is required; the test set-up installs it"
    rows = nsmc_rows[:300]
    lines = "".join(f"{doc_id}\t{doc}\n" for doc_id, doc, _ in rows)
    subprocess.run(
        [kcat, "-b", kafka_bootstrap, "-t", topics["input"], "-P", "-K", "\t"],
        input=lines.encode(), check=True, timeout=60,
    )
    env = worker_env(kafka_bootstrap, topics, tiny_model_dir)
    log = tmp_path / "worker.log"

    process = start_worker_process(env, log)
    try:
        wait_for(lambda: len(consume_all(kafka_bootstrap, topics["output"], idle_s=1, timeout_s=5)) >= 300, 180,
                 interval_s=1, message="300 results")
    finally:
        process.terminate()
        assert process.wait(60) == 0, log.read_text()

    out = subprocess.run(
        [kcat, "-b", kafka_bootstrap, "-t", topics["output"], "-C", "-e", "-q", "-f", "%k\t%s\n"],
        capture_output=True, check=True, timeout=60,
    ).stdout.decode()
    keys = [line.split("\t", 1)[0] for line in out.splitlines() if line]
    assert sorted(keys) == sorted(doc_id for doc_id, _, _ in rows)
    committed, end = committed_and_end_offsets(kafka_bootstrap, env["WORKER_GROUP_ID"], topics["input"])
    assert committed == end

    process = start_worker_process(env, log)
    try:
        time.sleep(8)
    finally:
        process.terminate()
        assert process.wait(60) == 0, log.read_text()
    assert len(consume_all(kafka_bootstrap, topics["output"], idle_s=2)) == 300, "restart reprocessed records"
