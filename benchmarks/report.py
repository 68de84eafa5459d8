"""The markdown report of ``make bench``: the engines table, one row per part, the ratios against their targets."""

from __future__ import annotations

from typing import Any


def latency_figures(run: dict) -> str:
    """One latency run's percentiles and windows, as the table shows them."""
    return (f"p50 {run['p50_ms']} ms, p95 {run['p95_ms']} ms, **p99 {run['p99_ms']} ms**, max {run.get('max_ms')} ms; "
            f"mean window {run['mean_batch_messages']} messages, {run['mean_batch_inference_ms']} ms")


def spans(seconds: dict) -> str:
    """Seconds of a run as ranges: {0: 3, 1: 5, 2: 1, 7: 2} -> "0-2, 7"."""
    ordered = sorted(int(s) for s in seconds)
    parts: list[str] = []
    start = prev = None
    for s in ordered + [None]:
        if s is not None and prev is not None and s == prev + 1:
            prev = s
            continue
        if start is not None:
            parts.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = s
    return ", ".join(parts)


def table(results: dict[str, Any]) -> str:
    m = results["machine"]
    p1, p3, p5 = results.get("pipeline"), results.get("in_memory"), results.get("end_to_end")
    engines, startup = results.get("engines") or {}, results.get("startup")
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, bf16 flags: {m['cpu_bf16']}; torch {m['torch']}, "
        f"transformers {m['transformers']}; model {results['model_kind']}; texts {results['data_kind']}; {results['timestamp']}",
        "",
    ]
    if engines:
        lines += ["| engine/precision | window 1 | window 8 | window 32 | window 500 | RSS after warm-up (MB) | RSS at end (MB) |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for name, e in engines.items():
            if "rates" not in e:
                lines.append(f"| {name} | – | – | – | – | {e.get('skipped') or e.get('error')} | |")
                continue
            rates = [str(e["rates"].get(w, "–")) for w in ("1", "8", "32", "500")]
            memory = e.get("memory")
            end = f"{e['rss_mb_end']} after {memory['texts']} texts" if memory else e["rss_mb_end"]
            lines.append(f"| {name} | {' | '.join(rates)} | {e['rss_mb_after_warm_up']} | {end} |")
        lines.append("")
    lines += ["| # | what | messages | messages/s | notes |", "|---|---|---:|---:|---|"]
    if p1:
        lines.append(f"| 1 | seed: `pipeline()` once per message | {p1['messages']} | {p1['messages_per_s']} | dtype {p1['dtype']} |")
    if p3:
        info = p3["model_info"]
        lines.append(f"| 3 | worker batching + `auto`'s choice ({info.get('engine')}/{info.get('precision')}), in memory | "
                     f"{p3['messages']} | {p3['messages_per_s']} | padding eff. {p3['padding_efficiency']}, "
                     f"mean batch {p3['mean_batch_messages']} |")
    if startup:
        cold, warm = startup["cold"], startup["warm"]
        lines.append(f"| 4 | start-up to ready, cold / warm | – | – | **{cold['ready_s']} s / {warm['ready_s']} s** "
                     f"(targets ≤ 60 / ≤ 15 s); RSS at ready {cold['rss_mb_at_ready']} / {warm['rss_mb_at_ready']} MB |")
    if p5:
        info = p5["worker_model_info"]
        lines.append(f"| 5 | worker end to end via Kafka ({info.get('engine')}/{info.get('precision')}, {info.get('selection')}) | "
                     f"{p5['messages']} | {p5['messages_per_s']} | {p5['messages_per_s_from_ready']}/s counting group join; "
                     f"RSS {p5['rss_mb_after_warm_up']} MB after warm-up, {p5.get('rss_mb_end')} MB at the end |")
        repeated = p5.get("latency_repeated")
        if repeated:
            for run in repeated["runs"]:
                slow = run["seconds_with_records_over_50_ms"]
                where = f"{run['over_50_ms']} over 50 ms, offered in seconds {spans(slow)}" if slow else "none over 50 ms"
                lines.append(f"| 6 | latency at {repeated['rate_per_s']:g}/s, run {run['run']} of {len(repeated['runs'])} "
                             f"({where}) | {run['messages']} | – | {latency_figures(run)} |")
            lines.append(f"| 6 | the {len(repeated['runs'])} runs at {repeated['rate_per_s']:g}/s | – | – | p99 ≤ 50 ms in "
                         f"**{repeated['runs_p99_at_most_50_ms']} of {len(repeated['runs'])}**, ≤ 100 ms in "
                         f"{repeated['runs_p99_at_most_100_ms']}; worst p99 {repeated['worst_p99_ms']} ms |")
        run = p5.get("latency")
        if run:
            lines.append(f"| 6 | latency at {run['offered_per_s']}/s offered ({run['label']}; {run['target']}: "
                         f"{'met' if run['met'] else 'missed'}) | {run['messages']} | – | {latency_figures(run)} |")
        lines.append(f"| 7 | padding efficiency / mean batch at full load | {p5['batches']} batches | – | "
                     f"**{p5['padding_efficiency']}** / {p5['mean_batch_messages']} messages, "
                     f"{p5['mean_batch_inference_ms']} ms per batch |")
    p8 = results.get("baseline")
    if p8:
        info = p8["worker_model_info"]
        lines.append(f"| 8 | the torch-engine worker end to end ({info.get('engine')}/{info.get('precision')}; "
                     f"the worker before the engines) | {p8['messages']} | {p8['messages_per_s']} | "
                     f"RSS {p8['rss_mb_after_warm_up']} MB after warm-up, {p8.get('rss_mb_after_full_load')} MB at the end |")
    r = results["ratios"]
    lines += ["", "| ratio | value | target |", "|---|---:|---:|"]
    if "e2e_over_pipeline" in r:
        lines.append(f"| (5)/(1) | {r['e2e_over_pipeline']} | – |")
    if "e2e_over_in_memory" in r:
        lines.append(f"| (5)/(3) | {r['e2e_over_in_memory']} | ≥ 0.9 |")
    if "e2e_over_torch_worker" in r:
        lines.append(f"| (5)/(8) | {r['e2e_over_torch_worker']} | ≥ 1.5 |")
    if "in_memory_over_pipeline" in r:
        lines.append(f"| (3)/(1) | {r['in_memory_over_pipeline']} | – |")
    if p3 and p3.get("selection_table"):
        lines += ["", f"`auto`'s measurement in part 3 ({p3['selection']['seconds']} s):", "", p3["selection_table"]]
    return "\n".join(lines)
