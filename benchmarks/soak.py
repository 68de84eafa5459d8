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
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the checkout's packages first

from benchmarks.inputs import RESULTS, default_data, default_model, load_texts, log, machine_info  # noqa: E402
from benchmarks.through_kafka import drop_topics, launch, own_broker, preload, worker_process_env  # noqa: E402
from harness.broker import bootstrap_servers  # noqa: E402
from harness.probes import metric, model_info, scrape  # noqa: E402
from harness.processes import check_running, free_port, rss_mb, terminate  # noqa: E402
from harness.topics import fresh_topics  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--warm-up", type=int, default=100_000, help="RSS is compared from this many results on")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="extra worker setting")
    parser.add_argument("--timeout", type=float, default=4 * 3600)
    parser.add_argument("--largest", action="store_true",
                        help="every message as large as the worker accepts (WORKER_MAX_MESSAGE_BYTES, default 960,000 "
                             "bytes): the peak RSS under WORKER_MAX_IN_FLIGHT_BYTES, e.g. --messages 600 --warm-up 0")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    extra = dict(kv.split("=", 1) for kv in args.env)

    model, _ = default_model()
    data = default_data()
    cache = Path(tempfile.mkdtemp(prefix="soak-engines-"))
    try:
        with bootstrap_servers(None, own_broker(), reuse=True) as bootstrap:
            topics = fresh_topics(bootstrap, args.partitions, prefix="soak-")
            worker = None
            try:
                log(f"pre-loading {args.messages} messages into {topics['input']}")
                texts = largest_texts(args.messages, extra) if args.largest else load_texts(data, args.messages)
                preload(bootstrap, topics["input"], texts, "soak")
                port = free_port()
                env = {**worker_process_env(bootstrap, topics, model, port, cache), **extra}
                worker = launch(env, "soak-worker.log")
                samples = sample_until_done(args, worker, port)
                info = model_info(scrape(port) or {})
            finally:
                if worker is not None:
                    terminate(worker, 60)
                drop_topics(bootstrap, list(topics.values()))
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    summary = summarize(samples, args.warm_up)
    name = f"{info.get('engine', 'auto')}-{info.get('precision', 'auto')}"
    result = {"timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine_info(), "largest": args.largest,
              "model": str(model), "data": str(data), "messages": args.messages, "worker_env": extra,
              "model_info": info, "summary": summary, "samples": samples}
    output = args.output or RESULTS / f"soak-{name}{'-largest' if args.largest else ''}.json"
    output.write_text(json.dumps(result, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    m = result["machine"]
    print(f"{m['cpu']}, {m['cores']} cores; {name}; {args.messages} messages at {summary['messages_per_s']}/s: "
          f"RSS {summary['rss_mb_at_warm_up']} MB at {summary['warm_up_at']} results, {summary['rss_mb_end']} MB at "
          f"the end, largest {summary['rss_mb_max']} MB: {summary['change_percent']:+.1f} % (target within ±10 %)")
    log(f"wrote {output}")
    return 0


def largest_texts(count: int, extra: dict[str, str]) -> list[str]:
    """``count`` review texts just under the worker's input limit (its key and record overhead left out)."""
    import os

    from worker.settings import Settings

    limit = int(extra.get("WORKER_MAX_MESSAGE_BYTES", os.environ.get("WORKER_MAX_MESSAGE_BYTES",
                                                                      Settings.model_fields["max_message_bytes"].default)))
    review = "배우들 연기가 정말 좋았고 음악도 훌륭했다. "
    body = review * ((limit - 1_000) // len(review.encode("utf-8")))
    return [f"{i} {body}" for i in range(count)]


def sample_until_done(args: argparse.Namespace, worker: subprocess.Popen, port: int) -> list[dict[str, Any]]:
    samples: list[dict[str, Any]] = []
    started = time.time()
    next_report = 0
    while time.time() - started < args.timeout:
        check_running(worker, RESULTS / "soak-worker.log")
        values = scrape(port)
        if values is None:
            time.sleep(1)
            continue
        done = int(metric(values, "worker_results_produced_total"))
        rss = rss_mb(worker.pid)
        if done > 0:
            samples.append({"at_s": round(time.time() - started, 1), "results": done, "rss_mb": rss})
        if done >= next_report:
            log(f"{done} of {args.messages} results, RSS {rss} MB")
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
