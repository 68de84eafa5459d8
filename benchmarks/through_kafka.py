"""What the benchmarks through Kafka share: their broker, the worker process's environment and launch,
pre-loading the input topic, reading results back with their timestamps, cleaning up topics."""

from __future__ import annotations

import os
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Sequence

from benchmarks.inputs import RESULTS, log
from harness.broker import LocalBroker
from harness.clients import produce
from harness.processes import connection_env, start_worker_process
from harness.topics import delete_topics


def own_broker() -> LocalBroker:
    """The benchmarks' broker (127.0.0.1:29092, data in /tmp/bench-kafka), apart from the tests' and `make run`'s."""
    return LocalBroker(29092, Path("/tmp/bench-kafka"))


def worker_process_env(bootstrap: str, topics: dict[str, str], model: Path, port: int,
                       cache_dir: Path) -> dict[str, str]:
    """This process's environment (its WORKER_* settings included: they tune the benchmarked worker), the
    topics, ``cache_dir`` as the engine cache, metrics on ``port``, the input read from its beginning."""
    return {
        **os.environ,
        **connection_env(bootstrap, topics, model),
        "WORKER_ENGINE_CACHE_DIR": str(cache_dir),
        "WORKER_METRICS_PORT": str(port),
        "WORKER_METRICS_HOST": "127.0.0.1",
        "WORKER_AUTO_OFFSET_RESET": "earliest",
    }


def launch(env: dict[str, str], log_name: str) -> subprocess.Popen:
    """`worker run` logging to benchmarks/results/``log_name`` (started afresh), out of reach of a Ctrl-C
    on the benchmark's terminal so that it is always stopped the same way, by SIGTERM."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    return start_worker_process(env, RESULTS / log_name, truncate=True, own_session=True)


def preload(bootstrap: str, topic: str, texts: Sequence[str], prefix: str) -> None:
    """Every text into ``topic`` under its own key ``{prefix}-{i}``, batched for speed."""
    produce(bootstrap, topic, [(f"{prefix}-{i}".encode(), text.encode("utf-8")) for i, text in enumerate(texts)],
            producer_config={"linger.ms": 20, "batch.num.messages": 10000, "queue.buffering.max.messages": 1_000_000,
                             "compression.type": "none", "enable.idempotence": False})


def drop_topics(bootstrap: str, names: Sequence[str]) -> None:
    """Delete the run's topics; a failure is logged, not raised (the figures are already taken)."""
    try:
        delete_topics(bootstrap, names)
    except Exception as exc:  # noqa: BLE001
        log(f"could not delete topics {list(names)}: {exc}")


class OutputReader(threading.Thread):
    """Reads the output topic from the beginning; records (receive time, key, output record timestamp in ms).

    Latency is measured outside the worker: from the input record's timestamp (taken when the bench
    produced it) to the output record's (set by the worker's producer when it produced the result).
    """

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        super().__init__(name="output-reader", daemon=True)
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        self.consumer = Consumer({
            "bootstrap.servers": bootstrap, "group.id": f"bench-reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False, "fetch.wait.max.ms": 5, "fetch.min.bytes": 1,
        })
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        self.records: list[tuple[float, bytes | None, float | None]] = []
        self.lock = threading.Lock()
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            batch = self.consumer.consume(1000, 0.05)
            now = time.time()
            rows: list[Any] = []
            for message in batch:
                if message.error():
                    continue
                kind, timestamp = message.timestamp()
                rows.append((now, message.key(), float(timestamp) if kind != 0 and timestamp > 0 else None))
            if rows:
                with self.lock:
                    self.records.extend(rows)
        self.consumer.close()

    def count(self) -> int:
        with self.lock:
            return len(self.records)

    def snapshot(self) -> list[tuple[float, bytes | None, float | None]]:
        with self.lock:
            return list(self.records)
