"""Part 4: ``worker run`` from launch to /readyz 200, cold (an empty engine cache: export, quantization,
measurement) then warm (the same cache again), with its RSS at ready."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from benchmarks.inputs import RESULTS, log
from benchmarks.through_kafka import drop_topics, launch, worker_process_env
from harness.probes import model_info, scrape
from harness.processes import free_port, rss_mb, terminate, wait_ready
from harness.topics import fresh_topics


def bench_startup(bootstrap: str, model: Path, cache_dir: Path, timeout: float) -> dict[str, Any]:
    topics = fresh_topics(bootstrap, partitions=1, prefix="bench-start-")
    result: dict[str, Any] = {}
    try:
        for kind in ("cold", "warm"):
            port = free_port()
            env = worker_process_env(bootstrap, topics, model, port, cache_dir)
            log_name = f"worker-start-{kind}.log"
            launched = time.time()
            worker = launch(env, log_name)
            try:
                wait_ready(worker, port, timeout, RESULTS / log_name)
                ready_s = round(time.time() - launched, 2)
                info = model_info(scrape(port) or {})
                result[kind] = {"ready_s": ready_s, "rss_mb_at_ready": rss_mb(worker.pid), "model_info": info}
            finally:
                terminate(worker, 60)
            log(f"start-up {kind}: ready after {result[kind]['ready_s']} s, RSS {result[kind]['rss_mb_at_ready']} MB, "
                f"{info.get('engine')}/{info.get('precision')} ({info.get('selection')})")
    finally:
        drop_topics(bootstrap, list(topics.values()))
    return result
