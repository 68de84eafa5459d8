"""Memory hygiene around the engines: bounds on per-shape caches, and handing freed memory back between candidates."""

from __future__ import annotations

import ctypes
import gc
import os

# oneDNN (torch's CPU kernels) keeps 1,024 primitives by default, one per new shape: 64 cut torch's growth
# over 15,000 texts in varying windows by about half, with no loss of speed measured at windows of 1-32
# (benchmarks/README.md, "Memory"). Read once, when torch first runs a kernel. (glibc malloc limits were
# tried too: within noise for ONNX Runtime and OpenVINO, 40 % slower for torch at small windows; not used.)
ONEDNN_PRIMITIVE_CACHE = "64"


def bound_memory() -> None:
    """Limits on what grows with the number of distinct batch shapes; an operator's own environment wins."""
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", ONEDNN_PRIMITIVE_CACHE)


def release_memory() -> None:
    """Collect the last candidate's objects and hand freed heap pages back to the system (glibc)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass
