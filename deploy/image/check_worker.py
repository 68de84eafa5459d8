"""The worker image against a real broker on the host: deploy/image/run.sh runs this (docs/container.md).

1. A stream of NSMC reviews is classified twice: by the host worker (`worker run`, this checkout) and by
   the container (read-only root filesystem, unprivileged user, no capabilities, tmpfs for /tmp and
   /models, host network for the broker only, HF_HUB_OFFLINE=1, the model baked in at /opt/model),
   both with the same engine and precision. Labels must be equal and probabilities within PROB_TOLERANCE.
2. The container with the image's defaults (WORKER_ENGINE=auto: every engine measured at start-up):
   start-up time, HEALTHCHECK turning healthy, peak memory, then `docker stop` in the middle of a
   stream: the drain's duration and exit code (0 expected, inside the 45 s grace period).
3. The container with --network=none: the model loads and warms up without any network at all.

Prints one JSON document (also written to --results) with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from harness.processes import free_port
from worker.datasets import read_nsmc_rows

# Same engine, precision, library versions and CPU on both sides: what can still differ is the batch
# composition (how many reviews share a window, hence the padded length), which changes the order of
# float32 reductions. That moves a probability by a few float32 ulps per layer, ~1e-6 in practice; 1e-4
# leaves two orders of margin and is still far below anything that changes a label (a label flips only
# where both probabilities are within 1e-4 of 0.5, which the check reports separately).
PROB_TOLERANCE = 1e-4
GRACE_PERIOD_S = 45  # docker-compose.yml stop_grace_period and the Deployment's terminationGracePeriodSeconds
COMPARE_ENV = {"WORKER_ENGINE": "onnxruntime", "WORKER_DTYPE": "float32"}


def log(message: str) -> None:
    print(f"[check_worker {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def read_reviews(path: Path, count: int, skip: int = 0) -> list[dict[str, Any]]:
    """``count`` reviews of an NSMC-format TSV after the first ``skip``, as the JSON values the checks produce."""
    rows = read_nsmc_rows(path, limit=skip + count)[skip:]
    return [{"id": review_id, "text": text, "label": label} for review_id, text, label in rows]


class Kafka:
    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.admin = AdminClient({"bootstrap.servers": bootstrap})

    def create(self, *topics: tuple[str, int]) -> None:
        futures = self.admin.create_topics([NewTopic(name, partitions, 1) for name, partitions in topics])
        for name, future in futures.items():
            try:
                future.result(30)
            except Exception as exc:  # an existing topic is fine: the names are unique per run anyway
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise

    def produce(self, topic: str, reviews: list[dict[str, Any]]) -> None:
        producer = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 20})
        for review in reviews:
            producer.produce(topic, key=review["id"].encode(), value=json.dumps(review, ensure_ascii=False).encode())
            producer.poll(0)
        assert producer.flush(60) == 0, "the producer could not deliver every review"

    def collect(self, topic: str, count: int, timeout_s: float) -> dict[str, dict[str, Any]]:
        """Result records by input key, until `count` distinct keys or the timeout."""
        consumer = Consumer({
            "bootstrap.servers": self.bootstrap, "group.id": f"check-{topic}-{time.time_ns()}",
            "auto.offset.reset": "earliest", "enable.auto.commit": False,
        })
        consumer.subscribe([topic])
        found: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout_s
        try:
            while len(found) < count and time.monotonic() < deadline:
                message = consumer.poll(1.0)
                if message is None or message.error():
                    continue
                found[message.key().decode()] = json.loads(message.value())
        finally:
            consumer.close()
        return found

    def committed(self, group: str, topic: str) -> int:
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": group})
        try:
            partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
            offsets = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
            return sum(max(tp.offset, 0) for tp in offsets)
        finally:
            consumer.close()


def worker_env(bootstrap: str, topic: str, group: str, metrics_port: int) -> dict[str, str]:
    return {
        "WORKER_BOOTSTRAP_SERVERS": bootstrap, "WORKER_INPUT_TOPIC": topic, "WORKER_OUTPUT_TOPIC": f"{topic}-out",
        "WORKER_DLQ_TOPIC": f"{topic}-dlq", "WORKER_GROUP_ID": group, "WORKER_AUTO_OFFSET_RESET": "earliest",
        "WORKER_INPUT_FORMAT": "json", "WORKER_TEXT_FIELD": "text", "WORKER_DEVICE": "cpu",
        "WORKER_METRICS_HOST": "127.0.0.1", "WORKER_METRICS_PORT": str(metrics_port),
        "WORKER_SHUTDOWN_TIMEOUT_S": "30", "WORKER_LOG_FORMAT": "json", "WORKER_RESULT_FIELDS": "all",
    }


def wait_http(port: int, path: str, timeout_s: float, alive: Any = None) -> float | None:
    """Seconds until http://127.0.0.1:port/path answers 200, or None."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if alive is not None and not alive():
            return None
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
                if response.status == 200:
                    return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.25)
    return None


class Docker:
    def __init__(self, exe: str, logs: Path) -> None:
        self.exe, self.logs = exe, logs

    # With the vfs storage driver creating or removing a container copies or deletes the whole image.
    def __call__(self, *args: str, check: bool = True, timeout: float = 900) -> str:
        result = subprocess.run([self.exe, *args], capture_output=True, text=True, timeout=timeout)
        if check and result.returncode:
            raise RuntimeError(f"docker {' '.join(args[:3])}... failed: {result.stderr.strip()}")
        return result.stdout.strip()

    def run(self, name: str, image: str, env: dict[str, str], network: str = "host") -> None:
        args = [
            "run", "-d", "--name", name, f"--network={network}",
            # What deploy/k8s/deployment.yaml asks of the pod: read-only root, no privilege, tmpfs for /tmp
            # and the engine cache, the image's unprivileged user.
            "--read-only", "--cap-drop=ALL", "--security-opt=no-new-privileges",
            # Like the pod's emptyDirs: writable by the worker's uid, exec allowed (torch.compile loads
            # the kernels it builds under /tmp); docker's tmpfs defaults are root-owned and noexec.
            "--tmpfs", "/tmp:rw,exec,nosuid,nodev,size=256m,mode=1777",
            "--tmpfs", "/models:rw,nosuid,nodev,size=2g,uid=10001,gid=10001,mode=0755",
            "-e", "HOME=/tmp",
            # No hub, proven twice over: offline mode, and an endpoint that refuses every connection.
            "-e", "HF_HUB_OFFLINE=1", "-e", "HF_ENDPOINT=http://127.0.0.1:9",
        ]
        for key, value in env.items():
            args += ["-e", f"{key}={value}"]
        self("rm", "-f", name, check=False)
        self(*args, image)

    def save_logs(self, name: str) -> str:
        result = subprocess.run([self.exe, "logs", name], capture_output=True, text=True, timeout=120)
        text = result.stdout + result.stderr
        (self.logs / f"{name}.log").write_text(text, encoding="utf-8")
        return text

    def state(self, name: str) -> dict[str, Any]:
        return json.loads(self("inspect", "-f", "{{json .State}}", name))


class MemorySampler(threading.Thread):
    """Peak resident memory of every process in a container (the worker and its engine-measuring child)."""

    def __init__(self, docker: Docker, name: str) -> None:
        super().__init__(daemon=True)
        self.docker, self.name = docker, name
        self.peak = 0
        self.last = 0
        self.cgroup: dict[str, float] = {}
        self.stopped = threading.Event()

    def run(self) -> None:
        container_id = self.docker("inspect", "-f", "{{.Id}}", self.name, check=False)
        while not self.stopped.is_set():
            try:
                pid = int(self.docker("inspect", "-f", "{{.State.Pid}}", self.name, check=False) or 0)
            except ValueError:
                pid = 0
            if pid:
                total = sum(rss_kib(p) for p in descendants(pid))
                self.last = total * 1024
                self.peak = max(self.peak, self.last)
                self.cgroup = cgroup_figures(pid, container_id) or self.cgroup
            self.stopped.wait(0.5)


def cgroup_figures(pid: int, container_id: str) -> dict[str, float]:
    """CPU seconds used and the memory high-water mark of the container's cgroup (v1 or v2), where readable.

    CPU seconds do not depend on what else the machine runs: start-up wall time on a shared machine
    does, so both are reported.
    """
    figures: dict[str, float] = {}
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return figures
    paths = {}
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if container_id not in path:
            return {}  # the pid is no longer the container's (it exited and the number was reused)
        for controller in controllers.split(",") or [""]:
            paths[controller] = path
    candidates = {
        "cpu_s": [(f"/sys/fs/cgroup/cpuacct{paths.get('cpuacct', '')}/cpuacct.usage", 1e-9),
                  (f"/sys/fs/cgroup{paths.get('', '')}/cpu.stat", 1e-6)],
        "memory_peak_bytes": [(f"/sys/fs/cgroup/memory{paths.get('memory', '')}/memory.max_usage_in_bytes", 1),
                              (f"/sys/fs/cgroup{paths.get('', '')}/memory.peak", 1)],
    }
    for name, options in candidates.items():
        for path, scale in options:
            try:
                text = Path(path).read_text()
            except OSError:
                continue
            if path.endswith("cpu.stat"):
                text = next((l.split()[1] for l in text.splitlines() if l.startswith("usage_usec")), "")
            if text.strip():
                figures[name] = float(text.split()[0]) * scale
                break
    return figures


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            for task in Path(f"/proc/{current}/task").iterdir():
                children = (task / "children").read_text().split()
                todo.extend(int(c) for c in children)
        except OSError:
            pass
    return found


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def compare(host: dict[str, dict[str, Any]], other: dict[str, dict[str, Any]]) -> dict[str, Any]:
    keys = sorted(set(host) & set(other))
    label_diff = [k for k in keys if host[k]["label"] != other[k]["label"]]
    deltas = [
        abs(a - b)
        for k in keys
        for a, b in zip(host[k]["probabilities"].values(), other[k]["probabilities"].values())
    ]
    return {
        "compared": len(keys), "only_host": len(set(host) - set(other)), "only_other": len(set(other) - set(host)),
        "labels_differ": len(label_diff), "max_abs_prob_diff": max(deltas) if deltas else None,
        "within_tolerance": bool(deltas) and max(deltas) <= PROB_TOLERANCE,
        "tolerance": PROB_TOLERANCE,
    }


def accuracy(results: dict[str, dict[str, Any]], truth: dict[str, int], labels: list[str]) -> float:
    hits = sum(1 for k, r in results.items() if k in truth and labels.index(r["label"]) == truth[k])
    return round(hits / max(len(results), 1), 4)


def finish(report: dict[str, Any], failures: list[str], path: Path) -> int:
    """Writes and prints the report; the exit status says whether every check passed."""
    report["failures"] = failures
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=2, ensure_ascii=False))
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", required=True)
    parser.add_argument("--docker", default="docker")
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--model", required=True, help="the model directory baked into the image (the host worker reads it)")
    parser.add_argument("--data", type=Path, required=True, help="NSMC TSV (id, document, label)")
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument("--logs", type=Path, required=True)
    args = parser.parse_args()
    args.logs.mkdir(parents=True, exist_ok=True)
    docker = Docker(args.docker, args.logs)
    kafka = Kafka(args.bootstrap)
    run_id = time.strftime("%H%M%S")
    report: dict[str, Any] = {"records": args.records, "image": args.image}
    failures: list[str] = []

    # ------------------------------------------------------------------ 1. host vs container, same engine
    topic = f"image-check-{run_id}"
    kafka.create((topic, 3), (f"{topic}-out", 3), (f"{topic}-dlq", 1))
    reviews = read_reviews(args.data, args.records)
    truth = {r["id"]: r["label"] for r in reviews}
    kafka.produce(topic, reviews)
    log(f"produced {len(reviews)} NSMC reviews into {topic}")

    host_port = free_port()
    host_env = {**os.environ, **worker_env(args.bootstrap, topic, "image-check-host", host_port), **COMPARE_ENV,
                "WORKER_MODEL": args.model, "WORKER_OUTPUT_TOPIC": f"{topic}-host",
                "WORKER_ENGINE_CACHE_DIR": str(args.logs / "host-engines")}
    kafka.create((f"{topic}-host", 3))
    with (args.logs / "host-worker.log").open("w") as host_log:
        host = subprocess.Popen([sys.executable, "-m", "worker.cli", "run"], env=host_env, stdout=host_log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        ready = wait_http(host_port, "/readyz", 600, alive=lambda: host.poll() is None)
        log(f"host worker ready after {ready} s")
        host_results = kafka.collect(f"{topic}-host", len(reviews), 600)
    finally:
        host.send_signal(signal.SIGTERM)
        host_rc = host.wait(90)
    report["host"] = {"ready_s": ready and round(ready, 1), "results": len(host_results), "exit_code": host_rc}
    log(f"host worker: {len(host_results)} results, exit {host_rc}")

    name = f"koelectra-compare-{run_id}"
    port = free_port()
    env = {**worker_env(args.bootstrap, topic, "image-check-container", port), **COMPARE_ENV}
    created = time.monotonic()
    docker.run(name, args.image, env)
    create_s = time.monotonic() - created
    ready = wait_http(port, "/readyz", 600, alive=lambda: docker.state(name)["Running"])
    container_results = kafka.collect(f"{topic}-out", len(reviews), 600)
    user = docker("exec", name, "id").strip()
    root_write = subprocess.run([args.docker, "exec", name, "touch", "/opt/probe"], capture_output=True, text=True)
    docker("stop", "-t", str(GRACE_PERIOD_S), name, timeout=GRACE_PERIOD_S + 30)
    state = docker.state(name)
    docker.save_logs(name)
    docker("rm", name)
    comparison = compare(host_results, container_results)
    labels = list(next(iter(host_results.values()))["probabilities"]) if host_results else []
    report["compare"] = {
        "engine": COMPARE_ENV, "create_s": round(create_s, 1), "ready_s": ready and round(ready, 1), "results": len(container_results),
        "exit_code": state["ExitCode"], "user": user,
        "root_fs_write": (root_write.stderr.strip() or "allowed")[:120],
        "accuracy_host": accuracy(host_results, truth, labels), "accuracy_container": accuracy(container_results, truth, labels),
        **comparison,
    }
    log(f"container vs host: {json.dumps(report['compare'], ensure_ascii=False)}")
    if not comparison["within_tolerance"] or comparison["labels_differ"] or comparison["compared"] != len(reviews):
        failures.append("container results differ from the host worker's")
    if "uid=10001" not in user:
        failures.append(f"container runs as {user}, not uid 10001")
    if "Read-only file system" not in root_write.stderr:
        failures.append("the root filesystem is writable")

    # ------------------------------------------------------------------ 2. image defaults: start-up, health, memory, drain
    topic2 = f"image-auto-{run_id}"
    kafka.create((topic2, 3), (f"{topic2}-out", 3), (f"{topic2}-dlq", 1))
    name = f"koelectra-auto-{run_id}"
    port = free_port()
    env = worker_env(args.bootstrap, topic2, "image-check-auto", port)
    sampler = MemorySampler(docker, name)
    created = time.monotonic()
    docker.run(name, args.image, env)
    # `docker run -d` returns once the process started; with vfs it first copies the image (GBs) for
    # the container's writable layer, a cost of that storage driver, reported apart.
    started = time.monotonic()
    sampler.start()
    live = wait_http(port, "/healthz", 900, alive=lambda: docker.state(name)["Running"])
    ready = wait_http(port, "/readyz", 900, alive=lambda: docker.state(name)["Running"])
    ready_at = time.monotonic() - started
    peak_startup = sampler.peak
    time.sleep(1)
    cpu_to_ready = sampler.cgroup.get("cpu_s")
    healthy_at = None
    while time.monotonic() - started < ready_at + 120:
        health = docker.state(name).get("Health", {}).get("Status")
        if health == "healthy":
            healthy_at = time.monotonic() - started
            break
        time.sleep(1)
    kafka.produce(topic2, reviews)
    first = kafka.collect(f"{topic2}-out", len(reviews), 600)
    steady_rss = sampler.last
    # A second stream, stopped in the middle: the drain finishes what is in flight and commits.
    more = read_reviews(args.data, 3 * args.records, skip=args.records)
    kafka.produce(topic2, more)
    time.sleep(3)
    stop_started = time.monotonic()
    docker("stop", "-t", str(GRACE_PERIOD_S), name, timeout=GRACE_PERIOD_S + 30)
    drain_s = time.monotonic() - stop_started
    sampler.stopped.set()
    state = docker.state(name)
    text = docker.save_logs(name)
    docker("rm", name)
    committed = kafka.committed("image-check-auto", topic2)
    delivered = kafka.collect(f"{topic2}-out", len(reviews) + len(more), 60)
    selection = next((json.loads(line) for line in text.splitlines() if '"model ready"' in line), {})
    report["defaults"] = {
        "create_s": round(started - created, 1), "live_s": live and round(live, 1), "ready_s": round(ready_at, 1) if ready else None,
        "healthy_s": healthy_at and round(healthy_at, 1), # RSS summed over the processes counts their shared libraries twice: the cgroup's figure is the one to size by.
        "rss_sum_peak_startup_mib": round(peak_startup / 2**20), "rss_sum_peak_mib": round(sampler.peak / 2**20), "cpu_s_to_ready": cpu_to_ready and round(cpu_to_ready),
        "cgroup_memory_peak_mib": round(sampler.cgroup.get("memory_peak_bytes", 0) / 2**20),
        "load_average": os.getloadavg(), "rss_after_stream_mib": round(steady_rss / 2**20),
        "results_first_stream": len(first), "accuracy": accuracy(first, truth, labels),
        "agreement_with_host": sum(1 for k, r in first.items() if k in host_results and host_results[k]["label"] == r["label"]),
        "stop_s": round(drain_s, 1), "exit_code": state["ExitCode"], "oom_killed": state["OOMKilled"],
        "committed_offsets": committed, "results_total": len(delivered),
        "model_ready": {k: v for k, v in selection.get("fields", selection).items() if k != "labels"} if selection else None,
    }
    log(f"image defaults: {json.dumps(report['defaults'], ensure_ascii=False)}")
    if state["ExitCode"] != 0 or drain_s >= GRACE_PERIOD_S:
        failures.append(f"docker stop: exit {state['ExitCode']} after {drain_s:.1f} s")
    if healthy_at is None:
        failures.append("HEALTHCHECK never turned healthy")
    if committed > len(delivered):
        failures.append(f"{committed} offsets committed but only {len(delivered)} results delivered")

    # ------------------------------------------------------------------ 3. no network at all
    name = f"koelectra-offline-{run_id}"
    env = {**worker_env("127.0.0.1:1", topic2, "image-check-offline", 8000), **COMPARE_ENV}
    docker.run(name, args.image, env, network="none")
    deadline = time.monotonic() + 600
    text = ""
    while time.monotonic() < deadline and '"model ready"' not in text:
        time.sleep(2)
        logs = subprocess.run([args.docker, "logs", name], capture_output=True, text=True)
        text = logs.stdout + logs.stderr  # the worker logs to stderr
    interfaces = docker("exec", name, "python", "-c", "import socket; print([n for _, n in socket.if_nameindex()])", check=False)
    docker("stop", "-t", "10", name, check=False, timeout=60)
    docker.save_logs(name)
    docker("rm", "-f", name)
    report["offline"] = {"model_ready": '"model ready"' in text, "interfaces": interfaces}
    log(f"--network=none: {report['offline']}")
    if not report["offline"]["model_ready"]:
        failures.append("with --network=none the model did not load")

    return finish(report, failures, args.results)


if __name__ == "__main__":
    sys.exit(main())
