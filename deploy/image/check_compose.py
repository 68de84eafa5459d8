"""The compose stack end to end with the images built here: deploy/image/run.sh runs this (docs/container.md).

docker-compose.yml with docker-compose.local.yml over it: kafka (healthy), kafka-init (topics created,
exit 0), the worker (ready, HEALTHCHECK healthy), Prometheus (scrapes the worker, its alert rules
loaded, `promtool test rules` passes), then the demo producer streams tests/data/nsmc_sample.tsv.
The host worker reads the same input topic in a consumer group of its own, with the engine and
precision the container's worker chose, and the two result streams are compared record by record.
Finally `docker-compose stop` on the worker: a clean drain (exit 0) inside stop_grace_period.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from check_worker import Kafka, compare, finish, free_port, wait_http, worker_env  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
BOOTSTRAP = "127.0.0.1:29092"  # the compose Kafka's HOST listener
WORKER_PORT, PROMETHEUS_PORT = 29180, 29190
GRACE_PERIOD_S = 45


def log(message: str) -> None:
    print(f"[check_compose {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def prometheus(query: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{PROMETHEUS_PORT}/api/v1/query?query={urllib.parse.quote(query)}"
    return get_json(url)["data"]["result"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docker", default="docker")
    parser.add_argument("--compose", default="docker-compose")
    parser.add_argument("-p", dest="project", required=True)
    parser.add_argument("-f", dest="files", action="append", required=True)
    parser.add_argument("--records", type=int, default=2000, help="unused: the demo producer streams its whole file")
    parser.add_argument("--model", required=True)
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument("--logs", type=Path, required=True)
    args = parser.parse_args()
    # WORKER_DTYPE (a variable docker-compose.yml reads): float32 measures 3 engines at start-up instead
    # of 7 (check_worker.py already timed the full measurement), and the comparison with the host then
    # holds to float32 rounding whatever engine wins.
    env = {**os.environ, "RATE": "0", "LOOPS": "1", "WORKER_DTYPE": os.environ.get("WORKER_DTYPE", "float32")}

    # docker-compose.local.yml cannot remove the real file's `ports` (Compose 1.x merges lists, and
    # its client refuses published ports on the host network, where they mean nothing anyway): the
    # merged configuration is written out without them and run as one file.
    merged = subprocess.run([args.compose, "-p", args.project, *(x for f in args.files for x in ("-f", f)), "config"],
                            capture_output=True, text=True, timeout=120, env=env, cwd=ROOT, check=True).stdout
    config = yaml.safe_load(merged)
    for service in config["services"].values():
        if service.get("network_mode") == "host":
            service.pop("ports", None)
    args.logs.mkdir(parents=True, exist_ok=True)
    merged_file = args.logs / "docker-compose.merged.yml"
    merged_file.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    base = [args.compose, "-p", args.project, "-f", str(merged_file)]

    def compose(*more: str, timeout: float = 600, check: bool = True) -> str:
        result = subprocess.run([*base, *more], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
        if check and result.returncode:
            raise RuntimeError(f"docker-compose {' '.join(more)} failed:\n{result.stderr[-2000:]}")
        return result.stdout + result.stderr

    def docker(*more: str) -> str:
        return subprocess.run([args.docker, *more], capture_output=True, text=True, timeout=120).stdout.strip()

    def container(service: str) -> str:
        return compose("ps", "-q", service).strip().splitlines()[0]

    def state(service: str) -> dict[str, Any]:
        return json.loads(docker("inspect", "-f", "{{json .State}}", container(service)))

    report: dict[str, Any] = {}
    failures: list[str] = []
    started = time.monotonic()
    log("docker-compose up -d --no-build (kafka, kafka-init, worker, prometheus; grafana has no image here)")
    compose("up", "-d", "--no-build", timeout=900)
    report["up_s"] = round(time.monotonic() - started, 1)
    init = state("kafka-init")
    report["kafka_init"] = {"exit_code": init["ExitCode"], "log": compose("logs", "--no-color", "kafka-init")[-300:]}
    topics = sorted(t for t in Kafka(BOOTSTRAP).admin.list_topics(timeout=10).topics if not t.startswith("__"))
    report["topics"] = topics
    ready = wait_http(WORKER_PORT, "/readyz", 900)
    report["worker_ready_s"] = ready and round(time.monotonic() - started, 1)
    log(f"worker ready {report['worker_ready_s']} s after `up`; topics {topics}")
    if init["ExitCode"] != 0 or not {"comments", "comments-classified", "comments-dlq"} <= set(topics):
        failures.append("kafka-init did not create the topics")

    # The host worker: same input, its own group and output topic, the engine the container chose.
    worker_logs = compose("logs", "--no-color", "worker")
    chosen = next((json.loads(line.split("|", 1)[1]) for line in worker_logs.splitlines()
                   if '"model ready"' in line and "|" in line), {})
    fields = chosen.get("fields", chosen)
    engine, dtype = fields.get("engine", "onnxruntime"), fields.get("dtype", "float32")
    report["container_engine"] = {k: fields.get(k) for k in ("engine", "dtype", "threads") if k in fields}
    kafka = Kafka(BOOTSTRAP)
    kafka.create(("comments-classified-host", 6), ("comments-dlq-host", 1))
    host_port = free_port()
    host_env = {**os.environ, **worker_env(BOOTSTRAP, "comments", "compose-check-host", host_port),
                "WORKER_OUTPUT_TOPIC": "comments-classified-host", "WORKER_DLQ_TOPIC": "comments-dlq-host",
                "WORKER_MODEL": args.model, "WORKER_ENGINE": engine, "WORKER_DTYPE": dtype,
                "WORKER_ENGINE_CACHE_DIR": str(args.logs / "host-engines")}
    with (args.logs / "compose-host-worker.log").open("w") as host_log:
        host = subprocess.Popen([sys.executable, "-m", "worker.cli", "run"], env=host_env, stdout=host_log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(host_port, "/readyz", 600, alive=lambda: host.poll() is None)
        log("demo producer: tests/data/nsmc_sample.tsv, unthrottled, one pass")
        produced = time.monotonic()
        # `run` returns with the producer's exit status (`up producer` would stay attached to the stack).
        output = compose("--profile", "demo", "run", "--rm", "--no-deps", "producer", timeout=900)
        (args.logs / "compose-producer.log").write_text(output, encoding="utf-8")
        report["producer"] = {"exit_code": 0, "s": round(time.monotonic() - produced, 1), "last_line": output.strip().splitlines()[-1:]}
        expected = sum(1 for _ in (ROOT / "tests" / "data" / "nsmc_sample.tsv").open(encoding="utf-8")) - 1
        container_results = kafka.collect("comments-classified", expected, 600)
        report["stream_s"] = round(time.monotonic() - produced, 1)
        host_results = kafka.collect("comments-classified-host", expected, 600)
    finally:
        host.send_signal(signal.SIGTERM)
        host.wait(90)
    report["compare"] = {"expected": expected, "container": len(container_results), "host": len(host_results),
                         **compare(host_results, container_results)}
    log(f"compose worker vs host worker: {report['compare']}")
    if report["compare"]["compared"] != expected or report["compare"]["labels_differ"] or not report["compare"]["within_tolerance"]:
        failures.append("the compose worker's results differ from the host worker's")

    # Prometheus: the worker scraped, the rules loaded, the rules' unit tests pass in its own promtool.
    time.sleep(6)
    targets = get_json(f"http://127.0.0.1:{PROMETHEUS_PORT}/api/v1/targets")["data"]["activeTargets"]
    rules = get_json(f"http://127.0.0.1:{PROMETHEUS_PORT}/api/v1/rules")["data"]["groups"]
    consumed = prometheus('sum(worker_messages_consumed_total{job="koelectra-worker"})')
    promtool = subprocess.run(
        # The tests name alerts.yml relative to themselves: mount the folder that holds both.
        [args.docker, "run", "--rm", "--network=none", "--entrypoint", "promtool", "-v",
         f"{ROOT / 'deploy/prometheus'}:/tests:ro", os.environ["PROMETHEUS_IMAGE"], "test", "rules", "/tests/alerts_test.yml"],
        capture_output=True, text=True, timeout=120)
    report["prometheus"] = {
        "targets": {t["labels"]["job"]: t["health"] for t in targets},
        "rule_groups": [g["name"] for g in rules], "rules": sum(len(g["rules"]) for g in rules),
        "worker_messages_consumed_total": consumed[0]["value"][1] if consumed else None,
        "promtool_test_rules": promtool.returncode,
        "version": docker("run", "--rm", "--network=none", "--entrypoint", "prometheus",
                          os.environ["PROMETHEUS_IMAGE"], "--version").splitlines()[0] if True else None,
    }
    log(f"prometheus: {report['prometheus']}")
    if report["prometheus"]["targets"].get("koelectra-worker") != "up" or not rules:
        failures.append("Prometheus does not scrape the worker or has no rules")
    if promtool.returncode:
        (args.logs / "promtool.log").write_text(promtool.stdout + promtool.stderr, encoding="utf-8")
        failures.append("promtool test rules failed in the Prometheus image")

    health = state("worker").get("Health", {}).get("Status")
    stop_started = time.monotonic()
    compose("stop", "-t", str(GRACE_PERIOD_S), "worker", timeout=GRACE_PERIOD_S + 60)
    worker_state = state("worker")
    report["worker"] = {"health": health, "stop_s": round(time.monotonic() - stop_started, 1),
                        "exit_code": worker_state["ExitCode"]}
    log(f"worker: {report['worker']}")
    if health != "healthy" or worker_state["ExitCode"] != 0:
        failures.append(f"worker health {health}, exit {worker_state['ExitCode']}")
    for service in ("kafka", "kafka-init", "worker", "prometheus"):
        (args.logs / f"compose-{service}.log").write_text(compose("logs", "--no-color", service, check=False), encoding="utf-8")
    compose("--profile", "demo", "down", "-v", "--remove-orphans", timeout=300, check=False)

    return finish(report, failures, args.results)


if __name__ == "__main__":
    sys.exit(main())
