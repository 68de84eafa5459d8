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
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
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


# What a group coordinator answers while it is still loading or moving (the KafkaError built from
# these codes does not set retriable(), so they are listed).
COORDINATOR_NOT_YET = {KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
                       KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError._TIMED_OUT}


def committed_and_end_offsets(
    bootstrap: str, group: str, topic: str, timeout_s: float = 30
) -> tuple[dict[int, int], dict[int, int]]:
    """The group's committed offsets and the topic's end offsets.

    Retried while the broker answers with a retriable error: a freshly started broker (or one whose
    coordinator just moved) answers NOT_COORDINATOR / COORDINATOR_LOAD_IN_PROGRESS for a few seconds.
    """
    deadline = time.time() + timeout_s
    while True:
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
        try:
            partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
            tps = [TopicPartition(topic, p) for p in partitions]
            committed = {tp.partition: tp.offset for tp in consumer.committed(tps, timeout=10)}
            end = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
            return committed, end
        except KafkaException as exc:
            code = exc.args[0].code() if exc.args and hasattr(exc.args[0], "code") else None
            if code not in COORDINATOR_NOT_YET or time.time() > deadline:
                raise
        finally:
            consumer.close()
        time.sleep(0.5)


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
    """SIGTERM, then SIGKILL if it has not exited within `grace_s`; returns the exit code
    (negative: the signal that ended it)."""
    terminate(process, grace_s)
    return process.returncode
# --- fault-test tools: progress, counting, process control, a restarting supervisor, scraping ---

FATAL_EXIT = 4  # contract: fatal at run time; the orchestrator restarts the worker
FATAL_LINE_PREFIX = "worker: fatal: "


def fresh_topics(bootstrap: str, input_partitions: int = 3) -> dict[str, str]:
    """New input, output and dead-letter topics (output with as many partitions as the input), created."""
    suffix = uuid.uuid4().hex[:8]
    names = {"input": f"in-{suffix}", "output": f"out-{suffix}", "dlq": f"dlq-{suffix}"}
    create_topics(bootstrap, {names["input"]: input_partitions, names["output"]: input_partitions, names["dlq"]: 1})
    return names


def output_count(bootstrap: str, topic: str) -> int:
    """High watermarks summed: cheap progress, counts every record written (control records too)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "watermarks"})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions)
    finally:
        consumer.close()


def feed(bootstrap: str, topic: str, rows, count: int) -> list[str]:
    """`count` NSMC documents (the rows repeated as needed), each under its own key; returns the keys."""
    rows = (rows * (count // len(rows) + 1))[:count]
    keys = [f"{i}-{doc_id}" for i, (doc_id, _, _) in enumerate(rows)]
    produce(bootstrap, topic, [(k.encode(), doc.encode()) for k, (_, doc, _) in zip(keys, rows)])
    return keys


def summarize(name: str, keys: list[str], counts, report) -> tuple[int, int]:
    """Missing and duplicated results of `keys` in `counts` (a Counter by key), reported under `name`."""
    missing = sum(1 for k in keys if counts[k] == 0)
    duplicates = sum(n - 1 for n in counts.values() if n > 1)
    report(name, inputs=len(keys), results=sum(counts.values()), missing=missing, duplicates=duplicates)
    return missing, duplicates


def count_results(bootstrap: str, topic: str, keys: list[str], timeout_s: float = 240,
                  read_committed: bool = True) -> Counter:
    """Results per key, read until every key has one (then a few idle seconds, for duplicates)."""
    results = consume_all(bootstrap, topic, expected=len(keys), timeout_s=timeout_s, idle_s=4,
                          read_committed=read_committed)
    counts = Counter(r.key.decode() for r in results)
    assert set(counts) <= set(keys), "results for keys never sent"
    return counts


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "watermarks"})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
    finally:
        consumer.close()


class CommittedOffsets:
    """Reads a group's committed offsets of one topic (a consumer that never joins the group).
    Returns None while the broker cannot answer, so callers can keep polling through an outage."""

    def __init__(self, bootstrap: str, group: str, topic: str, partitions: Sequence[int]) -> None:
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
        self._tps = [TopicPartition(topic, p) for p in partitions]

    def read(self, timeout_s: float = 5) -> dict[int, int] | None:
        try:
            return {tp.partition: max(tp.offset, 0) for tp in self._consumer.committed(self._tps, timeout=timeout_s)}
        except KafkaException:
            return None

    def close(self) -> None:
        self._consumer.close()


@dataclass
class CommitWait:
    complete: bool
    reason: str  # "complete", or why the wait ended without it
    seconds: float
    committed: dict[int, int]


def wait_committed(
    bootstrap: str,
    group: str,
    topic: str,
    end: dict[int, int],
    until: int | None = None,
    timeout_s: float = 600,
    stall_s: float = 150,
    gone=lambda: None,
) -> CommitWait:
    """Wait until the group has committed every input offset (`end`: the input's end offsets), or `until`
    of them. Ends early when the committed offsets have not moved for `stall_s`, or when `gone()` returns
    a reason (the workers are gone for good). Never raises on a broker outage."""
    offsets = CommittedOffsets(bootstrap, group, topic, list(end))
    started = last_move = time.monotonic()
    committed: dict[int, int] = {}
    last_total = -1
    try:
        while True:
            now = time.monotonic()
            read = offsets.read()
            if read is not None:
                committed = read
                done = sum(min(committed.get(p, 0), e) for p, e in end.items())
                if done >= (sum(end.values()) if until is None else until):
                    return CommitWait(True, "complete", now - started, committed)
                total = sum(committed.values())
                if total != last_total:
                    last_total, last_move = total, now
            done_at = sum(min(committed.get(p, 0), e) for p, e in end.items())
            progress = f"{done_at}/{sum(end.values())} input offsets committed"
            reason = gone()
            if reason:
                return CommitWait(False, f"{reason}; {progress}", now - started, committed)
            if now - last_move > stall_s:
                return CommitWait(False, f"no commit for {stall_s:.0f} s; {progress}", now - started, committed)
            if now - started > timeout_s:
                return CommitWait(False, f"not complete after {timeout_s:.0f} s; {progress}", now - started, committed)
            time.sleep(1.0)
    finally:
        offsets.close()


def last_line(log_path: Path) -> str:
    lines = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def terminate(process: subprocess.Popen, timeout_s: float = 30) -> tuple[int | None, float]:
    """SIGTERM, wait up to `timeout_s`, then SIGKILL. Returns (exit code, or None if it had to be killed;
    seconds from the signal to the exit)."""
    started = time.monotonic()
    if process.poll() is not None:
        return process.returncode, 0.0
    process.terminate()
    try:
        code: int | None = process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(30)
        code = None
    return code, time.monotonic() - started


def seconds_to_exit(process: subprocess.Popen, timeout_s: float) -> float | None:
    """Seconds until the process exits, or None if it is still running after `timeout_s`."""
    started = time.monotonic()
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        return None
    return time.monotonic() - started


@dataclass
class Exit:
    code: int | None  # None: killed by the supervisor's stop after its deadline
    seconds_alive: float
    last_line: str
    log: Path


class Supervisor:
    """Runs `worker run` the way an orchestrator would: restarts it whenever it exits non-zero, up to
    `max_restarts` times (the contract's code for that is 4; `unexpected_exits` lists the others, so a
    test can count losses and duplicates across a restart and still fail on a wrong exit code).
    Each run logs to its own file."""

    def __init__(self, env: dict[str, str], log_dir: Path, name: str = "worker", max_restarts: int = 5) -> None:
        self.env = env
        self.log_dir = log_dir
        self.name = name
        self.max_restarts = max_restarts
        self.exits: list[Exit] = []
        self.starts = 0
        self._process: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._stopping = False
        self._thread = threading.Thread(target=self._supervise, name=f"supervisor-{name}", daemon=True)

    @property
    def restarts(self) -> int:
        return max(0, self.starts - 1)

    @property
    def process(self) -> subprocess.Popen | None:
        return self._process

    def start(self) -> "Supervisor":
        self._thread.start()
        return self

    def _supervise(self) -> None:
        while True:
            with self._lock:
                if self._stopping:
                    return
                log = self.log_dir / f"{self.name}-{self.starts}.log"
                process = start_worker_process(self.env, log)
                self._process = process
                self.starts += 1
            started = time.monotonic()
            code = process.wait()
            self.exits.append(Exit(code, time.monotonic() - started, last_line(log), log))
            if code == 0 or self.restarts >= self.max_restarts:
                return

    def gone(self) -> str | None:
        """Why the supervised worker is gone for good, or None while it runs (or is being restarted)."""
        if self._thread.is_alive() or self._stopping:
            return None
        last = self.exits[-1] if self.exits else None
        if last is None:
            return f"{self.name} never started"
        return f"{self.name} exited {last.code} after {self.restarts} restarts: {last.last_line[-300:]}"

    def stop(self, timeout_s: float = 60) -> tuple[int | None, float]:
        """Stop supervising and SIGTERM the running worker (SIGKILL after `timeout_s`).
        Returns its (exit code, seconds to exit); (last code, 0) if none was running."""
        with self._lock:
            self._stopping = True
            process = self._process
        result: tuple[int | None, float] = (self.exits[-1].code if self.exits else None, 0.0)
        if process is not None and process.poll() is None:
            result = terminate(process, timeout_s)
        self._thread.join(timeout_s + 30)
        return result

    def unexpected_exits(self) -> list[str]:
        """Restarted exits that broke the contract: a code other than 4, or 4 without the fatal last line.
        (The last exit is the caller's to judge: it may be the test's own stop.)"""
        problems = []
        for e in self.exits[:-1]:
            if e.code != FATAL_EXIT:
                problems.append(f"{e.log.name}: exited {e.code}, not {FATAL_EXIT} (restarted): {e.last_line!r}")
            elif not e.last_line.startswith(FATAL_LINE_PREFIX):
                problems.append(f"{e.log.name}: exit 4 without a '{FATAL_LINE_PREFIX}' last line: {e.last_line!r}")
        return problems

    def logs(self, tail_chars: int = 4000) -> str:
        return "\n".join(
            f"--- {p.name} ---\n{p.read_text(errors='replace')[-tail_chars:]}"
            for p in sorted(self.log_dir.glob(f"{self.name}-*.log"))
        )


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
def get_endpoint(port: int, path: str, timeout_s: float = 3) -> tuple[int, str] | None:
    """(status, body) of a GET on the worker's metrics server; None if it does not answer."""
    status, body = http_get(f"http://127.0.0.1:{port}{path}", timeout_s)
    return None if status is None else (status, body)


def scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]] | None:
    """/metrics parsed: sample name → [(labels, value)]; None if the worker does not answer."""
    from prometheus_client.parser import text_string_to_metric_families

    answer = get_endpoint(port, "/metrics")
    if answer is None or answer[0] != 200:
        return None
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(answer[1]):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return samples


def group_assignments(bootstrap: str, group: str) -> list[list[tuple[str, int]]]:
    """The partitions assigned to each member of a consumer group (empty list while it has no members)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    description = admin.describe_consumer_groups([group], request_timeout=10)[group].result(15)
    return [
        [(tp.topic, tp.partition) for tp in (member.assignment.topic_partitions if member.assignment else [])]
        for member in description.members
    ]
