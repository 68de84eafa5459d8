"""Part 6: end-to-end latency at a steady, rate-limited offered load, measured outside the worker (from the input
record's timestamp to the result record's), repeated: a moderation service is judged by its worst second, and
one run hides the spread between runs on a shared machine.

Each run also records what the worker and the machine did meanwhile, as evidence for where a slow record's time
went: the worker's own stage histograms (queued, inference, publish, ...), the CPU seconds of its threads by their
OS name (librdkafka names its own, `rdk:*`; Python's threads and the engine's pool share the process name), the
machine's CPU time stolen by the hypervisor and the load average."""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.inputs import log
from benchmarks.through_kafka import OutputReader
from harness.probes import metric, scrape
from harness.stats import percentile

STAGES = ("batching", "queued", "inference", "publish", "delivery")


def thread_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) of each thread of ``pid``, summed per thread name ({} where /proc is absent)."""
    ticks = os.sysconf("SC_CLK_TCK")
    out: Counter[str] = Counter()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue  # the thread ended meanwhile
        name = stat[stat.index("(") + 1: stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        out[name] += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return dict(out)


def machine_cpu() -> dict[str, float]:
    """The machine's CPU seconds so far: busy, idle and stolen (by the hypervisor), from /proc/stat."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except OSError:
        return {}
    ticks = os.sysconf("SC_CLK_TCK")
    user, nice, system, idle, iowait, irq, softirq, steal = (values + [0] * 8)[:8]
    return {"busy_s": (user + nice + system + irq + softirq) / ticks, "idle_s": (idle + iowait) / ticks,
            "steal_s": steal / ticks}


def cpu_since(before: dict[str, float]) -> dict[str, float]:
    """The machine's busy, idle and stolen CPU seconds since ``before`` (a :func:`machine_cpu` snapshot)."""
    after = machine_cpu()
    return {k: round(after[k] - before[k], 1) for k in before} if before and after else {}


def _stage_means(before: dict, after: dict) -> dict[str, float | None]:
    """Mean seconds per record in each of the worker's stages over the run (from its histograms)."""
    def value(samples: dict, suffix: str, stage: str) -> float:
        return sum(v for labels, v in samples.get(f"worker_stage_seconds_{suffix}", []) if labels.get("stage") == stage)

    means: dict[str, float | None] = {}
    for stage in STAGES:
        count = value(after, "count", stage) - value(before, "count", stage)
        means[stage] = round(1000 * (value(after, "sum", stage) - value(before, "sum", stage)) / count, 2) if count else None
    return means


def offer_load(args: argparse.Namespace, bootstrap: str, port: int, reader: OutputReader, topics: dict[str, str],
               texts: list[str], rate: float, prefix: str, worker_pid: int | None = None,
               skip_warm: bool = False) -> dict[str, Any]:
    """Offer ``rate`` messages/s at a steady pace for ``--latency-seconds``; latency percentiles of their results
    (``skip_warm``: without the first 5 %, which settle the loop into a new, high rate)."""
    from confluent_kafka import Producer

    count = max(200, int(rate * args.latency_seconds))
    log(f"latency: offering {rate:.0f} msg/s for {count / rate:.0f}s ({count} messages)")
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "acks": "all"})
    sent: dict[bytes, float] = {}
    before = scrape(port) or {}
    threads_before = thread_cpu_s(worker_pid) if worker_pid else {}
    cpu_before = machine_cpu()
    started = time.time()
    for i in range(count):
        due = started + i / rate
        pause = due - time.time()
        if pause > 0:
            time.sleep(pause)
        key = f"{prefix}-{i}".encode()
        sent[key] = time.time()
        producer.produce(topics["input"], texts[i % len(texts)].encode("utf-8"), key=key,
                         timestamp=int(sent[key] * 1000))  # the input record's timestamp, as the worker sees it
        producer.poll(0)
    offered_for = time.time() - started
    producer.flush(30)
    wait_until = time.time() + 60
    while time.time() < wait_until:
        if sum(1 for _, key, _ in reader.snapshot() if key in sent) >= count:
            break
        time.sleep(0.05)
    after = scrape(port) or {}
    cpu = cpu_since(cpu_before)
    threads_after = thread_cpu_s(worker_pid) if worker_pid else {}
    load_1m = os.getloadavg()[0]
    latency_rows = [(at, key, field) for at, key, field in reader.snapshot() if key in sent]
    warm = int(0.05 * len(latency_rows)) if skip_warm else 0
    measured = latency_rows[warm:]
    # (latency ms, seconds into the run it was offered at)
    timed = [(stamp - 1000 * sent[key], sent[key] - started) for _, key, stamp in measured if stamp is not None]
    field_ms = [ms for ms, _ in timed]
    # When the slowest results were offered: one cluster means a stall of the machine or the broker,
    # spread-out ones the loop itself.
    slowest = sorted(timed, reverse=True)[: max(1, len(timed) // 100)]
    slow_seconds = Counter(int(at) for ms, at in timed if ms > 50.0)
    received_ms = [1000 * (at - sent[key]) for at, key, _ in measured]
    d = {name: metric(after, name) - metric(before, name) for name in (
        "worker_inference_duration_seconds_sum", "worker_inference_duration_seconds_count",
        "worker_batch_size_messages_sum", "worker_batch_size_messages_count",
        "worker_real_tokens_total", "worker_padded_tokens_total")}
    batch_ms = 1000 * d["worker_inference_duration_seconds_sum"] / max(1.0, d["worker_inference_duration_seconds_count"])
    threads = {name: round(s - threads_before.get(name, 0.0), 2) for name, s in threads_after.items()
               if s - threads_before.get(name, 0.0) >= 0.05}
    return {
        "offered_per_s": round(count / offered_for, 1),
        "messages": count,
        "received": len(latency_rows),
        "p50_ms": round(percentile(field_ms, 0.50), 1),
        "p95_ms": round(percentile(field_ms, 0.95), 1),
        "p99_ms": round(percentile(field_ms, 0.99), 1),
        "max_ms": round(max(field_ms), 1) if field_ms else None,
        "over_50_ms": sum(1 for ms in field_ms if ms > 50.0),
        "over_100_ms": sum(1 for ms in field_ms if ms > 100.0),
        "receive_p50_ms": round(percentile(received_ms, 0.50), 1),
        "receive_p95_ms": round(percentile(received_ms, 0.95), 1),
        "receive_p99_ms": round(percentile(received_ms, 0.99), 1),
        "slowest_1_percent": [[round(ms, 1), round(at, 2)] for ms, at in slowest],  # [latency ms, offered at s]
        # Which seconds of the run the records over 50 ms were offered in, and how many in each.
        "seconds_with_records_over_50_ms": dict(sorted(slow_seconds.items())),
        "stage_mean_ms": _stage_means(before, after),
        "mean_batch_messages": round(d["worker_batch_size_messages_sum"] / max(1.0, d["worker_batch_size_messages_count"]), 1),
        "mean_batch_inference_ms": round(batch_ms, 2),
        "padding_efficiency": round(d["worker_real_tokens_total"] / d["worker_padded_tokens_total"], 4)
        if d["worker_padded_tokens_total"] else None,
        "worker_thread_cpu_s": dict(sorted(threads.items(), key=lambda kv: -kv[1])),
        "machine_cpu_s": cpu,
        "load_average_1m": round(load_1m, 2),
    }


def repeated_runs(args: argparse.Namespace, bootstrap: str, port: int, reader: OutputReader, topics: dict[str, str],
                  texts: list[str], worker_pid: int) -> dict[str, Any]:
    """``--latency-runs`` runs at ``--latency-rate`` with ``--latency-gap`` seconds of silence before each (a pause
    in traffic is one of the moments a real stream has); every run's figures and a summary over them."""
    runs = []
    for i in range(args.latency_runs):
        time.sleep(args.latency_gap)
        run = offer_load(args, bootstrap, port, reader, topics, texts, args.latency_rate, f"run{i}", worker_pid)
        run["run"] = i + 1
        runs.append(run)
        log(f"latency run {i + 1}/{args.latency_runs} at {args.latency_rate:g}/s: p50 {run['p50_ms']} ms, "
            f"p95 {run['p95_ms']} ms, p99 {run['p99_ms']} ms, max {run['max_ms']} ms; "
            f"{run['over_50_ms']} records over 50 ms; stage means {run['stage_mean_ms']}")
    p99s = [r["p99_ms"] for r in runs]
    return {
        "rate_per_s": args.latency_rate,
        "seconds_per_run": args.latency_seconds,
        "gap_s": args.latency_gap,
        "runs": runs,
        "p99_ms_per_run": p99s,
        "runs_p99_at_most_50_ms": sum(1 for p in p99s if p <= 50.0),
        "runs_p99_at_most_100_ms": sum(1 for p in p99s if p <= 100.0),
        "worst_p99_ms": max(p99s) if p99s else None,
    }
