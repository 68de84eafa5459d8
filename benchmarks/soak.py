"""Memory over a long run: the worker's RSS from 100,000 to 1,000,000 messages through Kafka.

    make soak                                   # 1,000,000 messages, auto's engine
    python benchmarks/soak.py --messages 200000 --env WORKER_ENGINE=torch

Pre-loads the input topic (texts cycled from NSMC test, unique keys), starts one ``worker run`` on its
own broker (deploy/kafka/kafka.sh, as ``make bench`` does), and samples the worker's RSS and its
produced-results counter every few seconds until every message has a result. Progress is read from
the worker's own /metrics, not by consuming the output, so the benchmark adds little load of its own.
Writes ``benchmarks/results/soak-<engine>-<precision>.json`` with the samples and a summary line: RSS at
the first sample past ``--warm-up`` messages, at the end, the largest, and the change in percent.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (the broker, topic, process and scraping helpers of make bench)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--warm-up", type=int, default=100_000, help="RSS is compared from this many results on")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="extra worker setting")
    parser.add_argument("--timeout", type=float, default=4 * 3600)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    extra = dict(kv.split("=", 1) for kv in args.env)

    model, _ = bench.default_model()
    data = bench.default_data()
    bootstrap, started_broker = bench.start_own_broker()
    run_id = uuid.uuid4().hex[:8]
    topics = {"in": f"soak-in-{run_id}", "out": f"soak-out-{run_id}", "dlq": f"soak-dlq-{run_id}"}
    cache = Path(tempfile.mkdtemp(prefix="soak-engines-"))
    worker = None
    try:
        bench.create_topics(bootstrap, {topics["in"]: args.partitions, topics["out"]: args.partitions, topics["dlq"]: 1})
        bench.log(f"pre-loading {args.messages} messages into {topics['in']}")
        bench.produce_all(bootstrap, topics["in"], bench.load_texts(data, args.messages), "soak")
        port = bench.free_port()
        env = {**bench.worker_process_env(bootstrap, topics, model, port, cache, f"soak-{run_id}"), **extra}
        log_path = bench.RESULTS / "soak-worker.log"
        bench.RESULTS.mkdir(parents=True, exist_ok=True)
        with open(log_path, "w") as log_file:
            worker = subprocess.Popen([sys.executable, "-m", "worker.cli", "run"], cwd=bench.ROOT, env=env,
                                      stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        samples = sample_until_done(args, worker, port)
        info = bench.model_info(bench.scrape(port))
    finally:
        if worker is not None:
            bench.stop_worker(worker)
        bench.delete_topics(bootstrap, list(topics.values()))
        if started_broker:
            bench.stop_own_broker()
        shutil.rmtree(cache, ignore_errors=True)
    summary = summarize(samples, args.warm_up)
    name = f"{info.get('engine', 'auto')}-{info.get('precision', 'auto')}"
    result = {"timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": bench.machine_info(),
              "model": str(model), "data": str(data), "messages": args.messages, "worker_env": extra,
              "model_info": info, "summary": summary, "samples": samples}
    output = args.output or bench.RESULTS / f"soak-{name}.json"
    output.write_text(json.dumps(result, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    m = result["machine"]
    print(f"{m['cpu']}, {m['cores']} cores; {name}; {args.messages} messages at {summary['messages_per_s']}/s: "
          f"RSS {summary['rss_mb_at_warm_up']} MB at {summary['warm_up_at']} results, {summary['rss_mb_end']} MB at "
          f"the end, largest {summary['rss_mb_max']} MB: {summary['change_percent']:+.1f} % (target within ±10 %)")
    bench.log(f"wrote {output}")
    return 0


def sample_until_done(args: argparse.Namespace, worker: subprocess.Popen, port: int) -> list[dict[str, Any]]:
    samples: list[dict[str, Any]] = []
    started = time.time()
    next_report = 0
    while time.time() - started < args.timeout:
        if worker.poll() is not None:
            raise RuntimeError(f"worker exited with {worker.returncode}; see {bench.RESULTS / 'soak-worker.log'}")
        try:
            values = bench.scrape(port)
        except OSError:
            time.sleep(1)
            continue
        done = int(bench.metric(values, "worker_results_produced_total"))
        rss = bench.rss_mb(worker.pid)
        if done > 0:
            samples.append({"at_s": round(time.time() - started, 1), "results": done, "rss_mb": rss})
        if done >= next_report:
            bench.log(f"{done} of {args.messages} results, RSS {rss} MB")
            next_report = done + max(args.messages // 20, 1)
        if done >= args.messages:
            return samples
        time.sleep(args.interval)
    raise RuntimeError(f"timed out with {samples[-1]['results'] if samples else 0} of {args.messages} results")


def summarize(samples: list[dict[str, Any]], warm_up: int) -> dict[str, Any]:
    after = [s for s in samples if s["results"] >= warm_up] or samples[-1:]
    first, last = after[0], samples[-1]
    largest = max(s["rss_mb"] for s in after)
    active = [s for s in samples if s["results"] > 0]
    span = active[-1]["at_s"] - active[0]["at_s"]
    return {
        "warm_up_at": first["results"],
        "rss_mb_at_warm_up": first["rss_mb"],
        "rss_mb_end": last["rss_mb"],
        "rss_mb_max": largest,
        "change_percent": round(100 * (last["rss_mb"] - first["rss_mb"]) / first["rss_mb"], 1),
        "max_change_percent": round(100 * (largest - first["rss_mb"]) / first["rss_mb"], 1),
        "messages_per_s": round((active[-1]["results"] - active[0]["results"]) / span, 1) if span > 0 else None,
    }


if __name__ == "__main__":
    sys.exit(main())
