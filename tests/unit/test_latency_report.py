"""The latency part of the benchmark reports every run, not one: its table rows and summary (no timing here)."""

from __future__ import annotations

from benchmarks.report import spans, table


def run(number, p99, slow_seconds):
    return {"run": number, "messages": 4000, "p50_ms": 12.0, "p95_ms": 30.0, "p99_ms": p99, "max_ms": p99 * 1.5,
            "over_50_ms": sum(slow_seconds.values()), "seconds_with_records_over_50_ms": slow_seconds,
            "mean_batch_messages": 1.4, "mean_batch_inference_ms": 11.0}


def test_spans_groups_consecutive_seconds():
    assert spans({}) == ""
    assert spans({"0": 3, "1": 1, "2": 1, "7": 2, "9": 1, "10": 4}) == "0-2, 7, 9-10"


def test_table_shows_every_run_and_how_many_met_the_target():
    runs = [run(1, 31.0, {}), run(2, 48.0, {"0": 2}), run(3, 120.0, {"36": 5, "37": 9})]
    results = {"end_to_end": {
        "messages": 20000, "messages_per_s": 150.0, "messages_per_s_from_ready": 149.0, "rss_mb_after_warm_up": 150,
        "rss_mb_end": 160, "worker_model_info": {"engine": "onnxruntime", "precision": "int8"}, "batches": 40,
        "padding_efficiency": 0.98, "mean_batch_messages": 500, "mean_batch_inference_ms": 3300.0,
        "latency_repeated": {"rate_per_s": 100.0, "runs": runs, "runs_p99_at_most_50_ms": 2,
                             "runs_p99_at_most_100_ms": 2, "worst_p99_ms": 120.0},
    }, "ratios": {}, "model_kind": "stand-in", "data_kind": "NSMC test", "timestamp": "2026-12-02T13:00:00",
        "machine": {"cpu": "AMD EPYC", "cores": 2, "memory_gib": 23.5, "cpu_bf16": False, "torch": "2", "transformers": "4"}}
    text = table(results)
    rows = [line for line in text.splitlines() if line.startswith("| 6 | latency at 100/s, run")]
    assert len(rows) == 3
    assert "none over 50 ms" in rows[0] and "**p99 31.0 ms**" in rows[0]
    assert "14 over 50 ms, offered in seconds 36-37" in rows[2]
    assert "p99 ≤ 50 ms in **2 of 3**, ≤ 100 ms in 2; worst p99 120.0 ms" in text


def test_largest_soak_texts_stay_under_the_worker_limit():
    from benchmarks.soak import largest_texts

    texts = largest_texts(3, {"WORKER_MAX_MESSAGE_BYTES": "200000"})
    sizes = [len(t.encode("utf-8")) for t in texts]
    assert all(190_000 < size < 200_000 - 500 for size in sizes)
    assert len(set(texts)) == 3
