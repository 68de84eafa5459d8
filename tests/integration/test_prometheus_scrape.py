"""Issue 4: a real Prometheus server scrapes a running worker while messages flow."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request

import pytest

from harness.clients import produce
from harness.in_process import running_worker, worker_settings
from harness.probes import wait_for
from harness.processes import free_port
from worker.endpoints import MetricsServer
from worker.health import Health
from worker.metrics import WorkerMetrics

pytestmark = pytest.mark.integration


def query(prometheus: str, expr: str) -> float | None:
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as response:
        data = json.loads(response.read())
    assert data["status"] == "success", data
    result = data["data"]["result"]
    if not result:
        return None
    return sum(float(series["value"][1]) for series in result)


def test_prometheus_scrapes_rates_and_latency(kafka_bootstrap, topics, tiny_classifier, tiny_model_dir, nsmc_rows,
                                              tmp_path, fault_report):
    binary = shutil.which("prometheus")
    assert binary, "prometheus (Debian package prometheus) is required; the test set-up installs it"
    metrics, health = WorkerMetrics(), Health()
    health.set_phase("serving")
    server = MetricsServer("127.0.0.1", 0, metrics.registry, health)
    server.start()
    prom_port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: koelectra-worker\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{server.port}']\n"
    )
    prometheus = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{prom_port}"],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "wb"),
    )
    base = f"http://127.0.0.1:{prom_port}"
    stop_feeding = threading.Event()

    def feed() -> None:
        i = 0
        while not stop_feeding.is_set():
            batch = nsmc_rows[(i * 20) % 2000:(i * 20) % 2000 + 20]
            produce(kafka_bootstrap, topics["input"], [(d.encode(), doc.encode()) for d, doc, _ in batch])
            i += 1
            time.sleep(0.2)

    feeder = threading.Thread(target=feed, daemon=True)
    try:
        wait_for(lambda: _ready(base), 60, message="prometheus ready")
        settings = worker_settings(kafka_bootstrap, topics, tiny_model_dir, statistics_interval_ms=1000)
        with running_worker(settings, tiny_classifier, metrics):
            feeder.start()
            found: dict[str, float | None] = {}

            def all_nonzero() -> bool:
                found["consumed"] = query(base, "sum(rate(worker_messages_consumed_total[10s]))")
                found["produced"] = query(base, "sum(rate(worker_results_produced_total[10s]))")
                found["p99"] = query(
                    base, "histogram_quantile(0.99, sum by (le) (rate(worker_end_to_end_latency_seconds_bucket[10s])))")
                found["up"] = query(base, 'up{job="koelectra-worker"}')
                return all(v and v > 0 for v in found.values())

            wait_for(all_nonzero, 90, interval_s=1, message=f"non-zero rates from Prometheus (last: {found})")
            stop_feeding.set()
            feeder.join(10)
        fault_report("prometheus-scrape", **{k: round(v or 0, 4) for k, v in found.items()})
    finally:
        stop_feeding.set()
        prometheus.terminate()
        prometheus.wait(30)
        server.stop()


def _ready(base: str) -> bool:
    try:
        with urllib.request.urlopen(base + "/-/ready", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False
