"""What every benchmark runs with and records: the model, the texts, the machine; where results go; progress lines."""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness.models import SMALL_V3, build_model
from harness.paths import NSMC_SAMPLE, NSMC_TEST, REPO, STAND_IN

RESULTS = REPO / "benchmarks" / "results"


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def default_model() -> tuple[Path, str]:
    """The stand-in model when present, else KoELECTRA-Small-v3's configuration with random weights."""
    if STAND_IN.is_dir():
        return STAND_IN, "stand-in koelectra-small-v3-nsmc-scratch"
    target = Path(tempfile.gettempdir()) / "koelectra-small-v3-random"
    if not (target / "config.json").is_file():
        build_model(target, SMALL_V3)
    return target, "KoELECTRA-Small-v3 config, random weights"


def default_data() -> Path:
    return NSMC_TEST if NSMC_TEST.is_file() else NSMC_SAMPLE


def load_texts(path: Path, count: int) -> list[str]:
    """``count`` texts from an NSMC-format TSV, cycling through the file if it has fewer."""
    from worker.datasets import read_nsmc

    texts = [text for text, _ in read_nsmc(path)]
    return [texts[i % len(texts)] for i in range(count)]


def machine_info() -> dict[str, Any]:
    import torch
    import transformers

    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 0
    from worker.engines.loading import LIBRARIES
    from worker.engines.cache import library_versions
    from worker.engines.selection import machine
    from worker.engines.device import cpu_supports_bf16

    return {
        "cpu": cpu,
        "cores": cores,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "cpu_bf16": cpu_supports_bf16(),
        "cpu_flags": machine()["cpu_flags"],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "libraries": library_versions(*LIBRARIES),
        "platform": platform.platform(),
    }
