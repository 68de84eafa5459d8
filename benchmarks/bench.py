#!/usr/bin/env python3
"""Throughput and latency benchmark of the worker, one run, one machine, same texts, same model.

    .venv/bin/python benchmarks/bench.py [--messages N] [--model DIR] [--data TSV]
                                         [--skip-kafka] [--bootstrap HOST:PORT]

Parts (see benchmarks/README.md):
  1. seed: ``transformers.pipeline("text-classification")`` called once per message;
  2. the worker's batching + classifier over the same texts in memory (no Kafka);
  3. the worker end to end through a real broker (``python -m worker.cli run`` as a subprocess):
     N messages pre-loaded into a fresh input topic, time until the N-th result is read back;
  4. end-to-end latency p50/p95/p99 at a steady offered load of half of (3);
  5. padding efficiency and mean batch size, scraped from the worker's Prometheus metrics.

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
    from worker.evaluation import read_nsmc

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
    from worker.model import cpu_supports_bf16

    return {
        "cpu": cpu,
        "cores": cores,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "cpu_bf16": cpu_supports_bf16(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
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
def bench_in_memory(settings: Any, texts: list[str]) -> dict[str, Any]:
    """The worker's batching and classifier, in memory: windows closed at the worker's limits."""
    import torch

    from worker.batching import Batcher
    from worker.cli import load_classifier
    from worker.model import classify_encoded, to_prediction

    classifier = load_classifier(settings)
    classifier.warm_up()
    info = dict(classifier.info)
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


class OutputReader(threading.Thread):
    """Reads the output topic from the beginning; records (receive time, key, latency_ms field)."""

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
                try:
                    latency = json.loads(message.value()).get("latency_ms")
                except ValueError:
                    latency = None
                rows.append((now, message.key(), latency))
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
def bench_kafka(args: argparse.Namespace, bootstrap: str, model: Path, texts: list[str], settings: Any) -> dict[str, Any]:
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
        env = {
            **os.environ,
            "WORKER_BOOTSTRAP_SERVERS": bootstrap,
            "WORKER_INPUT_TOPIC": topics["in"],
            "WORKER_OUTPUT_TOPIC": topics["out"],
            "WORKER_DLQ_TOPIC": topics["dlq"],
            "WORKER_GROUP_ID": f"bench-worker-{run_id}",
            "WORKER_MODEL": str(model),
            "WORKER_DTYPE": settings.dtype,
            "WORKER_METRICS_PORT": str(port),
            "WORKER_METRICS_HOST": "127.0.0.1",
            "WORKER_AUTO_OFFSET_RESET": "earliest",
        }
        RESULTS.mkdir(parents=True, exist_ok=True)
        worker_log = open(RESULTS / "worker.log", "w")
        launched = time.time()
        worker = subprocess.Popen([sys.executable, "-m", "worker.cli", "run"], cwd=ROOT, env=env,
                                  stdout=worker_log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return _drive_worker(args, bootstrap, worker, port, reader, topics, texts, launched)
        finally:
            reader.stopped.set()
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
                try:
                    worker.wait(60)
                except subprocess.TimeoutExpired:
                    worker.kill()
            worker_log.close()
    finally:
        if not args.keep_topics:
            delete_topics(bootstrap, list(topics.values()))


def _drive_worker(args: argparse.Namespace, bootstrap: str, worker: subprocess.Popen, port: int,
                  reader: OutputReader, topics: dict[str, str], texts: list[str], launched: float) -> dict[str, Any]:
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
    model_info = {m.group(1): m.group(2) for k in full if k.startswith("worker_model_info{")
                  for m in re.finditer(r'(\w+)="([^"]*)"', k)}
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
        "worker_model_info": model_info,
        "partitions": args.partitions,
    }
    log(f"end to end: {n} messages in {elapsed:.2f}s = {throughput:.0f}/s")

    # Part 4: steady offered load at a fraction of (3).
    rate = throughput * args.load_fraction
    count = max(200, int(rate * args.latency_seconds))
    log(f"latency: offering {rate:.0f} msg/s for {count / rate:.0f}s ({count} messages)")
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "acks": "all"})
    sent: dict[bytes, float] = {}
    before = scrape(port)
    started = time.time()
    for i in range(count):
        due = started + i / rate
        pause = due - time.time()
        if pause > 0:
            time.sleep(pause)
        key = f"lat-{i}".encode()
        sent[key] = time.time()
        producer.produce(topics["in"], texts[i % len(texts)].encode("utf-8"), key=key)
        producer.poll(0)
    offered_for = time.time() - started
    producer.flush(30)
    wait_until = time.time() + 60
    while time.time() < wait_until:
        got = sum(1 for _, key, _ in reader.snapshot()[n:] if key in sent)
        if got >= count:
            break
        time.sleep(0.05)
    after = scrape(port)
    latency_rows = [(at, key, field) for at, key, field in reader.snapshot()[n:] if key in sent]
    warm = int(0.05 * len(latency_rows))  # the first 5 % settle the loop into the new rate
    measured = latency_rows[warm:]
    field_ms = [field for _, _, field in measured if field is not None]
    received_ms = [1000 * (at - sent[key]) for at, key, _ in measured]
    d = {name: metric(after, name) - metric(before, name) for name in (
        "worker_inference_duration_seconds_sum", "worker_inference_duration_seconds_count",
        "worker_batch_size_messages_sum", "worker_batch_size_messages_count",
        "worker_real_tokens_total", "worker_padded_tokens_total")}
    batch_ms = 1000 * d["worker_inference_duration_seconds_sum"] / max(1.0, d["worker_inference_duration_seconds_count"])
    wait_ms = float(os.environ.get("WORKER_BATCH_MAX_WAIT_MS", "20"))
    result["latency"] = {
        "offered_per_s": round(count / offered_for, 1),
        "messages": count,
        "received": len(latency_rows),
        "p50_ms": round(percentile(field_ms, 0.50), 1),
        "p95_ms": round(percentile(field_ms, 0.95), 1),
        "p99_ms": round(percentile(field_ms, 0.99), 1),
        "receive_p50_ms": round(percentile(received_ms, 0.50), 1),
        "receive_p95_ms": round(percentile(received_ms, 0.95), 1),
        "receive_p99_ms": round(percentile(received_ms, 0.99), 1),
        "mean_batch_messages": round(d["worker_batch_size_messages_sum"] / max(1.0, d["worker_batch_size_messages_count"]), 1),
        "mean_batch_inference_ms": round(batch_ms, 2),
        "p99_target_ms": round(wait_ms + 2 * batch_ms, 1),
        "padding_efficiency": round(d["worker_real_tokens_total"] / d["worker_padded_tokens_total"], 4)
        if d["worker_padded_tokens_total"] else None,
    }
    return result


# --------------------------------------------------------------------------- report
def table(results: dict[str, Any]) -> str:
    m = results["machine"]
    p1, p2, p3 = results.get("pipeline"), results.get("in_memory"), results.get("end_to_end")
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; torch {m['torch']}, "
        f"transformers {m['transformers']}; worker dtype {results['dtype']}; model {results['model_kind']}; "
        f"texts {results['data_kind']}; {results['timestamp']}",
        "",
        "| # | what | messages | messages/s | notes |",
        "|---|---|---:|---:|---|",
    ]
    if p1:
        lines.append(f"| 1 | seed: `pipeline()` once per message | {p1['messages']} | {p1['messages_per_s']} | dtype {p1['dtype']} |")
    if p2:
        lines.append(f"| 2 | worker batching + classifier, in memory | {p2['messages']} | {p2['messages_per_s']} | "
                     f"padding eff. {p2['padding_efficiency']}, mean batch {p2['mean_batch_messages']} |")
    if p3:
        lines.append(f"| 3 | worker end to end via Kafka (subprocess) | {p3['messages']} | {p3['messages_per_s']} | "
                     f"{p3['messages_per_s_from_ready']}/s counting group join; start-up {p3['startup_s']} s |")
        lat = p3["latency"]
        lines.append(f"| 4 | latency at {lat['offered_per_s']}/s offered (½ of 3) | {lat['messages']} | – | "
                     f"p50 {lat['p50_ms']} ms, p95 {lat['p95_ms']} ms, **p99 {lat['p99_ms']} ms** "
                     f"(target ≤ {lat['p99_target_ms']} ms = wait + 2 × {lat['mean_batch_inference_ms']} ms batch); "
                     f"consumer-side p99 {lat['receive_p99_ms']} ms |")
        lines.append(f"| 5 | padding efficiency / mean batch at full load | {p3['batches']} batches | – | "
                     f"**{p3['padding_efficiency']}** / {p3['mean_batch_messages']} messages, "
                     f"{p3['mean_batch_inference_ms']} ms per batch |")
    r = results["ratios"]
    lines += ["", "| ratio | value | target |", "|---|---:|---:|"]
    if "e2e_over_pipeline" in r:
        lines.append(f"| (3)/(1) | {r['e2e_over_pipeline']} | ≥ 10 |")
    if "e2e_over_in_memory" in r:
        lines.append(f"| (3)/(2) | {r['e2e_over_in_memory']} | ≥ 0.9 |")
    if "in_memory_over_pipeline" in r:
        lines.append(f"| (2)/(1) | {r['in_memory_over_pipeline']} | – |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20000, help="messages for parts 2 and 3 (default 20000)")
    parser.add_argument("--pipeline-messages", type=int, default=500, help="messages for part 1 (slow; default 500)")
    parser.add_argument("--model", type=Path, default=None, help="model directory (default: the stand-in, else random weights)")
    parser.add_argument("--data", type=Path, default=None, help="NSMC-format TSV (default: NSMC test, else the repo sample)")
    parser.add_argument("--skip-kafka", action="store_true", help="only parts 1 and 2")
    parser.add_argument("--skip-pipeline", action="store_true", help="skip part 1")
    parser.add_argument("--bootstrap", default=None,
                        help="use this broker (default: start deploy/kafka/kafka.sh on 127.0.0.1:29092, stop it after)")
    parser.add_argument("--partitions", type=int, default=3, help="partitions of the input and output topics")
    parser.add_argument("--load-fraction", type=float, default=0.5, help="offered load for part 4, as a fraction of (3)")
    parser.add_argument("--latency-seconds", type=float, default=30.0, help="how long part 4 offers load")
    parser.add_argument("--timeout", type=float, default=900.0, help="give up on part 3 after this many seconds")
    parser.add_argument("--profile", action="store_true", help="py-spy the worker during part 3 (needs py-spy)")
    parser.add_argument("--keep-topics", action="store_true")
    parser.add_argument("--output", type=Path, default=RESULTS / "latest.json")
    args = parser.parse_args(argv)

    from worker.settings import load_settings

    if args.model is None:
        if STAND_IN.is_dir():
            args.model, model_kind = STAND_IN, "stand-in koelectra-small-v3-nsmc-scratch"
        else:
            args.model = random_weight_model(Path(tempfile.gettempdir()) / "koelectra-small-v3-random")
            model_kind = "KoELECTRA-Small-v3 config, random weights"
    else:
        model_kind = str(args.model)
    if args.data is None:
        args.data = NSMC_TEST if NSMC_TEST.is_file() else SAMPLE
    data_kind = f"{args.data.name}" + (" (NSMC test)" if args.data == NSMC_TEST else "")
    settings = load_settings(model=str(args.model))
    from worker.model import resolve_device, resolve_dtype

    dtype = resolve_dtype(settings.dtype, resolve_device(settings.device))
    settings = load_settings(model=str(args.model), dtype=dtype)
    texts = load_texts(args.data, args.messages)

    results: dict[str, Any] = {
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(),
        "model": str(args.model),
        "model_kind": model_kind,
        "data": str(args.data),
        "data_kind": data_kind,
        "dtype": dtype,
        "settings": {k: getattr(settings, k) for k in (
            "batch_max_messages", "batch_max_tokens", "batch_max_wait_ms", "sub_batch_max_tokens",
            "max_in_flight_messages", "torch_threads", "device")},
        "ratios": {},
    }
    if not args.skip_pipeline:
        log(f"part 1: pipeline() once per message, {args.pipeline_messages} messages")
        results["pipeline"] = bench_pipeline(args.model, texts[: args.pipeline_messages])
        log(f"part 1: {results['pipeline']['messages_per_s']}/s")
    log(f"part 2: worker batching + classifier in memory, {len(texts)} messages")
    results["in_memory"] = bench_in_memory(settings, texts)
    log(f"part 2: {results['in_memory']['messages_per_s']}/s")
    if not args.skip_kafka:
        started_broker = False
        bootstrap = args.bootstrap
        if bootstrap is None:
            bootstrap, started_broker = start_own_broker()
        try:
            log(f"parts 3-5: end to end through {bootstrap}")
            results["end_to_end"] = bench_kafka(args, bootstrap, args.model, texts, settings)
        finally:
            if started_broker:
                stop_own_broker()
    r = results["ratios"]
    p1, p2, p3 = results.get("pipeline"), results.get("in_memory"), results.get("end_to_end")
    if p1 and p3:
        r["e2e_over_pipeline"] = round(p3["messages_per_s"] / p1["messages_per_s"], 2)
    if p2 and p3:
        r["e2e_over_in_memory"] = round(p3["messages_per_s"] / p2["messages_per_s"], 3)
    if p1 and p2:
        r["in_memory_over_pipeline"] = round(p2["messages_per_s"] / p1["messages_per_s"], 2)
    results["table_markdown"] = table(results)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, ensure_ascii=False, indent=2, default=str) + "\n", encoding="utf-8")
    print(results["table_markdown"])
    log(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
