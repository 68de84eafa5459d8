"""Parts 5, 7 and 8 with one ``worker run`` process through a real broker: N messages pre-loaded into a fresh
input topic, timed from the worker's first consumed record until the N-th result is read back (5); padding
efficiency and mean batch size from its Prometheus counters at full load (7); then (``latency``) part 6's
steady loads on the same worker. Part 8 is the same run with the torch engine, without part 6."""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.inputs import RESULTS, log
from benchmarks.parts.latency import cpu_since, machine_cpu, offer_load, repeated_runs
from benchmarks.through_kafka import OutputReader, drop_topics, launch, preload, worker_process_env
from harness.probes import metric, model_info, scrape
from harness.processes import check_running, free_port, rss_mb, terminate
from harness.topics import fresh_topics


def bench_kafka(args: argparse.Namespace, bootstrap: str, model: Path, texts: list[str], cache_dir: Path,
                extra_env: dict[str, str] | None = None, latency: bool = True,
                log_name: str = "worker.log") -> dict[str, Any]:
    """Parts 5-7 with one ``worker run`` process: a pre-loaded backlog, then (``latency``) steady loads."""
    partitions = args.partitions
    topics = fresh_topics(bootstrap, partitions, prefix="bench-")
    try:
        log(f"pre-loading {len(texts)} messages into {topics['input']}")
        preload(bootstrap, topics["input"], texts, "load")
        reader = OutputReader(bootstrap, topics["output"], partitions)
        reader.start()
        port = free_port()
        env = {**worker_process_env(bootstrap, topics, model, port, cache_dir), **(extra_env or {})}
        launched = time.time()
        worker = launch(env, log_name)
        try:
            return _drive_worker(args, bootstrap, worker, port, reader, topics, texts, launched, latency, log_name)
        finally:
            reader.stopped.set()
            terminate(worker, 60)
    finally:
        if not args.keep_topics:
            drop_topics(bootstrap, list(topics.values()))


def _drive_worker(args: argparse.Namespace, bootstrap: str, worker: subprocess.Popen, port: int,
                  reader: OutputReader, topics: dict[str, str], texts: list[str], launched: float,
                  latency: bool = True, log_name: str = "worker.log") -> dict[str, Any]:
    n = len(texts)
    ready_at = first_consumed_at = None
    deadline = time.time() + args.timeout
    # Readiness (model loaded and warmed), then the first consumed record, polled every 10 ms.
    while time.time() < deadline:
        check_running(worker, RESULTS / log_name)
        values = scrape(port)
        if values is None:
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
    cpu_before = machine_cpu()
    rss_at_ready = rss_mb(worker.pid)
    profiler = None
    if args.profile:
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        profiler = subprocess.Popen([spy, "record", "--pid", str(worker.pid), "--threads", "--idle",
                                     "--rate", "50", "--format", "speedscope",
                                     "-o", str(RESULTS / "worker-profile.speedscope.json")],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while reader.count() < n and time.time() < deadline:
        check_running(worker, RESULTS / log_name)
        time.sleep(0.005)
    if reader.count() < n:
        raise RuntimeError(f"only {reader.count()} of {n} results arrived before the timeout")
    records = reader.snapshot()
    last_at = records[n - 1][0]
    if profiler is not None:
        profiler.send_signal(signal.SIGINT)
        profiler.wait(60)
    full = scrape(port) or {}
    cpu = cpu_since(cpu_before)
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
        # Busy, idle and stolen (hypervisor) CPU seconds of the machine meanwhile: a shared machine's share.
        "machine_cpu_s": cpu,
    }
    log(f"end to end: {n} messages in {elapsed:.2f}s = {throughput:.0f}/s")

    result["rss_mb_after_full_load"] = rss_mb(worker.pid)
    if not latency:
        return result
    if args.latency_runs <= 0:
        result["rss_mb_end"] = rss_mb(worker.pid)
        return result
    # Part 6: the steady 100/s run, repeated (every run's figures), then one run at a fraction of (5).
    result["latency_repeated"] = repeated_runs(args, bootstrap, port, reader, topics, texts, worker.pid)
    full_window_ms = result["mean_batch_inference_ms"]
    run = offer_load(args, bootstrap, port, reader, topics, texts, throughput * args.load_fraction, "frac",
                     worker.pid, skip_warm=True)
    target_ms = 4 * full_window_ms
    run.update(label=f"{args.load_fraction:g} of max", p99_target_ms=round(target_ms, 1),
               target=f"≤ 4 × {full_window_ms} ms full window",
               met=run["p99_ms"] <= target_ms if run["p99_ms"] == run["p99_ms"] else False)
    result["latency"] = run
    log(f"latency at {run['label']}: p50 {run['p50_ms']} ms, p95 {run['p95_ms']} ms, p99 {run['p99_ms']} ms "
        f"({run['target']})")
    result["rss_mb_end"] = rss_mb(worker.pid)
    return result
