#!/usr/bin/env python3
"""Throughput, latency, start-up and memory of the worker: one run, one machine, same texts, same model.

    .venv/bin/python benchmarks/bench.py [--messages N] [--model DIR] [--data TSV]
                                         [--skip-kafka] [--bootstrap HOST:PORT] [--memory-texts N]

Parts (see benchmarks/README.md; each in benchmarks/parts/):
  1. seed: ``transformers.pipeline("text-classification")`` called once per message;
  2. each installed engine and precision in memory, in its own process (benchmarks/engine_run.py), at
     windows of 1, 8, 32 and 500 texts (and, with ``--memory-texts``, its RSS over that many texts);
  3. ``WORKER_ENGINE=auto``: what it measured and chose, and the worker's batching + that classifier over
     the same texts in memory (no Kafka);
  4. start-up of ``worker run`` to ready, cold (empty engine cache: export, quantize, measure) and warm;
  5. the worker end to end through a real broker (``python -m worker.cli run`` as a subprocess, ``auto``):
     N messages pre-loaded into a fresh input topic, time until the N-th result is read back; its RSS
     after warm-up and at the end;
  6. end-to-end latency at a steady 100 messages/s, 5 runs of 40 s (every run's p50/p95/p99/max and evidence), and at half of (5);
  7. padding efficiency and mean batch size, scraped from the worker's Prometheus metrics;
  8. the torch-engine worker end to end (the baseline).

Writes ``benchmarks/results/latest.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the checkout's packages first

from benchmarks.inputs import RESULTS, default_data, default_model, load_texts, log, machine_info  # noqa: E402
from benchmarks.parts.end_to_end import bench_kafka  # noqa: E402
from benchmarks.parts.engines import bench_engines  # noqa: E402
from benchmarks.parts.in_memory import bench_in_memory  # noqa: E402
from benchmarks.parts.pipeline import bench_pipeline  # noqa: E402
from benchmarks.parts.startup import bench_startup  # noqa: E402
from benchmarks.report import table  # noqa: E402
from benchmarks.through_kafka import own_broker  # noqa: E402
from harness.broker import bootstrap_servers  # noqa: E402
from harness.paths import NSMC_TEST  # noqa: E402


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
    parser.add_argument("--latency-seconds", type=float, default=40.0, help="how long each load of part 6 is offered")
    parser.add_argument("--latency-runs", type=int, default=5, help="part 6: runs at --latency-rate (default 5)")
    parser.add_argument("--latency-rate", type=float, default=100.0, help="part 6: messages/s of the repeated runs")
    parser.add_argument("--latency-gap", type=float, default=5.0, help="part 6: seconds without traffic before each run")
    parser.add_argument("--only-worker", action="store_true",
                        help="only the worker through Kafka: parts 5-7 (full load, then the latency runs); "
                             "the engine is the worker's own choice unless WORKER_ENGINE/WORKER_DTYPE say")
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
    if args.only_worker:
        return only_worker(args, results, texts)
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
            with bootstrap_servers(args.bootstrap, own_broker(), reuse=True) as bootstrap:
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
    return write_results(args, results)


def write_results(args: argparse.Namespace, results: dict[str, Any]) -> int:
    """The JSON report to ``--output`` and the markdown table to stdout."""
    results["table_markdown"] = table(results)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, ensure_ascii=False, indent=2, default=str) + "\n", encoding="utf-8")
    print(results["table_markdown"])
    log(f"wrote {args.output}")
    return 0


def only_worker(args: argparse.Namespace, results: dict[str, Any], texts: list[str]) -> int:
    """Parts 5-7 alone (`make latency`): the worker on its own engine choice, with an engine cache kept between
    runs (so its choice, measured once, is the same in every run), a full-load backlog, then the latency runs."""
    cache = Path(os.environ.get("BENCH_ENGINE_CACHE", "/tmp/bench-engine-cache"))
    cache.mkdir(parents=True, exist_ok=True)
    with bootstrap_servers(args.bootstrap, own_broker(), reuse=True) as bootstrap:
        log(f"parts 5-7: end to end through {bootstrap}, engine cache {cache}")
        results["end_to_end"] = bench_kafka(args, bootstrap, args.model, texts, cache)
    return write_results(args, results)


if __name__ == "__main__":
    sys.exit(main())
