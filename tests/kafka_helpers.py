"""Test-side Kafka tools: topics, producing inputs, reading outputs back, running a worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

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
    if "WORKER_ENGINE_CACHE_DIR" in os.environ:  # the test session's (tests/conftest.py): exports made once per session
        env["WORKER_ENGINE_CACHE_DIR"] = os.environ["WORKER_ENGINE_CACHE_DIR"]
    env.update(extra)
    return env


def start_worker_process(env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """`worker run` as a real process (the console script's module), logs to a file."""
    handle = open(log_path, "ab")
    return subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "run"], env=env, cwd=str(REPO), stdout=handle, stderr=subprocess.STDOUT
    )
