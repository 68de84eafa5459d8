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
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from tqdm import tqdm

from worker.datasets import read_nsmc_rows

REPO = Path(__file__).resolve().parent.parent
KAFKA_SH = REPO / "deploy" / "kafka" / "kafka.sh"
STAND_IN = REPO.parent / "shared" / "models" / "koelectra-small-v3-nsmc-scratch"
FULL_TEST = REPO.parent / "shared" / "data" / "ratings_test.txt"
SAMPLE = REPO / "tests" / "data" / "nsmc_sample.tsv"
KOREAN = {"positive": "긍정", "negative": "부정"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] if ordered else float("nan")


def wait_until_serving(port: int, worker: subprocess.Popen, log_path: Path, timeout_s: float = 600) -> None:
    """Until /readyz says the model is warm and partitions are assigned."""
    import urllib.error
    import urllib.request

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if worker.poll() is not None:
            raise SystemExit(f"the worker exited ({worker.returncode}); see {log_path}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
                if json.loads(response.read()).get("assigned_partitions", 0) > 0:
                    return
        except (urllib.error.URLError, OSError, ValueError):
            pass
        time.sleep(0.5)
    raise SystemExit(f"the worker did not become ready in {timeout_s:.0f}s; see {log_path}")


def create_topics(bootstrap: str, topics: dict) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(topics["input"], 3, 1), NewTopic(topics["output"], 3, 1), NewTopic(topics["dlq"], 1, 1)]
    )
    for future in futures.values():
        future.result(30)


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
    parser.add_argument("--data", type=Path, default=FULL_TEST if FULL_TEST.exists() else SAMPLE)
    parser.add_argument("--show", type=int, default=15, help="result lines to print while streaming")
    args = parser.parse_args()

    started_broker = False
    bootstrap = os.environ.get("WORKER_BOOTSTRAP_SERVERS")
    if not bootstrap:
        print("starting the local Apache Kafka broker (deploy/kafka/kafka.sh start) ...", flush=True)
        subprocess.run(["bash", str(KAFKA_SH), "start"], check=True)
        bootstrap = subprocess.run(["bash", str(KAFKA_SH), "bootstrap"], check=True, capture_output=True,
                                   text=True).stdout.strip()
        started_broker = True
    model = os.environ.get("WORKER_MODEL") or (str(STAND_IN) if STAND_IN.is_dir() else "daekeun-ml/koelectra-small-v3-nsmc")
    run_id = uuid.uuid4().hex[:6]
    topics = {"input": f"demo-comments-{run_id}", "output": f"demo-classified-{run_id}", "dlq": f"demo-dlq-{run_id}"}
    worker = None
    try:
        create_topics(bootstrap, topics)
        metrics_port = int(os.environ.get("WORKER_METRICS_PORT") or free_port())
        env = {**os.environ, "WORKER_BOOTSTRAP_SERVERS": bootstrap, "WORKER_INPUT_TOPIC": topics["input"],
               "WORKER_OUTPUT_TOPIC": topics["output"], "WORKER_DLQ_TOPIC": topics["dlq"],
               "WORKER_GROUP_ID": f"demo-{run_id}", "WORKER_MODEL": model, "WORKER_METRICS_PORT": str(metrics_port),
               "WORKER_METRICS_HOST": "127.0.0.1"}
        log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"koelectra-demo-{run_id}.log"
        print(f"model: {model}\nbroker: {bootstrap}\ntopics: {topics['input']} -> {topics['output']}\n"
              f"metrics: http://127.0.0.1:{metrics_port}/metrics   worker log: {log_path}", flush=True)
        worker = subprocess.Popen([sys.executable, "-m", "worker.cli", "run"], env=env, cwd=REPO,
                                  stdout=open(log_path, "wb"), stderr=subprocess.STDOUT)

        print("loading the model and joining the consumer group ...", flush=True)
        wait_until_serving(metrics_port, worker, log_path)
        reviews = read_nsmc_rows(args.data, args.messages)
        truth = {doc_id: label for doc_id, _, label in reviews}
        results, elapsed = stream_and_view(bootstrap, topics, run_id, reviews, worker, log_path, args.rate, args.show)

        latencies = [v["latency_ms"] for v in results.values() if v.get("latency_ms") is not None]
        correct = sum(1 for k, v in results.items() if (v["label"] == "positive") == (truth[k] == 1))
        print("\nsummary")
        print(f"  messages       {len(results)}")
        print(f"  throughput     {len(results) / elapsed:.1f} messages/s (first send to last result)")
        print(f"  latency ms     p50 {percentile(latencies, 50):.0f}  p95 {percentile(latencies, 95):.0f}  "
              f"p99 {percentile(latencies, 99):.0f}")
        print(f"  accuracy       {correct / len(results):.4f} against the NSMC labels ({args.data.name})")
        return 0
    finally:
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(60)
            except subprocess.TimeoutExpired:
                worker.kill()
        if started_broker:
            subprocess.run(["bash", str(KAFKA_SH), "stop"], check=False)


if __name__ == "__main__":
    sys.exit(main())
