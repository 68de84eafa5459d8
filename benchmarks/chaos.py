"""make chaos: what production runs (a 3-node KRaft cluster, replicated topics, three workers in one group),
with random faults at random times while a producer writes keyed reviews; then checks from the topics what
each delivery mode promises and reports what happened.

    python -m benchmarks.chaos --records 20000 --faults 12 --mode both [--seed N]

Faults (one at a time, so two of the three replicas always stay in sync): a worker SIGKILLed or SIGTERMed
and started again, a worker joining (or, when one has joined, leaving), a broker node SIGKILLed or
SIGSTOPped (the input's partition leader half of the time) and brought back. A worker that exits on its
own is started again, as an orchestrator would, and its exit code kept.

Verified from the topics once the group has committed every input (workers stopped, topics read to their
end offsets): at-least-once: every input has a result or a dead letter, per key the results never skip
ahead; exactly-once: under read_committed every input has exactly one result. Every worker exit must be
explained: 0 or 3 after a SIGTERM, killed after a SIGKILL, 4 (fatal, restarted) when it left on its own.
The seed is printed; --seed repeats the same faults at the same times (the machine's timing varies).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.paths import NSMC_SAMPLE, REPO
from harness.processes import FATAL_EXIT, last_line, start_worker_process, worker_env

log = logging.getLogger("chaos")
MODES = ("at_least_once", "exactly_once")
FAULTS = ("worker_sigkill", "worker_sigterm", "worker_join", "broker_sigkill", "broker_sigstop")
CLEAN_STOP_EXITS = (0, 3)  # after a SIGTERM: done, or done with records left for the next owner
KEYS = 200
TRANSACTION_TIMEOUT_S = 30  # the workers' transaction.timeout.ms (WORKER_KAFKA_PRODUCER_TRANSACTION_TIMEOUT_MS)
RESULTS_DIR = REPO / "benchmarks" / "results"


@dataclass
class WorkerExit:
    slot: str
    code: int | None
    cause: str  # "sigterm", "sigkill", "own" (left by itself: the supervisor restarts it), "final"
    explained: bool
    last_line: str


@dataclass
class Fault:
    kind: str
    target: str
    at_s: float  # seconds since the stream started
    # The output's longest stall (no new record, sampled every 0.5 s) between this fault and the next, and
    # the seconds from the fault's start until the output grew after it (0: it never stalled for 1 s).
    stall_s: float = 0.0
    recovered_s: float | None = None
    took_s: float = 0.0  # the fault and its undoing (restart, resume)
    note: str = ""


@dataclass
class ModeReport:
    mode: str
    records: int
    faults: list[Fault] = field(default_factory=list)
    exits: list[WorkerExit] = field(default_factory=list)
    restarts: int = 0
    first_result_s: float | None = None  # from the start of the producer until the first result
    complete: bool = False
    complete_reason: str = ""
    seconds: float = 0.0
    throughput_per_s: float = 0.0
    results: int = 0
    dead_letters: int = 0
    missing: int = 0
    duplicates: int = 0
    skips_ahead: int = 0
    first_skip: str | None = None
    keys_on_several_partitions: int = 0
    read_uncommitted_records: int | None = None
    open_transaction_wait_s: float | None = None  # exactly-once: until no transaction was open on the output
    problems: list[str] = field(default_factory=list)


def explained(code: int | None, cause: str, started: bool = True) -> bool:
    """Whether an exit is what the contract says for its cause; ``started``: the worker had logged its start
    (a SIGTERM before that finds Python still importing, without its handler: killed by the signal)."""
    if cause in ("sigterm", "final"):
        return code in CLEAN_STOP_EXITS or (not started and code == -signal.SIGTERM)
    if cause == "sigkill":
        return code == -signal.SIGKILL
    return code == FATAL_EXIT  # left by itself: only the documented "restart me"


class Workers:
    """The worker slots of one run: each runs `worker run` (its own transactional id under exactly-once,
    kept across restarts so a restart fences the one before); a slot whose worker exits unprompted is
    started again (its exit recorded), as the orchestrator would."""

    def __init__(self, env: dict[str, str], log_dir: Path, exactly_once: bool, prefix: str) -> None:
        self.env, self.log_dir, self.exactly_once, self.prefix = env, log_dir, exactly_once, prefix
        self.procs: dict[str, subprocess.Popen] = {}
        self.starts: Counter = Counter()
        self.exits: list[WorkerExit] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watch = threading.Thread(target=self._watcher, daemon=True, name="chaos-workers")

    def start(self, slot: str) -> None:
        env = dict(self.env)
        if self.exactly_once:
            env["WORKER_TRANSACTIONAL_ID"] = f"{self.prefix}-{slot}"
        with self._lock:
            if slot in self.procs:  # the watcher restarted it already
                return
            self.starts[slot] += 1
            log = self.log_dir / f"{slot}-{self.starts[slot]}.log"
            self.procs[slot] = start_worker_process(env, log, own_session=True)

    def _log(self, slot: str) -> Path:
        return self.log_dir / f"{slot}-{self.starts[slot]}.log"

    def _record(self, slot: str, code: int | None, cause: str) -> None:
        log_text = self._log(slot).read_text(errors="replace")
        started = " worker: starting" in log_text
        self.exits.append(WorkerExit(slot, code, cause, explained(code, cause, started), last_line(self._log(slot))[-300:]))

    def begin(self, slots: list[str]) -> None:
        for slot in slots:
            self.start(slot)
        self._watch.start()

    def _watcher(self) -> None:
        while not self._stop.wait(0.5):
            with self._lock:
                gone = [(s, p) for s, p in self.procs.items() if p.poll() is not None]
                for slot, process in gone:
                    del self.procs[slot]
            for slot, process in gone:
                self._record(slot, process.returncode, "own")
                self.start(slot)

    def _take(self, slot: str) -> subprocess.Popen | None:
        with self._lock:
            return self.procs.pop(slot, None)

    def kill(self, slot: str) -> None:
        process = self._take(slot)
        if process is not None:
            process.kill()
            process.wait(30)
            self._record(slot, process.returncode, "sigkill" if process.returncode == -signal.SIGKILL else "own")

    def terminate(self, slot: str, cause: str = "sigterm", timeout_s: float = 60) -> None:
        process = self._take(slot)
        if process is None:
            return
        process.terminate()
        try:
            code: int | None = process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(30)
            code = None  # did not stop within its deadline: unexplained
        self._record(slot, code, cause)

    def running(self) -> list[str]:
        with self._lock:
            return sorted(self.procs)

    def stop_all(self, timeout_s: float = 60) -> None:
        """Stop restarting, then SIGTERM every worker at once; SIGKILL those still running after the deadline."""
        self._stop.set()
        if self._watch.is_alive():
            self._watch.join(10)
        threads = [threading.Thread(target=self.terminate, args=(slot, "final", timeout_s)) for slot in self.running()]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout_s + 40)

    def kill_all(self) -> None:
        """Last resort on any failure path: nothing may be left running."""
        self._stop.set()
        with self._lock:
            processes, self.procs = list(self.procs.values()), {}
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(30)


def reviews(records: int) -> list[tuple[bytes, bytes]]:
    """``records`` keyed reviews, KEYS keys interleaved; each value {"text", "seq"} with seq counting per key."""
    from worker.datasets import read_nsmc_rows

    texts = [doc for _, doc, _ in read_nsmc_rows(NSMC_SAMPLE)]
    out = []
    for i in range(records):
        key, seq = i % KEYS, i // KEYS
        out.append((f"key-{key:03d}".encode(),
                    json.dumps({"text": texts[i % len(texts)], "seq": seq}, ensure_ascii=False).encode()))
    return out


def paced_producer(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]], rate_per_s: float,
                   done: threading.Event, errors: list[str]) -> threading.Thread:
    """A thread producing ``records`` in order at about ``rate_per_s`` (idempotent, acks=all), through the faults."""
    from confluent_kafka import Producer

    def run() -> None:
        producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 20,
                             "message.timeout.ms": 300000,
                             "log_level": 2})  # faults make it log every disconnect: the report says what happened
        failed: list[str] = []

        def report(error: Any, _message: Any) -> None:
            if error is not None:
                failed.append(error.str())

        started = time.monotonic()
        try:
            for i, (key, value) in enumerate(records):
                while True:
                    try:
                        producer.produce(topic, key=key, value=value, on_delivery=report)
                        break
                    except BufferError:
                        producer.poll(0.1)
                ahead = started + i / rate_per_s - time.monotonic()
                if ahead > 0:
                    producer.poll(ahead)
                else:
                    producer.poll(0)
            if producer.flush(300) != 0:
                errors.append("input records not delivered within 300 s")
            errors.extend(failed[:5])
        finally:
            done.set()

    thread = threading.Thread(target=run, daemon=True, name="chaos-producer")
    thread.start()
    return thread


class OutputSampler:
    """Samples a topic's end offsets (summed) every half second in a thread, for the stalls after faults."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        from harness.offsets import output_count

        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()

        def sample() -> None:
            while not self._stop.wait(0.5):
                try:
                    self.samples.append((time.monotonic(), output_count(bootstrap, topic)))
                except Exception as exc:  # noqa: BLE001 - unreadable during a fault: the stall goes on
                    log.debug("output not readable now: %s", exc)

        self._thread = threading.Thread(target=sample, daemon=True, name="chaos-sampler")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def longest_stall(self, start: float, end: float) -> tuple[float, float | None]:
        """(longest stretch without growth in [start, end], seconds from start until the output grew after it);
        a stall still going at ``end`` has no recovery (None)."""
        window = [(t, n) for t, n in self.samples if start <= t <= end]
        if len(window) < 2:
            return 0.0, None
        best, recovered = 0.0, 0.0
        since_t, since_n = window[0]
        for t, n in window[1:]:
            if n > since_n:
                if t - since_t > best:
                    best, recovered = t - since_t, t - start
                since_t, since_n = t, n
        if window[-1][0] - since_t > best:
            return round(window[-1][0] - since_t, 1), None
        return round(best, 1), (round(recovered, 1) if best >= 1.0 else 0.0)


def wait_stable(bootstrap: str, topic: str, timeout_s: float) -> float | None:
    """Seconds until every partition's last stable offset reaches its end offset (no transaction open);
    None if that did not happen within ``timeout_s``."""
    from confluent_kafka import IsolationLevel, TopicPartition
    from confluent_kafka.admin import AdminClient, OffsetSpec

    from harness.offsets import end_offsets

    admin = AdminClient({"bootstrap.servers": bootstrap})
    started = time.monotonic()
    while time.monotonic() < started + timeout_s:
        try:
            end = end_offsets(bootstrap, topic)
            stable = admin.list_offsets({TopicPartition(topic, p): OffsetSpec.latest() for p in end},
                                        isolation_level=IsolationLevel.READ_COMMITTED, request_timeout=10)
            if all(future.result(15).offset >= end[tp.partition] for tp, future in stable.items()):
                return round(time.monotonic() - started, 1)
        except Exception as exc:  # noqa: BLE001 - a fault's after-effects: try again
            log.debug("offsets not readable now: %s", exc)
        time.sleep(1.0)
    return None


def read_to_end(bootstrap: str, topic: str, read_committed: bool, timeout_s: float = 180) -> list:
    """Every record of ``topic`` up to the end offsets it has now (control records skipped), with a deadline."""
    from confluent_kafka import Consumer, TopicPartition

    from harness.clients import OutputRecord
    from harness.offsets import end_offsets

    end = end_offsets(bootstrap, topic)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"chaos-verify-{time.time_ns()}",
                         "enable.auto.commit": False,
                         "isolation.level": "read_committed" if read_committed else "read_uncommitted"})
    out: list[OutputRecord] = []
    tps = [TopicPartition(topic, p, 0) for p, e in end.items() if e > 0]
    if not tps:
        consumer.close()
        return out
    consumer.assign(tps)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            for message in consumer.consume(1000, 0.5):
                if message.error():
                    continue
                out.append(OutputRecord(message.key(), message.value(),
                                        {k: (v or b"").decode("utf-8", "replace") for k, v in (message.headers() or [])},
                                        message.partition(), message.offset()))
            positions = consumer.position([TopicPartition(topic, tp.partition) for tp in tps])
            if all(p.offset >= end[p.partition] for p in positions):
                return out
        raise TimeoutError(f"{topic} not read to its end offsets within {timeout_s:.0f} s")
    finally:
        consumer.close()


def verify(report: ModeReport, results: list, dead: list, records: int) -> None:
    """Counts of ``report`` from the topics: missing (no result and no dead letter), duplicates, per-key order."""
    seen: Counter = Counter()
    by_key: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
    for r in results:
        seq = r.json()["input"]["seq"]
        seen[(r.key.decode(), seq)] += 1
        by_key[r.key.decode()].append((r.partition, r.offset, seq))
    for d in dead:
        seen[(d.key.decode(), json.loads(d.value)["seq"])] += 1
    expected = {(f"key-{i % KEYS:03d}", i // KEYS) for i in range(records)}
    report.results, report.dead_letters = len(results), len(dead)
    report.missing = len(expected - set(seen))
    report.duplicates = sum(n - 1 for n in seen.values() if n > 1)
    for key, items in by_key.items():
        items.sort()
        if len({p for p, _, _ in items}) > 1:
            report.keys_on_several_partitions += 1
        highest = -1
        for _, _, seq in items:  # a replay may repeat or go back, never skip ahead
            if seq > highest + 1:
                report.skips_ahead += 1
                report.first_skip = report.first_skip or f"{key}: seq {seq} after highest {highest}"
            highest = max(highest, seq)


def run_mode(cluster, mode: str, model: Path, records: int, faults: int, rng: random.Random, log_dir: Path,
             rate_per_s: float, workers: int, say: Callable[[str], None], batch: int = 32) -> ModeReport:
    from harness.offsets import end_offsets, output_count, wait_committed
    from harness.topics import fresh_topics

    report = ModeReport(mode, records)
    exactly_once = mode == "exactly_once"
    bootstrap = cluster.bootstrap
    topics = fresh_topics(bootstrap, partitions=6, replication=3, prefix=f"chaos-{mode[:3]}-")
    env = worker_env(bootstrap, topics, model, WORKER_INPUT_FORMAT="json", WORKER_DELIVERY=mode,
                     WORKER_ENGINE="torch", WORKER_TORCH_THREADS="1", WORKER_COMPILE="off",
                     WORKER_BATCH_MAX_MESSAGES=str(batch), WORKER_BATCH_MAX_WAIT_MS="20",
                     WORKER_KAFKA_PRODUCER_TRANSACTION_TIMEOUT_MS=str(TRANSACTION_TIMEOUT_S * 1000))
    (log_dir / mode).mkdir(parents=True, exist_ok=True)
    pool = Workers(env, log_dir / mode, exactly_once, f"chaos-{topics['input']}")
    sampler: OutputSampler | None = None
    slots = [f"w{i}" for i in range(workers)]
    try:
        pool.begin(slots)
        done, errors = threading.Event(), []
        inputs = reviews(records)
        # The producer starts once every worker has loaded its model and joined: the faults then hit a
        # stream that flows, not workers still starting.
        if recovered_after(lambda: group_size(bootstrap, env["WORKER_GROUP_ID"]) >= workers, time.monotonic(),
                           600) is None:
            raise RuntimeError(f"the {workers} workers did not all join within 600 s; see {log_dir / mode}")
        started = time.monotonic()
        paced_producer(bootstrap, topics["input"], inputs, rate_per_s, done, errors)
        # Fault times: drawn before anything runs (the seed decides them), spread over the producing time
        # that is left once the first results are out (the workers load their model first).
        shares = sorted(rng.uniform(0.05, 0.9) for _ in range(faults))
        kinds = [rng.choice(FAULTS) for _ in range(faults)]
        first = recovered_after(lambda: output_count(bootstrap, topics["output"]) > 0, started, 120)
        if first is None:
            raise RuntimeError(f"no result within 120 s of the start; see {log_dir / mode}")
        report.first_result_s = first
        flowing = time.monotonic()
        starts: list[float] = []
        sampler = OutputSampler(bootstrap, topics["output"])
        producing_left_s = max(records / rate_per_s - first, 10.0)
        for share, kind in zip(shares, kinds):
            wait = flowing + share * producing_left_s - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            fault_start = time.monotonic()
            fault = inject(cluster, pool, kind, rng, topics["input"], slots)
            fault.at_s = round(fault_start - started, 1)
            starts.append(fault_start)
            say(f"  {mode} fault {len(report.faults) + 1}/{faults} at {fault.at_s:.0f} s: {kind} {fault.target}"
                f" {fault.note} (took {fault.took_s:.1f} s)")
            report.faults.append(fault)
        if not done.wait(records / rate_per_s + 600):
            report.problems.append("the producer did not finish")
        report.problems.extend(f"producer: {e}" for e in errors)
        end = end_offsets(bootstrap, topics["input"])
        wait = wait_committed(bootstrap, env["WORKER_GROUP_ID"], topics["input"], end,
                              timeout_s=max(300, records / 20), stall_s=180)
        report.complete, report.complete_reason = wait.complete, wait.reason
        sampler.stop()
        for fault, (fault_start, window_end) in zip(report.faults, zip(starts, [*starts[1:], time.monotonic()])):
            fault.stall_s, fault.recovered_s = sampler.longest_stall(fault_start, min(window_end, fault_start + 120))
        report.seconds = round(time.monotonic() - started, 1)
        report.throughput_per_s = round(records / report.seconds, 1)
        if not wait.complete:
            report.problems.append(f"stream did not complete: {wait.reason}")
        pool.stop_all()
    finally:
        if sampler is not None:
            sampler.stop()
        pool.kill_all()
    report.exits = pool.exits
    report.restarts = sum(pool.starts.values()) - len(slots) - pool.starts["join"]
    for e in report.exits:
        if not e.explained:
            report.problems.append(f"unexplained exit of {e.slot}: {e.code} after {e.cause}: {e.last_line!r}")
    if exactly_once:
        # A worker SIGKILLed mid-transaction whose restart was killed too before it fenced its id leaves a
        # transaction open until the coordinator aborts it (transaction.timeout.ms): until then read_committed
        # stops at the last stable offset, and its results are not readable yet, not lost.
        report.open_transaction_wait_s = wait_stable(bootstrap, topics["output"], TRANSACTION_TIMEOUT_S + 60)
        if report.open_transaction_wait_s is None:
            report.problems.append(f"a transaction still open on {topics['output']} "
                                   f"{TRANSACTION_TIMEOUT_S + 60} s after the workers stopped")
    results = read_to_end(bootstrap, topics["output"], read_committed=True)
    dead = read_to_end(bootstrap, topics["dlq"], read_committed=True)
    verify(report, results, dead, records)
    if exactly_once:
        report.read_uncommitted_records = len(read_to_end(bootstrap, topics["output"], read_committed=False))
    if report.missing:
        report.problems.append(f"{report.missing} inputs without a result or a dead letter")
    if exactly_once and report.duplicates:
        report.problems.append(f"{report.duplicates} duplicate results under read_committed")
    if not exactly_once and report.skips_ahead:
        report.problems.append(f"{report.skips_ahead} results out of key order, first: {report.first_skip}")
    if report.keys_on_several_partitions:
        report.problems.append(f"{report.keys_on_several_partitions} keys on several output partitions")
    return report


def inject(cluster, pool: Workers, kind: str, rng: random.Random, input_topic: str, slots: list[str]) -> Fault:
    """Do one fault and undo it (restart, resume); returns it with ``took_s`` (seconds it took)."""
    began = time.monotonic()
    fault = Fault(kind, "", 0.0)
    if kind in ("worker_sigkill", "worker_sigterm"):
        slot = rng.choice(slots)
        fault.target = slot
        if kind == "worker_sigkill":
            pool.kill(slot)
        else:
            pool.terminate(slot)
        pool.start(slot)
    elif kind == "worker_join":
        if "join" in pool.running():
            fault.target, fault.note = "join", "(leaves: SIGTERM)"
            pool.terminate("join")
        else:
            fault.target = "join"
            pool.start("join")
    else:
        leader = cluster.leader_of(input_topic)
        node = leader if leader is not None and rng.random() < 0.5 else rng.choice(sorted(cluster.nodes))
        fault.target = f"node-{node}"
        fault.note = "(leader)" if node == leader else ""
        down_s = round(rng.uniform(2, 8), 1)
        if kind == "broker_sigkill":
            cluster.kill_node(node)
            time.sleep(down_s)
            cluster.start_node(node)
        else:
            cluster.pause_node(node)
            time.sleep(down_s)
            cluster.resume_node(node)
        fault.note = f"{fault.note} {down_s} s".strip()
    fault.took_s = round(time.monotonic() - began, 1)
    return fault


def recovered_after(grown: Callable[[], bool], since: float, timeout_s: float) -> float | None:
    """Seconds from ``since`` until ``grown()``; None if not within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if grown():
                return round(time.monotonic() - since, 1)
        except Exception as exc:  # noqa: BLE001 - metadata unreadable during a fault: try again
            log.debug("not readable now: %s", exc)
        time.sleep(0.3)
    return None


def group_size(bootstrap: str, group: str) -> int:
    """Members of the group that own partitions now."""
    from harness.offsets import group_assignments

    return sum(1 for member in group_assignments(bootstrap, group) if member)


def run(seed: int, records: int, faults: int, modes: list[str], base_port: int, work_dir: Path,
        rate_per_s: float, workers: int = 3, say: Callable[[str], None] = print, batch: int = 32) -> dict[str, Any]:
    """The whole chaos run: the cluster up, each mode in turn, the cluster down; the report as a dict."""
    from harness.cluster import LocalCluster
    from harness.models import build_tiny_model

    rng = random.Random(seed)
    say(f"chaos: seed {seed} (repeat with --seed {seed}), {records} records, {faults} faults per mode, "
        f"modes {', '.join(modes)}")
    model = build_tiny_model(work_dir / "tiny-model")
    reports = []
    began = time.monotonic()
    with LocalCluster(base_port, work_dir / "kafka") as cluster:
        say(f"chaos: cluster up at {cluster.bootstrap} after {time.monotonic() - began:.0f} s")
        for mode in modes:
            reports.append(run_mode(cluster, mode, model, records, faults, rng, work_dir / "logs", rate_per_s,
                                    workers, say, batch))
    out: dict[str, Any] = {"seed": seed, "records": records, "faults": faults, "workers": workers,
                           "rate_per_s": rate_per_s, "batch_max_messages": batch, "logs": str(work_dir / "logs"),
                           "modes": [asdict(r) for r in reports]}
    return out


def summary(report: dict[str, Any]) -> str:
    lines = [(f"chaos run, seed {report['seed']}: {report['records']} records per mode, {report['workers']} workers, "
              "3-node KRaft cluster (replication 3, min.insync.replicas 2)")]
    for m in report["modes"]:
        kinds = Counter(f["kind"] for f in m["faults"])
        codes = Counter(f"{e['code']} after {e['cause']}" for e in m["exits"])
        lines.append(
            f"{m['mode']}: {'PASS' if not m['problems'] else 'FAIL'}; {m['results']} results, "
            f"{m['dead_letters']} dead letters, {m['missing']} missing, {m['duplicates']} duplicates, "
            f"{m['skips_ahead']} key-order skips; {m['restarts']} restarts; {m['throughput_per_s']}/s over "
            f"{m['seconds']} s")
        lines.append(f"  faults: {dict(kinds)}; worker exits: {dict(codes)}")
        stalls = sorted(f["stall_s"] for f in m["faults"])
        recovered = sorted(f["recovered_s"] for f in m["faults"] if f["recovered_s"] is not None)
        if stalls:
            lines.append(f"  longest output stall after a fault: median {stalls[len(stalls) // 2]} s, max {stalls[-1]} s; "
                         f"output growing again after it: max {recovered[-1] if recovered else '-'} s from the fault")
        if m["read_uncommitted_records"] is not None:
            lines.append(f"  read_uncommitted sees {m['read_uncommitted_records']} records (aborted included)")
        if (m["open_transaction_wait_s"] or 0) >= 1:
            lines.append(f"  a transaction stayed open {m['open_transaction_wait_s']} s after the workers stopped "
                         "(a SIGKILLed worker's, aborted by the coordinator's timeout)")
        lines.extend(f"  problem: {p}" for p in m["problems"])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import os

    parser = argparse.ArgumentParser(prog="chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=None, help="the faults' seed (default: random, printed)")
    parser.add_argument("--records", type=int, default=20000, help="records per mode")
    parser.add_argument("--faults", type=int, default=12, help="faults per mode")
    parser.add_argument("--mode", choices=(*MODES, "both"), default="both")
    parser.add_argument("--rate", type=float, default=200.0, help="records produced per second")
    parser.add_argument("--batch", type=int, default=32,
                        help="the workers' WORKER_BATCH_MAX_MESSAGES (small: many windows in flight at each fault)")
    parser.add_argument("--base-port", type=int, default=int(os.environ.get("TEST_KAFKA_PORT", "19092")) + 60)
    parser.add_argument("--out", type=Path, default=None, help="the JSON report (default: benchmarks/results/)")
    parser.add_argument("--keep", type=Path, default=None,
                        help="a new directory for the run (the workers' and brokers' logs), kept afterwards")
    args = parser.parse_args(argv)
    # A SIGTERM (an impatient operator, a CI timeout) unwinds like Ctrl-C: the workers, then the brokers, are
    # stopped by the `finally` blocks instead of being left running.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    modes = list(MODES) if args.mode == "both" else [args.mode]
    with contextlib.ExitStack() as stack:
        if args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=False)
            tmp = str(args.keep)
        else:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="chaos-"))
        report = run(seed, args.records, args.faults, modes, args.base_port, Path(tmp), args.rate,
                     say=lambda line: print(line, flush=True), batch=args.batch)
        text = summary(report)
        failed = any(m["problems"] for m in report["modes"])
        if failed and args.keep is None:
            print(f"chaos: logs deleted with {tmp}; --keep DIR keeps them", file=sys.stderr)
    out = args.out or RESULTS_DIR / f"chaos-{time.strftime('%Y%m%d-%H%M%S')}-seed{seed}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(text)
    print(f"chaos: report in {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
