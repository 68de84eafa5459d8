"""Part 6: end-to-end latency p50/p95/p99 of results at a steady, rate-limited offered load, measured outside
the worker (from the input record's timestamp to the result record's)."""

from __future__ import annotations

import argparse
import time
from typing import Any

from benchmarks.inputs import log
from benchmarks.through_kafka import OutputReader
from harness.probes import metric, scrape
from harness.stats import percentile


def offer_load(args: argparse.Namespace, bootstrap: str, port: int, reader: OutputReader, topics: dict[str, str],
               texts: list[str], rate: float, prefix: str) -> dict[str, Any]:
    """Offer ``rate`` messages/s at a steady pace for ``--latency-seconds``; latency percentiles of their results."""
    from confluent_kafka import Producer

    count = max(200, int(rate * args.latency_seconds))
    log(f"latency: offering {rate:.0f} msg/s for {count / rate:.0f}s ({count} messages)")
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "acks": "all"})
    sent: dict[bytes, float] = {}
    before = scrape(port) or {}
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
