"""No-Docker demo: local Apache Kafka, the worker, NSMC reviews streamed in, live results, a summary.

    make demo                       # or: .venv/bin/python scripts/demo.py --messages 2000

Starts the broker from deploy/kafka/ unless WORKER_BOOTSTRAP_SERVERS names one, creates the topics,
starts `worker run` with WORKER_MODEL (default: the stand-in model beside the checkout when present,
else the hub default), streams reviews, shows results as they arrive, and stops what it started.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, Producer
from tqdm import tqdm

from harness.broker import LocalBroker, bootstrap_servers
from harness.paths import NSMC_SAMPLE, NSMC_TEST, STAND_IN
from harness.processes import connection_env, free_port, start_worker_process, terminate, wait_ready
from harness.stats import percentile
from harness.topics import fresh_topics
from worker.datasets import read_nsmc_rows

KOREAN = {"positive": "긍정", "negative": "부정"}


def local_broker() -> LocalBroker:
    """The broker `make run` uses: kafka.sh's own defaults unless KAFKA_PORT / KAFKA_DATA_DIR say otherwise."""
    return LocalBroker(int(os.environ.get("KAFKA_PORT", "9092")), Path(os.environ.get("KAFKA_DATA_DIR", "/tmp/koelectra-kafka")))


def stream_and_view(bootstrap: str, topics: dict, run_id: str, reviews: list, worker: subprocess.Popen,
                    log_path: Path, rate: float, show: int) -> tuple[dict[str, dict], float]:
    """Send the reviews (at `rate`/s, or all at once) and show results as they arrive; the clients close on return."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"demo-view-{run_id}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topics["output"]])

    sent = 0
    results: dict[str, dict] = {}
    first_sent = time.time()
    with tqdm(total=len(reviews), unit="msg", desc="classified", dynamic_ncols=True) as bar:
        while len(results) < len(reviews):
            if worker.poll() is not None:
                raise SystemExit(f"the worker exited ({worker.returncode}); see {log_path}")
            if sent < len(reviews):
                allowed = len(reviews) if not rate else int((time.time() - first_sent) * rate) + 1
                while sent < min(allowed, len(reviews)):
                    doc_id, document, _ = reviews[sent]
                    producer.produce(topics["input"], key=doc_id.encode(), value=document.encode())
                    sent += 1
                producer.poll(0)
            for message in consumer.consume(500, 0.2):
                if message.error():
                    continue
                key = message.key().decode()
                if key in results:
                    continue
                value = json.loads(message.value())
                results[key] = value
                bar.update(1)
                if len(results) <= show:
                    text = value["input"] if isinstance(value["input"], str) else value["text"]
                    bar.write(f"{KOREAN.get(value['label'], value['label'])} ({value['score']:.2f}): {text[:70]}")
    elapsed = time.time() - first_sent
    producer.flush(10)
    consumer.close()
    return results, elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=2000, help="reviews to stream (default 2000)")
    parser.add_argument("--rate", type=float, default=0, help="messages per second to offer (0: as fast as possible)")
    parser.add_argument("--data", type=Path, default=NSMC_TEST if NSMC_TEST.exists() else NSMC_SAMPLE)
    parser.add_argument("--show", type=int, default=15, help="result lines to print while streaming")
    args = parser.parse_args()

    named = os.environ.get("WORKER_BOOTSTRAP_SERVERS")
    if not named:
        print("starting the local Apache Kafka broker (deploy/kafka/kafka.sh start) ...", flush=True)
    with bootstrap_servers(named, local_broker(), reuse=True) as bootstrap:
        return demo(args, bootstrap)


def demo(args: argparse.Namespace, bootstrap: str) -> int:
    model = os.environ.get("WORKER_MODEL") or (str(STAND_IN) if STAND_IN.is_dir() else "daekeun-ml/koelectra-small-v3-nsmc")
    run_id = uuid.uuid4().hex[:6]
    topics = fresh_topics(bootstrap, prefix="demo-")
    metrics_port = int(os.environ.get("WORKER_METRICS_PORT") or free_port())
    env = {**os.environ, **connection_env(bootstrap, topics, model, group=f"demo-{run_id}"),
           "WORKER_METRICS_PORT": str(metrics_port), "WORKER_METRICS_HOST": "127.0.0.1"}
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"koelectra-demo-{run_id}.log"
    print(f"model: {model}\nbroker: {bootstrap}\ntopics: {topics['input']} -> {topics['output']}\n"
          f"metrics: http://127.0.0.1:{metrics_port}/metrics   worker log: {log_path}", flush=True)
    # Under worker-supervised, as `make run`: an exit 4 (documented: "restart me") is restarted here too.
    worker = start_worker_process(env, log_path, module="worker.supervise", args=(), truncate=True)
    try:
        print("loading the model and joining the consumer group ...", flush=True)
        try:
            wait_ready(worker, metrics_port, 600, log_path, assigned=True, interval_s=0.5)
        except RuntimeError as exc:
            raise SystemExit(str(exc)) from None
        reviews = read_nsmc_rows(args.data, args.messages)
        truth = {doc_id: label for doc_id, _, label in reviews}
        results, elapsed = stream_and_view(bootstrap, topics, run_id, reviews, worker, log_path, args.rate, args.show)

        latencies = [v["latency_ms"] for v in results.values() if v.get("latency_ms") is not None]
        correct = sum(1 for k, v in results.items() if (v["label"] == "positive") == (truth[k] == 1))
        print("\nsummary")
        print(f"  messages       {len(results)}")
        print(f"  throughput     {len(results) / elapsed:.1f} messages/s (first send to last result)")
        print(f"  latency ms     p50 {percentile(latencies, 0.50):.0f}  p95 {percentile(latencies, 0.95):.0f}  "
              f"p99 {percentile(latencies, 0.99):.0f}")
        print(f"  accuracy       {correct / len(results):.4f} against the NSMC labels ({args.data.name})")
        return 0
    finally:
        terminate(worker, 60)


if __name__ == "__main__":
    sys.exit(main())
