"""What a shadow model costs the primary stream: saturated throughput through Kafka with and without one.

    python -m benchmarks.shadow_cost SHADOW_MODEL [--count N] [--bootstrap HOST:PORT]

The same N texts (benchmarks.inputs: NSMC) are pre-loaded into a fresh input topic for each run; a
`worker run` process on the default model (benchmarks.inputs.default_model; WORKER_* settings from the
environment, torch float32 unless they say otherwise) reads them from the beginning. Throughput is N
over the time from its first to its last acknowledged result (``worker_results_produced_total``,
scraped every 0.1 s). The shadow run adds ``WORKER_SHADOW_MODEL`` on its own topic (its engine,
precision and threads from the environment, else the defaults). Writes benchmarks/results/shadow-cost.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import uuid
from pathlib import Path

from benchmarks.inputs import RESULTS, default_data, default_model, load_texts, log, machine_info
from benchmarks.through_kafka import drop_topics, launch, preload, worker_process_env
from harness.probes import metric, scrape
from harness.processes import free_port, terminate, wait_ready
from harness.topics import create_topics


def one_run(bootstrap: str, model: Path, texts: list[str], shadow: str | None, cache_dir: Path) -> dict:
    suffix = uuid.uuid4().hex[:8]
    topics = {"input": f"bench-in-{suffix}", "output": f"bench-out-{suffix}", "dlq": f"bench-dlq-{suffix}"}
    shadow_topic = f"bench-shadow-{suffix}"
    create_topics(bootstrap, {topics["input"]: 3, topics["output"]: 3, topics["dlq"]: 1, shadow_topic: 3})
    preload(bootstrap, topics["input"], texts, suffix)
    port = free_port()
    env = {"WORKER_ENGINE": "torch", "WORKER_DTYPE": "float32", "WORKER_DEVICE": "cpu",
           **worker_process_env(bootstrap, topics, model, port, cache_dir)}
    if shadow is not None:
        env.update(WORKER_SHADOW_MODEL=shadow, WORKER_SHADOW_TOPIC=shadow_topic)
        env.setdefault("WORKER_SHADOW_ENGINE", env["WORKER_ENGINE"])
        env.setdefault("WORKER_SHADOW_DTYPE", env["WORKER_DTYPE"])
    name = "with-shadow" if shadow else "without-shadow"
    process = launch(env, f"shadow-cost-{name}.log")
    try:
        wait_ready(process, port, 900, RESULTS / f"shadow-cost-{name}.log")
        first = last = None
        deadline = time.monotonic() + 1800
        samples: dict = {}
        while time.monotonic() < deadline:
            samples = scrape(port) or {}
            done = metric(samples, "worker_results_produced_total")
            now = time.monotonic()
            if done > 0 and first is None:
                first = (now, done)
            if done >= len(texts):
                last = now
                break
            time.sleep(0.1)
        assert first is not None and last is not None, "the run did not finish"
        seconds = last - first[0]
        per_s = (len(texts) - first[1]) / seconds
        windows = {labels["outcome"]: v for labels, v in samples.get("worker_shadow_windows_total", [])}
        row = {"run": name, "texts": len(texts), "seconds": round(seconds, 2), "texts_per_s": round(per_s, 1),
               "shadow_windows": windows, "shadow_compared": metric(samples, "worker_shadow_compared_total")}
        log(json.dumps(row))
        return row
    finally:
        terminate(process, 60)
        drop_topics(bootstrap, [*topics.values(), shadow_topic])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shadow_model")
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:29092"))
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    model, described = default_model()
    texts = load_texts(default_data(), args.count)
    cache_dir = Path(os.environ.get("WORKER_ENGINE_CACHE_DIR", "~/.cache/koelectra-worker/engines")).expanduser()
    rows = []
    load = os.getloadavg()
    for _ in range(args.repeat):
        rows.append(one_run(args.bootstrap, model, texts, None, cache_dir))
        rows.append(one_run(args.bootstrap, model, texts, args.shadow_model, cache_dir))
    out = {"model": described, "shadow_model": args.shadow_model, "machine": machine_info(),
           "load_average_at_start": [round(x, 1) for x in load], "load_average_at_end": [round(x, 1) for x in os.getloadavg()],
           "settings": {k: v for k, v in os.environ.items() if k.startswith("WORKER_") and "SECRET" not in k}, "runs": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "shadow-cost.json").write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
