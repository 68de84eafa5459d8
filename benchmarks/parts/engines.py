"""Part 2: every installed engine and precision in memory, each in its own process (benchmarks/engine_run.py,
so that its speed and RSS are its own): texts/s per window size, RSS."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.inputs import log
from harness.paths import REPO


def bench_engines(model: Path, data: Path, cache_dir: Path, memory_texts: int) -> dict[str, Any]:
    from worker.engines.registry import ENGINES, unavailable
    from worker.engines.selection import Candidate

    results: dict[str, Any] = {}
    for engine, spec in ENGINES.items():
        for precision in spec.precisions:
            name = f"{engine}/{precision}"
            why = unavailable(Candidate(engine, precision))
            if why:
                results[name] = {"skipped": why}
                log(f"part 2: {name} skipped: {why}")
                continue
            log(f"part 2: {name} in memory, windows 1, 8, 32, 500" + (f", RSS over {memory_texts} texts" if memory_texts else ""))
            command = [sys.executable, str(REPO / "benchmarks" / "engine_run.py"), "--model", str(model), "--data", str(data),
                       "--engine", engine, "--dtype", precision, "--cache-dir", str(cache_dir),
                       "--memory-texts", str(memory_texts)]
            run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=3600)
            if run.returncode != 0:
                results[name] = {"error": run.stderr.strip().splitlines()[-1:] or ["?"]}
                log(f"part 2: {name} failed: {results[name]['error']}")
                continue
            results[name] = json.loads(run.stdout.strip().splitlines()[-1])
            log(f"part 2: {name}: {results[name]['rates']} texts/s")
    return results
