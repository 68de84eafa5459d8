#!/usr/bin/env python3
"""Throughput, latency, start-up and memory of the worker: one run, one machine, same texts, same model.

    .venv/bin/python benchmarks/bench.py [--messages N] [--model DIR] [--data TSV]
                                         [--skip-kafka] [--bootstrap HOST:PORT] [--memory-texts N]

Parts (see benchmarks/README.md):
  1. seed: ``transformers.pipeline("text-classification")`` called once per message;
  2. each installed engine and precision in memory, in its own process (benchmarks/engine_run.py), at
     windows of 1, 8, 32 and 500 texts (and, with ``--memory-texts``, its RSS over that many texts);
  3. ``WORKER_ENGINE=auto``: what it measured and chose, and the worker's batching + that classifier over
     the same texts in memory (no Kafka);
  4. start-up of ``worker run`` to ready, cold (empty engine cache: export, quantize, measure) and warm;
  5. the worker end to end through a real broker (``python -m worker.cli run`` as a subprocess, ``auto``):
     N messages pre-loaded into a fresh input topic, time until the N-th result is read back; its RSS
     after warm-up and at the end;
  6. end-to-end latency p50/p95/p99 at a steady 100 messages/s and at half of (5);
  7. padding efficiency and mean batch size, scraped from the worker's Prometheus metrics.

Writes ``benchmarks/results/latest.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STAND_IN = ROOT.parent / "shared" / "models" / "koelectra-small-v3-nsmc-scratch"
NSMC_TEST = ROOT.parent / "shared" / "data" / "ratings_test.txt"
SAMPLE = ROOT / "tests" / "data" / "nsmc_sample.tsv"
TOKENIZER_DIR = ROOT / "tests" / "data" / "koelectra-v3-tokenizer"
RESULTS = ROOT / "benchmarks" / "results"
KAFKA_SH = ROOT / "deploy" / "kafka" / "kafka.sh"
OWN_BROKER = {"KAFKA_PORT": "29092", "KAFKA_CONTROLLER_PORT": "29093", "KAFKA_DATA_DIR": "/tmp/bench-kafka"}


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- inputs
def random_weight_model(target: Path) -> Path:
    """KoELECTRA-Small-v3's full configuration with random weights (when the stand-in is absent)."""
    if (target / "config.json").is_file():
        return target
    import torch
    from transformers import ElectraConfig, ElectraForSequenceClassification

    config = ElectraConfig(
        vocab_size=35000, embedding_size=128, hidden_size=256, num_hidden_layers=12, num_attention_heads=4,
        intermediate_size=1024, max_position_embeddings=512, id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1},
    )
    torch.manual_seed(0)
    target.mkdir(parents=True, exist_ok=True)
    ElectraForSequenceClassification(config).eval().save_pretrained(target)
    for name in os.listdir(TOKENIZER_DIR):
        shutil.copy(TOKENIZER_DIR / name, target / name)
    return target


def load_texts(path: Path, count: int) -> list[str]:
    """``count`` texts from an NSMC-format TSV, cycling through the file if it has fewer."""
    from worker.datasets import read_nsmc

    texts = [text for text, _ in read_nsmc(path)]
    return [texts[i % len(texts)] for i in range(count)]


def machine_info() -> dict[str, Any]:
    import torch
    import transformers

    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 0
    from worker.engines.cache import library_versions
    from worker.engines.device import cpu_supports_bf16
    from worker.engines.loading import LIBRARIES
    from worker.engines.selection import machine

    return {
        "cpu": cpu,
        "cores": cores,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "cpu_bf16": cpu_supports_bf16(),
        "cpu_flags": machine()["cpu_flags"],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "libraries": library_versions(*LIBRARIES),
        "platform": platform.platform(),
    }


# --------------------------------------------------------------------------- part 1
def bench_pipeline(model: Path, texts: list[str]) -> dict[str, Any]:
    """The seed's way: a transformers pipeline called once per message."""
    from transformers import pipeline

    classify = pipeline("text-classification", model=str(model), device=-1)
    for text in texts[:10]:
        classify(text)
    started = time.perf_counter()
    for text in texts:
        classify(text)
    elapsed = time.perf_counter() - started
    return {"messages": len(texts), "seconds": round(elapsed, 3), "messages_per_s": round(len(texts) / elapsed, 1),
            "dtype": str(classify.model.dtype).removeprefix("torch.")}


# --------------------------------------------------------------------------- part 2
def bench_engines(model: Path, data: Path, cache_dir: Path, memory_texts: int) -> dict[str, Any]:
    """Every installed engine and precision in memory, each in its own process: speed per window size, RSS."""
    from worker.engines.registry import ENGINES, unavailable
    from worker.engines.selection import Candidate

    results: dict[str, Any] = {}
    for engine, spec in ENGINES.items():
        for precision in spec.precisions:
            name = f"{engine}/{precision}"
            why = unavailable(Candidate(engine, precision))
            if why:
                results[name] = {"skipped": why}
                log(f"part 2: {name} skipped: {why}")
                continue
            log(f"part 2: {name} in memory, windows 1, 8, 32, 500" + (f", RSS over {memory_texts} texts" if memory_texts else ""))
            command = [sys.executable, str(ROOT / "benchmarks" / "engine_run.py"), "--model", str(model), "--data", str(data),
                       "--engine", engine, "--dtype", precision, "--cache-dir", str(cache_dir),
                       "--memory-texts", str(memory_texts)]
            run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=3600)
            if run.returncode != 0:
                results[name] = {"error": run.stderr.strip().splitlines()[-1:] or ["?"]}
                log(f"part 2: {name} failed: {results[name]['error']}")
                continue
            results[name] = json.loads(run.stdout.strip().splitlines()[-1])
            log(f"part 2: {name}: {results[name]['rates']} texts/s")
    return results


# --------------------------------------------------------------------------- part 3
def bench_in_memory(settings: Any, texts: list[str]) -> dict[str, Any]:
    """The worker's batching and classifier, in memory: windows closed at the worker's limits."""
    import torch

    from worker.pipeline.batch import Batcher
    from worker.engines.base import classify_encoded, to_prediction
    from worker.engines.loading import load_classifier

    classifier = load_classifier(settings)
    classifier.warm_up()
    info = dict(classifier.info)
    selection = getattr(classifier, "selection", None)
    chunk = 1000  # the loop tokenizes what one poll returns (worker.app.POLL_CHUNK)
    real = padded = windows = 0

    def close(window: list[Any]) -> None:
        nonlocal real, padded, windows
        outcome = classify_encoded(classifier, window, settings.sub_batch_max_tokens)
        for enc, probs in zip(window, outcome.probabilities):
            to_prediction(probs, classifier.labels, enc)
        real += outcome.real_tokens
        padded += outcome.padded_tokens
        windows += 1

    def run(sample: list[str]) -> None:
        # The loop's own batcher and closing rules (worker.app.Worker._accept) under full load:
        # the wait never expires, windows close on messages or tokens.
        batcher: Batcher[Any] = Batcher(settings.batch_max_messages, settings.batch_max_tokens, float("inf"))
        for start in range(0, len(sample), chunk):
            for encoding in classifier.encode(sample[start : start + chunk]):
                if batcher.would_overflow(len(encoding.ids)):
                    close(batcher.take().items)
                batcher.add(encoding, len(encoding.ids))
                if batcher.is_full():
                    close(batcher.take().items)
        if len(batcher):
            close(batcher.take().items)

    run(texts[:1000])  # warm every shape the run will see first
    real = padded = windows = 0
    started = time.perf_counter()
    run(texts)
    elapsed = time.perf_counter() - started
    result = {
        "messages": len(texts),
        "seconds": round(elapsed, 3),
        "messages_per_s": round(len(texts) / elapsed, 1),
        "padding_efficiency": round(real / padded, 4) if padded else None,
        "mean_batch_messages": round(len(texts) / windows, 1) if windows else None,
        "torch_threads": torch.get_num_threads(),
        "model_info": info,
        "selection": selection.to_json() if selection else None,
        "selection_table": selection.table() if selection else None,
    }
    del classifier
    return result


# --------------------------------------------------------------------------- Kafka helpers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def broker_up(bootstrap: str) -> bool:
    from confluent_kafka.admin import AdminClient

    try:
        AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=3)
        return True
    except Exception:  # noqa: BLE001
        return False


def start_own_broker() -> tuple[str, bool]:
    env = {**os.environ, **OWN_BROKER}
    bootstrap = f"127.0.0.1:{OWN_BROKER['KAFKA_PORT']}"
    if broker_up(bootstrap):
        return bootstrap, False
    log(f"starting a broker on {bootstrap} (deploy/kafka/kafka.sh start)")
    subprocess.run(["bash", str(KAFKA_SH), "start"], env=env, check=True, stdout=sys.stderr)
    return bootstrap, True


def stop_own_broker() -> None:
    env = {**os.environ, **OWN_BROKER}
    subprocess.run(["bash", str(KAFKA_SH), "stop"], env=env, check=False, stdout=sys.stderr)


def create_topics(bootstrap: str, names: dict[str, int]) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(n, num_partitions=p, replication_factor=1) for n, p in names.items()])
    for future in futures.values():
        future.result(timeout=30)


def delete_topics(bootstrap: str, names: list[str]) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})  # kept alive until the futures resolve
    try:
        for future in admin.delete_topics(names).values():
            future.result(timeout=30)
    except Exception as exc:  # noqa: BLE001
        log(f"could not delete topics {names}: {exc}")


def scrape(port: int) -> dict[str, float]:
    """Prometheus text format → {name{labels}: value}."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values: dict[str, float] = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                values[name] = float(value)
            except ValueError:
                pass
    return values


def metric(values: dict[str, float], name: str) -> float:
    return sum(v for k, v in values.items() if k == name or k.startswith(name + "{"))


def model_info(values: dict[str, float]) -> dict[str, str]:
    """The labels of ``worker_model_info`` (engine, precision, selection, ...) from a scrape."""
    return {m.group(1): m.group(2) for k in values if k.startswith("worker_model_info{")
            for m in re.finditer(r'(\w+)="([^"]*)"', k)}


def default_model() -> tuple[Path, str]:
    """The stand-in model when present, else KoELECTRA-Small-v3's configuration with random weights."""
    if STAND_IN.is_dir():
        return STAND_IN, "stand-in koelectra-small-v3-nsmc-scratch"
    return random_weight_model(Path(tempfile.gettempdir()) / "koelectra-small-v3-random"), \
        "KoELECTRA-Small-v3 config, random weights"


def default_data() -> Path:
    return NSMC_TEST if NSMC_TEST.is_file() else SAMPLE


class OutputReader(threading.Thread):
    """Reads the output topic from the beginning; records (receive time, key, output record timestamp in ms).

    Latency is measured outside the worker: from the input record's timestamp (taken when the bench
    produced it) to the output record's (set by the worker's producer when it produced the result).
    """

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        super().__init__(name="output-reader", daemon=True)
        from confluent_kafka import Consumer, TopicPartition, OFFSET_BEGINNING

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
            rows = []
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


def produce_all(bootstrap: str, topic: str, texts: list[str], prefix: str) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.num.messages": 10000,
                         "queue.buffering.max.messages": 1_000_000, "compression.type": "none"})
    for i, text in enumerate(texts):
        while True:
            try:
                producer.produce(topic, text.encode("utf-8"), key=f"{prefix}-{i}".encode())
                break
            except BufferError:
                producer.poll(0.05)
    if producer.flush(60) != 0:
        raise RuntimeError("pre-loading the input topic did not finish")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = (len(ordered) - 1) * q
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


# --------------------------------------------------------------------------- parts 3-5
def worker_process_env(bootstrap: str, topics: dict[str, str], model: Path, port: int, cache_dir: Path, group: str) -> dict[str, str]:
    return {
        **os.environ,
        "WORKER_BOOTSTRAP_SERVERS": bootstrap,
        "WORKER_INPUT_TOPIC": topics["in"],
        "WORKER_OUTPUT_TOPIC": topics["out"],
        "WORKER_DLQ_TOPIC": topics["dlq"],
        "WORKER_GROUP_ID": group,
        "WORKER_MODEL": str(model),
        "WORKER_ENGINE_CACHE_DIR": str(cache_dir),
        "WORKER_METRICS_PORT": str(port),
        "WORKER_METRICS_HOST": "127.0.0.1",
        "WORKER_AUTO_OFFSET_RESET": "earliest",
    }


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def stop_worker(worker: subprocess.Popen) -> int | None:
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(10)
    return worker.returncode


def bench_startup(bootstrap: str, model: Path, cache_dir: Path, timeout: float) -> dict[str, Any]:
    """``worker run`` from launch to /readyz 200: cold (``cache_dir`` empty) then warm (the same directory again)."""
    run_id = uuid.uuid4().hex[:8]
    topics = {"in": f"bench-start-in-{run_id}", "out": f"bench-start-out-{run_id}", "dlq": f"bench-start-dlq-{run_id}"}
    create_topics(bootstrap, {topics["in"]: 1, topics["out"]: 1, topics["dlq"]: 1})
    result: dict[str, Any] = {}
    try:
        for kind in ("cold", "warm"):
            port = free_port()
            env = worker_process_env(bootstrap, topics, model, port, cache_dir, f"bench-start-{run_id}")
            with open(RESULTS / f"worker-start-{kind}.log", "w") as worker_log:
                launched = time.time()
                worker = subprocess.Popen([sys.executable, "-m", "worker.cli", "run"], cwd=ROOT, env=env,
                                          stdout=worker_log, stderr=subprocess.STDOUT, start_new_session=True)
                try:
                    while time.time() < launched + timeout:
                        if worker.poll() is not None:
                            raise RuntimeError(f"worker exited with {worker.returncode}; see {worker_log.name}")
                        try:
                            if urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2).status == 200:
                                break
                        except OSError:
                            pass
                        time.sleep(0.05)
                    else:
                        raise RuntimeError(f"worker not ready after {timeout}s")
                    ready_s = round(time.time() - launched, 2)
                    values = scrape(port)
                    info = model_info(values)
                    result[kind] = {"ready_s": ready_s, "rss_mb_at_ready": rss_mb(worker.pid), "model_info": info}
                finally:
                    stop_worker(worker)
            log(f"start-up {kind}: ready after {result[kind]['ready_s']} s, RSS {result[kind]['rss_mb_at_ready']} MB, "
                f"{info.get('engine')}/{info.get('precision')} ({info.get('selection')})")
    finally:
        delete_topics(bootstrap, list(topics.values()))
    return result


def bench_kafka(args: argparse.Namespace, bootstrap: str, model: Path, texts: list[str], cache_dir: Path,
                extra_env: dict[str, str] | None = None, latency: bool = True,
                log_name: str = "worker.log") -> dict[str, Any]:
    """Parts 5-7 with one ``worker run`` process: a pre-loaded backlog, then (``latency``) steady loads."""
    run_id = uuid.uuid4().hex[:8]
    topics = {"in": f"bench-in-{run_id}", "out": f"bench-out-{run_id}", "dlq": f"bench-dlq-{run_id}"}
    partitions = args.partitions
    create_topics(bootstrap, {topics["in"]: partitions, topics["out"]: partitions, topics["dlq"]: 1})
    try:
        log(f"pre-loading {len(texts)} messages into {topics['in']}")
        produce_all(bootstrap, topics["in"], texts, "load")
        reader = OutputReader(bootstrap, topics["out"], partitions)
        reader.start()
        port = free_port()
        env = {**worker_process_env(bootstrap, topics, model, port, cache_dir, f"bench-worker-{run_id}"),
               **(extra_env or {})}
        RESULTS.mkdir(parents=True, exist_ok=True)
        worker_log = open(RESULTS / log_name, "w")
        launched = time.time()
        worker = subprocess.Popen([sys.executable, "-m", "worker.cli", "run"], cwd=ROOT, env=env,
                                  stdout=worker_log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return _drive_worker(args, bootstrap, worker, port, reader, topics, texts, launched, latency)
        finally:
            reader.stopped.set()
            stop_worker(worker)
            worker_log.close()
    finally:
        if not args.keep_topics:
            delete_topics(bootstrap, list(topics.values()))


def _drive_worker(args: argparse.Namespace, bootstrap: str, worker: subprocess.Popen, port: int,
                  reader: OutputReader, topics: dict[str, str], texts: list[str], launched: float,
                  latency: bool = True) -> dict[str, Any]:
    n = len(texts)
    ready_at = first_consumed_at = None
    deadline = time.time() + args.timeout
    # Readiness (model loaded and warmed), then the first consumed record, polled every 10 ms.
    while time.time() < deadline:
        if worker.poll() is not None:
            raise RuntimeError(f"worker exited with {worker.returncode}; see {RESULTS / 'worker.log'}")
        try:
            values = scrape(port)
        except OSError:
            time.sleep(0.05)
            continue
        now = time.time()
        if ready_at is None and metric(values, "worker_ready") >= 1:
            ready_at = now
        if metric(values, "worker_messages_consumed_total") > 0:
            first_consumed_at = now
            ready_at = ready_at or now
            break
        time.sleep(0.01)
    else:
        raise RuntimeError("worker did not start consuming before the timeout")
    log(f"worker ready {ready_at - launched:.1f}s after launch; consuming")
    rss_at_ready = rss_mb(worker.pid)
    profiler = None
    if args.profile:
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        profiler = subprocess.Popen([spy, "record", "--pid", str(worker.pid), "--threads", "--idle",
                                     "--rate", "50", "--format", "speedscope",
                                     "-o", str(RESULTS / "worker-profile.speedscope.json")],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while reader.count() < n and time.time() < deadline:
        if worker.poll() is not None:
            raise RuntimeError(f"worker exited with {worker.returncode}; see {RESULTS / 'worker.log'}")
        time.sleep(0.005)
    if reader.count() < n:
        raise RuntimeError(f"only {reader.count()} of {n} results arrived before the timeout")
    records = reader.snapshot()
    last_at = records[n - 1][0]
    if profiler is not None:
        profiler.send_signal(signal.SIGINT)
        profiler.wait(60)
    full = scrape(port)
    elapsed = last_at - first_consumed_at
    throughput = n / elapsed
    real, padded = metric(full, "worker_real_tokens_total"), metric(full, "worker_padded_tokens_total")
    batches = metric(full, "worker_batch_size_messages_count")
    info = model_info(full)
    result: dict[str, Any] = {
        "messages": n,
        "seconds": round(elapsed, 3),
        "messages_per_s": round(throughput, 1),
        "seconds_from_ready": round(last_at - ready_at, 3),
        "messages_per_s_from_ready": round(n / (last_at - ready_at), 1),
        "startup_s": round(ready_at - launched, 2),
        "padding_efficiency": round(real / padded, 4) if padded else None,
        "mean_batch_messages": round(metric(full, "worker_batch_size_messages_sum") / batches, 1) if batches else None,
        "batches": int(batches),
        "mean_batch_inference_ms": round(1000 * metric(full, "worker_inference_duration_seconds_sum")
                                         / max(1.0, metric(full, "worker_inference_duration_seconds_count")), 2),
        "worker_model_info": info,
        "partitions": args.partitions,
        "rss_mb_after_warm_up": rss_at_ready,
    }
    log(f"end to end: {n} messages in {elapsed:.2f}s = {throughput:.0f}/s")

    result["rss_mb_after_full_load"] = rss_mb(worker.pid)
    if not latency:
        return result
    # Part 6: steady offered load at 100/s, then at a fraction of (5).
    full_window_ms = result["mean_batch_inference_ms"]
    result["latency_runs"] = []
    for label, rate, target_ms, target in (
        ("100/s", 100.0, 100.0, "≤ 100 ms"),
        (f"{args.load_fraction:g} of max", throughput * args.load_fraction, 4 * full_window_ms,
         f"≤ 4 × {full_window_ms} ms full window"),
    ):
        run = offer_load(args, bootstrap, port, reader, topics, texts, rate, f"lat{len(result['latency_runs'])}")
        run.update(label=label, p99_target_ms=round(target_ms, 1), target=target,
                   met=run["p99_ms"] <= target_ms if run["p99_ms"] == run["p99_ms"] else False)
        result["latency_runs"].append(run)
        log(f"latency at {label}: p50 {run['p50_ms']} ms, p95 {run['p95_ms']} ms, p99 {run['p99_ms']} ms ({target})")
    result["latency"] = result["latency_runs"][-1]
    result["rss_mb_end"] = rss_mb(worker.pid)
    return result


def offer_load(args: argparse.Namespace, bootstrap: str, port: int, reader: OutputReader, topics: dict[str, str],
               texts: list[str], rate: float, prefix: str) -> dict[str, Any]:
    """Offer ``rate`` messages/s at a steady pace for ``--latency-seconds``; latency percentiles of their results."""
    from confluent_kafka import Producer

    count = max(200, int(rate * args.latency_seconds))
    log(f"latency: offering {rate:.0f} msg/s for {count / rate:.0f}s ({count} messages)")
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "acks": "all"})
    sent: dict[bytes, float] = {}
    before = scrape(port)
    started = time.time()
    for i in range(count):
        due = started + i / rate
        pause = due - time.time()
        if pause > 0:
            time.sleep(pause)
        key = f"{prefix}-{i}".encode()
        sent[key] = time.time()
        producer.produce(topics["in"], texts[i % len(texts)].encode("utf-8"), key=key,
                         timestamp=int(sent[key] * 1000))  # the input record's timestamp, as the worker sees it
        producer.poll(0)
    offered_for = time.time() - started
    producer.flush(30)
    wait_until = time.time() + 60
    while time.time() < wait_until:
        if sum(1 for _, key, _ in reader.snapshot() if key in sent) >= count:
            break
        time.sleep(0.05)
    after = scrape(port)
    latency_rows = [(at, key, field) for at, key, field in reader.snapshot() if key in sent]
    warm = int(0.05 * len(latency_rows))  # the first 5 % settle the loop into the new rate
    measured = latency_rows[warm:]
    # (latency ms, seconds into the run it was offered at)
    timed = [(stamp - 1000 * sent[key], sent[key] - started) for _, key, stamp in measured if stamp is not None]
    field_ms = [ms for ms, _ in timed]
    # When the slowest results were offered: one cluster means a stall of the machine or the broker,
    # spread-out ones the loop itself.
    slowest = sorted(timed, reverse=True)[: max(1, len(timed) // 100)]
    received_ms = [1000 * (at - sent[key]) for at, key, _ in measured]
    d = {name: metric(after, name) - metric(before, name) for name in (
        "worker_inference_duration_seconds_sum", "worker_inference_duration_seconds_count",
        "worker_batch_size_messages_sum", "worker_batch_size_messages_count",
        "worker_real_tokens_total", "worker_padded_tokens_total")}
    batch_ms = 1000 * d["worker_inference_duration_seconds_sum"] / max(1.0, d["worker_inference_duration_seconds_count"])
    return {
        "offered_per_s": round(count / offered_for, 1),
        "messages": count,
        "received": len(latency_rows),
        "p50_ms": round(percentile(field_ms, 0.50), 1),
        "p95_ms": round(percentile(field_ms, 0.95), 1),
        "p99_ms": round(percentile(field_ms, 0.99), 1),
        "receive_p50_ms": round(percentile(received_ms, 0.50), 1),
        "receive_p95_ms": round(percentile(received_ms, 0.95), 1),
        "receive_p99_ms": round(percentile(received_ms, 0.99), 1),
        "slowest_1_percent": [[round(ms, 1), round(at, 2)] for ms, at in slowest],  # [latency ms, offered at s]
        "mean_batch_messages": round(d["worker_batch_size_messages_sum"] / max(1.0, d["worker_batch_size_messages_count"]), 1),
        "mean_batch_inference_ms": round(batch_ms, 2),
        "padding_efficiency": round(d["worker_real_tokens_total"] / d["worker_padded_tokens_total"], 4)
        if d["worker_padded_tokens_total"] else None,
    }


# --------------------------------------------------------------------------- report
def table(results: dict[str, Any]) -> str:
    m = results["machine"]
    p1, p3, p5 = results.get("pipeline"), results.get("in_memory"), results.get("end_to_end")
    engines, startup = results.get("engines") or {}, results.get("startup")
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, bf16 flags: {m['cpu_bf16']}; torch {m['torch']}, "
        f"transformers {m['transformers']}; model {results['model_kind']}; texts {results['data_kind']}; {results['timestamp']}",
        "",
    ]
    if engines:
        lines += ["| engine/precision | window 1 | window 8 | window 32 | window 500 | RSS after warm-up (MB) | RSS at end (MB) |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for name, e in engines.items():
            if "rates" not in e:
                lines.append(f"| {name} | – | – | – | – | {e.get('skipped') or e.get('error')} | |")
                continue
            rates = [str(e["rates"].get(w, "–")) for w in ("1", "8", "32", "500")]
            memory = e.get("memory")
            end = f"{e['rss_mb_end']} after {memory['texts']} texts" if memory else e["rss_mb_end"]
            lines.append(f"| {name} | {' | '.join(rates)} | {e['rss_mb_after_warm_up']} | {end} |")
        lines.append("")
    lines += ["| # | what | messages | messages/s | notes |", "|---|---|---:|---:|---|"]
    if p1:
        lines.append(f"| 1 | seed: `pipeline()` once per message | {p1['messages']} | {p1['messages_per_s']} | dtype {p1['dtype']} |")
    if p3:
        info = p3["model_info"]
        lines.append(f"| 3 | worker batching + `auto`'s choice ({info.get('engine')}/{info.get('precision')}), in memory | "
                     f"{p3['messages']} | {p3['messages_per_s']} | padding eff. {p3['padding_efficiency']}, "
                     f"mean batch {p3['mean_batch_messages']} |")
    if startup:
        cold, warm = startup["cold"], startup["warm"]
        lines.append(f"| 4 | start-up to ready, cold / warm | – | – | **{cold['ready_s']} s / {warm['ready_s']} s** "
                     f"(targets ≤ 60 / ≤ 15 s); RSS at ready {cold['rss_mb_at_ready']} / {warm['rss_mb_at_ready']} MB |")
    if p5:
        info = p5["worker_model_info"]
        lines.append(f"| 5 | worker end to end via Kafka ({info.get('engine')}/{info.get('precision')}, {info.get('selection')}) | "
                     f"{p5['messages']} | {p5['messages_per_s']} | {p5['messages_per_s_from_ready']}/s counting group join; "
                     f"RSS {p5['rss_mb_after_warm_up']} MB after warm-up, {p5.get('rss_mb_end')} MB at the end |")
        for run in p5.get("latency_runs", []):
            lines.append(f"| 6 | latency at {run['offered_per_s']}/s offered ({run['label']}) | {run['messages']} | – | "
                         f"p50 {run['p50_ms']} ms, p95 {run['p95_ms']} ms, **p99 {run['p99_ms']} ms** ({run['target']}: "
                         f"{'met' if run['met'] else 'missed'}); mean window {run['mean_batch_messages']} messages, "
                         f"{run['mean_batch_inference_ms']} ms |")
        lines.append(f"| 7 | padding efficiency / mean batch at full load | {p5['batches']} batches | – | "
                     f"**{p5['padding_efficiency']}** / {p5['mean_batch_messages']} messages, "
                     f"{p5['mean_batch_inference_ms']} ms per batch |")
    p8 = results.get("baseline")
    if p8:
        info = p8["worker_model_info"]
        lines.append(f"| 8 | the torch-engine worker end to end ({info.get('engine')}/{info.get('precision')}; "
                     f"the worker before the engines) | {p8['messages']} | {p8['messages_per_s']} | "
                     f"RSS {p8['rss_mb_after_warm_up']} MB after warm-up, {p8.get('rss_mb_after_full_load')} MB at the end |")
    r = results["ratios"]
    lines += ["", "| ratio | value | target |", "|---|---:|---:|"]
    if "e2e_over_pipeline" in r:
        lines.append(f"| (5)/(1) | {r['e2e_over_pipeline']} | – |")
    if "e2e_over_in_memory" in r:
        lines.append(f"| (5)/(3) | {r['e2e_over_in_memory']} | ≥ 0.9 |")
    if "e2e_over_torch_worker" in r:
        lines.append(f"| (5)/(8) | {r['e2e_over_torch_worker']} | ≥ 1.5 |")
    if "in_memory_over_pipeline" in r:
        lines.append(f"| (3)/(1) | {r['in_memory_over_pipeline']} | – |")
    if p3 and p3.get("selection_table"):
        lines += ["", f"`auto`'s measurement in part 3 ({p3['selection']['seconds']} s):", "", p3["selection_table"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20000, help="messages for parts 3 and 5 (default 20000)")
    parser.add_argument("--pipeline-messages", type=int, default=500, help="messages for part 1 (slow; default 500)")
    parser.add_argument("--memory-texts", type=int, default=0,
                        help="part 2: also classify this many texts per engine and record RSS (e.g. 100000; default 0)")
    parser.add_argument("--model", type=Path, default=None, help="model directory (default: the stand-in, else random weights)")
    parser.add_argument("--data", type=Path, default=None, help="NSMC-format TSV (default: NSMC test, else the repo sample)")
    parser.add_argument("--skip-kafka", action="store_true", help="only the in-memory parts (1-3)")
    parser.add_argument("--skip-pipeline", action="store_true", help="skip part 1")
    parser.add_argument("--skip-engines", action="store_true", help="skip part 2")
    parser.add_argument("--skip-baseline", action="store_true", help="skip part 8 (the torch-engine worker)")
    parser.add_argument("--bootstrap", default=None,
                        help="use this broker (default: start deploy/kafka/kafka.sh on 127.0.0.1:29092, stop it after)")
    parser.add_argument("--partitions", type=int, default=3, help="partitions of the input and output topics")
    parser.add_argument("--load-fraction", type=float, default=0.5, help="offered load for part 6, as a fraction of (5)")
    parser.add_argument("--latency-seconds", type=float, default=60.0, help="how long each load of part 6 is offered")
    parser.add_argument("--timeout", type=float, default=900.0, help="give up on a worker after this many seconds")
    parser.add_argument("--profile", action="store_true", help="py-spy the worker during part 5 (needs py-spy)")
    parser.add_argument("--keep-topics", action="store_true")
    parser.add_argument("--output", type=Path, default=RESULTS / "latest.json")
    args = parser.parse_args(argv)

    from worker.settings import load_settings

    if args.model is None:
        args.model, model_kind = default_model()
    else:
        model_kind = str(args.model)
    if args.data is None:
        args.data = default_data()
    data_kind = f"{args.data.name}" + (" (NSMC test)" if args.data == NSMC_TEST else "")
    # Two fresh engine caches: one for the in-memory parts, one that the Kafka worker starts cold on.
    memory_cache = Path(tempfile.mkdtemp(prefix="bench-engines-"))
    startup_cache = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    settings = load_settings(model=str(args.model), engine_cache_dir=str(memory_cache), engine_remeasure=True)
    texts = load_texts(args.data, args.messages)
    RESULTS.mkdir(parents=True, exist_ok=True)

    results: dict[str, Any] = {
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(),
        "model": str(args.model),
        "model_kind": model_kind,
        "data": str(args.data),
        "data_kind": data_kind,
        "settings": {k: getattr(settings, k) for k in (
            "engine", "dtype", "batch_max_messages", "batch_max_tokens", "batch_max_wait_ms", "sub_batch_max_tokens",
            "max_in_flight_messages", "torch_threads", "device")},
        "ratios": {},
    }
    try:
        if not args.skip_pipeline:
            log(f"part 1: pipeline() once per message, {args.pipeline_messages} messages")
            results["pipeline"] = bench_pipeline(args.model, texts[: args.pipeline_messages])
            log(f"part 1: {results['pipeline']['messages_per_s']}/s")
        if not args.skip_engines:
            results["engines"] = bench_engines(args.model, args.data, memory_cache, args.memory_texts)
        log(f"part 3: auto's measurement, then worker batching + its choice in memory, {len(texts)} messages")
        results["in_memory"] = bench_in_memory(settings, texts)
        log(f"part 3: {results['in_memory']['model_info'].get('engine')}/{results['in_memory']['model_info'].get('precision')}: "
            f"{results['in_memory']['messages_per_s']}/s")
        if not args.skip_kafka:
            started_broker = False
            bootstrap = args.bootstrap
            if bootstrap is None:
                bootstrap, started_broker = start_own_broker()
            try:
                log(f"part 4: start-up cold and warm through {bootstrap}")
                results["startup"] = bench_startup(bootstrap, args.model, startup_cache, args.timeout)
                # The engine of part 3 (auto's choice in this run), so (5)/(3) compares one engine in and
                # out of Kafka: a second measurement at start-up could pick another within the noise.
                info = results["in_memory"]["model_info"]
                pinned = {"WORKER_ENGINE": info.get("engine", "auto"), "WORKER_DTYPE": info.get("precision", "auto")}
                log(f"parts 5-7: end to end through {bootstrap} with {pinned}")
                results["end_to_end"] = bench_kafka(args, bootstrap, args.model, texts, startup_cache, pinned)
                if not args.skip_baseline:
                    # The worker as it was before the engines: torch, its precision measured within torch.
                    log("part 8: the torch-engine worker end to end (the baseline)")
                    results["baseline"] = bench_kafka(args, bootstrap, args.model, texts, startup_cache,
                                                      {"WORKER_ENGINE": "torch", "WORKER_DTYPE": "auto"},
                                                      latency=False, log_name="worker-torch.log")
            finally:
                if started_broker:
                    stop_own_broker()
    finally:
        shutil.rmtree(memory_cache, ignore_errors=True)
        shutil.rmtree(startup_cache, ignore_errors=True)
    r = results["ratios"]
    p1, p3, p5 = results.get("pipeline"), results.get("in_memory"), results.get("end_to_end")
    if p1 and p5:
        r["e2e_over_pipeline"] = round(p5["messages_per_s"] / p1["messages_per_s"], 2)
    if p3 and p5:
        r["e2e_over_in_memory"] = round(p5["messages_per_s"] / p3["messages_per_s"], 3)
    p8 = results.get("baseline")
    if p5 and p8:
        r["e2e_over_torch_worker"] = round(p5["messages_per_s"] / p8["messages_per_s"], 2)
    if p1 and p3:
        r["in_memory_over_pipeline"] = round(p3["messages_per_s"] / p1["messages_per_s"], 2)
    results["table_markdown"] = table(results)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, ensure_ascii=False, indent=2, default=str) + "\n", encoding="utf-8")
    print(results["table_markdown"])
    log(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
