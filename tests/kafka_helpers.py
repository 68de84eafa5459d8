"""Test-side Kafka tools: topics, producing inputs, reading outputs back, running a worker."""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AclBinding, AdminClient, NewTopic

REPO = Path(__file__).resolve().parent.parent


def create_topics(bootstrap: str, partitions_by_topic: dict[str, int]) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=n, replication_factor=1) for name, n in partitions_by_topic.items()]
    )
    for name, future in futures.items():
        try:
            future.result(30)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
    # metadata propagation: wait until every topic is visible with its partitions
    deadline = time.time() + 30
    while time.time() < deadline:
        metadata = admin.list_topics(timeout=10).topics
        if all(name in metadata and len(metadata[name].partitions) == n for name, n in partitions_by_topic.items()):
            return
        time.sleep(0.2)
    raise TimeoutError(f"topics {list(partitions_by_topic)} not visible")


def produce(bootstrap: str, topic: str, records: Sequence[tuple], headers=None) -> None:
    """Records are (key, value) or (key, value, headers); `headers` applies to those without their own."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True})
    failures: list[str] = []

    def report(error: Any, message: Any) -> None:
        if error is not None:
            failures.append(error.str())

    for key, value, *own in records:
        while True:
            try:
                producer.produce(topic, key=key, value=value, headers=own[0] if own else headers, on_delivery=report)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    assert producer.flush(60) == 0, "input records not delivered"
    assert not failures, failures


@dataclass
class OutputRecord:
    key: bytes | None
    value: bytes | None
    headers: dict[str, str]
    partition: int
    offset: int

    def json(self) -> Any:
        return json.loads(self.value) if self.value is not None else None


def consume_all(
    bootstrap: str,
    topic: str,
    expected: int | None = None,
    timeout_s: float = 120,
    idle_s: float = 5,
    read_committed: bool = True,
) -> list[OutputRecord]:
    """Read a topic from the beginning until `expected` records arrived (then `idle_s` more, to catch
    duplicates), or until nothing came for `idle_s` when `expected` is None, or the timeout."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"verify-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed" if read_committed else "read_uncommitted",
        }
    )
    consumer.subscribe([topic])
    out: list[OutputRecord] = []
    deadline = time.time() + timeout_s
    last_arrival = time.time()
    try:
        while time.time() < deadline:
            for message in consumer.consume(500, 0.5):
                if message.error():
                    continue
                out.append(
                    OutputRecord(
                        message.key(),
                        message.value(),
                        {k: (v or b"").decode("utf-8", "replace") for k, v in (message.headers() or [])},
                        message.partition(),
                        message.offset(),
                    )
                )
                last_arrival = time.time()
            quiet = time.time() - last_arrival
            if expected is not None and len(out) >= expected and quiet >= min(idle_s, 2):
                break
            if expected is None and quiet >= idle_s:
                break
    finally:
        consumer.close()
    return out


def committed_and_end_offsets(bootstrap: str, group: str, topic: str) -> tuple[dict[int, int], dict[int, int]]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        tps = [TopicPartition(topic, p) for p in partitions]
        committed = {tp.partition: tp.offset for tp in consumer.committed(tps, timeout=10)}
        end = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
        return committed, end
    finally:
        consumer.close()


def wait_for(condition, timeout_s: float, interval_s: float = 0.2, message: str = "condition") -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if condition():
            return
        time.sleep(interval_s)
    raise TimeoutError(f"timed out waiting for {message}")


def worker_settings(bootstrap: str, topics: dict[str, str], model_dir: Path | str, **overrides: Any):
    from worker.settings import Settings

    values: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "input_topic": topics["input"],
        "output_topic": topics["output"],
        "dlq_topic": topics["dlq"],
        "group_id": f"group-{topics['input']}",
        "model": str(model_dir),
        "device": "cpu",
        "dtype": "float32",
        "metrics_port": 0,
        "statistics_interval_ms": 1000,
        "batch_max_wait_ms": 20,
        "shutdown_timeout_s": 20,
    }
    values.update(overrides)
    return Settings(**values)


@contextmanager
def running_worker(settings, classifier, metrics=None) -> Iterator[Any]:
    """A Worker on a background thread; stopped (drained, committed) on exit."""
    from worker.app import Worker

    worker = Worker(settings, classifier, metrics)
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["clean"] = worker.run()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="worker-under-test", daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.request_stop()
        thread.join(60)
        assert not thread.is_alive(), "worker did not stop"
        if "error" in outcome:
            raise outcome["error"]
        assert outcome.get("clean"), "worker stopped with unfinished records"


def worker_env(bootstrap: str, topics: dict[str, str], model_dir: Path | str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKER_")}
    env.update(
        {
            "WORKER_BOOTSTRAP_SERVERS": bootstrap,
            "WORKER_INPUT_TOPIC": topics["input"],
            "WORKER_OUTPUT_TOPIC": topics["output"],
            "WORKER_DLQ_TOPIC": topics["dlq"],
            "WORKER_GROUP_ID": f"group-{topics['input']}",
            "WORKER_MODEL": str(model_dir),
            "WORKER_DEVICE": "cpu",
            "WORKER_DTYPE": "float32",
            "WORKER_METRICS_PORT": "0",
            "WORKER_SHUTDOWN_TIMEOUT_S": "20",
            # A SIGKILLed member holds its partitions until its session times out; keep that short.
            "WORKER_KAFKA_CONSUMER_SESSION_TIMEOUT_MS": "6000",
            "WORKER_KAFKA_CONSUMER_HEARTBEAT_INTERVAL_MS": "1000",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


def start_worker_process(
    env: dict[str, str], log_path: Path, module: str = "worker.cli", args: Sequence[str] = ("run",)
) -> subprocess.Popen:
    """`worker run` as a real process (the console script's module), logs to a file. `module` names
    another entry point (a fault-injecting wrapper) that is run the same way."""
    with open(log_path, "ab") as handle:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", module, *args], env=env, cwd=str(REPO), stdout=handle, stderr=subprocess.STDOUT
        )


def wait_exit(process: subprocess.Popen, timeout_s: float) -> int | None:
    """The exit code, or None if the process is still running after `timeout_s`."""
    try:
        return process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        return None


def stop_process(process: subprocess.Popen, grace_s: float = 30) -> int:
    """SIGTERM, then SIGKILL if it has not exited within `grace_s`; returns the exit code."""
    if process.poll() is None:
        process.terminate()
        if wait_exit(process, grace_s) is None:
            process.kill()
    return process.wait(30)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def create_acls(bootstrap: str, bindings: Sequence[AclBinding]) -> None:
    """Create ACL bindings as the (super user) client of `bootstrap`; waits until the broker has them."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_acls(list(bindings)).values():
        future.result(30)


def http_get(url: str, timeout_s: float = 2) -> tuple[int | None, str]:
    """(status, body); (None, error text) when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode("utf-8", "replace")
    except (OSError, http.client.HTTPException) as error:
        return None, str(error)


_BLOCKED = re.compile(r'^worker_blocked\{reason="([^"]*)"\} 1(?:\.0)?$', re.MULTILINE)


@dataclass(frozen=True)
class Probe:
    """One look at a worker's HTTP endpoints, `at` seconds after the prober started."""

    at: float
    ready: int | None  # /readyz status; None: nothing answered
    ready_body: dict[str, Any]
    live: int | None  # /healthz status
    blocked: frozenset[str]  # reasons whose worker_blocked gauge is 1

    @property
    def failing(self) -> bool:
        """/readyz says 503 and names a reason (the contract's fatal state, not mere start-up)."""
        return self.ready == 503 and bool(self.ready_body.get("reason"))


class HealthProber:
    """Polls /readyz, /healthz and /metrics of a worker on a background thread and keeps every answer."""

    def __init__(self, port: int, interval_s: float = 0.1) -> None:
        self._base = f"http://127.0.0.1:{port}"
        self._interval_s = interval_s
        self._samples: list[Probe] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="health-prober", daemon=True)
        self.started_at = time.time()

    def __enter__(self) -> HealthProber:
        self.started_at = time.time()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            at = time.time() - self.started_at
            ready, body = http_get(self._base + "/readyz")
            live, _ = http_get(self._base + "/healthz")
            metrics_status, metrics = http_get(self._base + "/metrics")
            try:
                ready_body = json.loads(body) if ready is not None else {}
            except ValueError:
                ready_body = {"unparsed": body}
            blocked = frozenset(_BLOCKED.findall(metrics)) if metrics_status == 200 else frozenset()
            self._samples.append(Probe(at, ready, ready_body if isinstance(ready_body, dict) else {}, live, blocked))
            self._stop.wait(self._interval_s)

    @property
    def samples(self) -> list[Probe]:
        return list(self._samples)

    def first(self, predicate) -> Probe | None:
        return next((p for p in self._samples if predicate(p)), None)

    def blocked_reasons(self) -> set[str]:
        return {reason for p in self._samples for reason in p.blocked}

def produce_with_offsets(
    bootstrap: str, topic: str, records: Sequence[tuple], producer_config: dict[str, Any] | None = None
) -> list[int]:
    """Like `produce` (records are (key, value, headers, timestamp_ms or None)), in order, one at a time
    in flight so order holds; returns each record's offset. `producer_config` can raise size limits."""
    config = {"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5}
    config.update(producer_config or {})
    producer = Producer(config)
    offsets: list[int | None] = [None] * len(records)
    failures: list[str] = []

    def report_for(index: int):
        def report(error: Any, message: Any) -> None:
            if error is not None:
                failures.append(f"record {index}: {error.str()}")
            else:
                offsets[index] = message.offset()

        return report

    for index, (key, value, headers, timestamp_ms) in enumerate(records):
        extra = {"timestamp": timestamp_ms} if timestamp_ms is not None else {}
        while True:
            try:
                producer.produce(topic, key=key, value=value, headers=headers, on_delivery=report_for(index), **extra)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    assert producer.flush(120) == 0, "input records not delivered"
    assert not failures, failures[:5]
    return [offset for offset in offsets if offset is not None]
