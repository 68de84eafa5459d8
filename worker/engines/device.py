"""Where and in what a model runs when nothing was measured: the device, torch's dtype, the usable cores.

Nothing here imports torch unless it must: :func:`cuda_possible` answers ``WORKER_DEVICE=auto``
without it where no NVIDIA driver is loaded.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from worker.errors import ModelLoadError


def cpu_supports_bf16() -> bool:
    """AVX-512 BF16 or AMX in the CPU flags (reported by the benchmark; engine choice is measured, not read from flags)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", flags))


def cuda_possible() -> bool:
    """False where no NVIDIA driver is loaded: then ``WORKER_DEVICE=auto`` is the CPU without importing torch."""
    return Path("/dev/nvidiactl").exists() or Path("/proc/driver/nvidia/version").exists()


def resolve_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError("device", f"WORKER_DEVICE={requested} but no CUDA device is available")
    return requested


def resolve_dtype(requested: str, device: str) -> str:
    """The torch dtype when nothing was measured: CUDA's half type, else what the CPU flags suggest.

    ``worker.engines.loading`` measures instead where it has a choice; this is the fallback for a
    direct :meth:`HFClassifier.load <worker.engines.torch_engine.HFClassifier.load>` and for CUDA.
    """
    if requested != "auto":
        return requested
    if device.startswith("cuda"):
        import torch

        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "bfloat16" if device == "cpu" and cpu_supports_bf16() else "float32"


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
