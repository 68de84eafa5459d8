"""THE table of engines: each one's name, precisions, where it runs and its hooks, in one row.

Hooks are ``"module:attribute"`` strings imported when first called (as uvicorn's ``config.py`` names
its loops and protocols), so that naming an engine imports none of its libraries. Adding an engine is
one row here and one module with the hooks:

- ``build(source, precision, threads, cache, compile_mode, device) -> Classifier``;
- ``missing(precision) -> str | None``: why it cannot run on this installation (None: it always can);
- ``is_exported(source, precision, cache) -> bool``: its export is cached (None: it reads the checkpoint itself).

Everything that picks an engine by name (``WORKER_ENGINE``, ``WORKER_DTYPE``, ``auto``'s candidates,
the benchmark) goes through :data:`ENGINES`.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from typing import Any, Callable

from worker.engines.base import Classifier
from worker.engines.cache import EngineCache
from worker.engines.selection import Candidate
from worker.engines.source import ModelSource
from worker.errors import ModelLoadError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Engine:
    build: str  # "module:attribute" of the build hook
    precisions: tuple[str, ...]  # what ``auto`` may pick from, in the order they are measured
    on_request: tuple[str, ...] = ()  # precisions it runs only when asked for by name
    cpu_only: bool = True  # False: it also runs on a GPU (WORKER_DEVICE=cuda)
    compiles: bool = False  # WORKER_COMPILE applies to it (torch.compile)
    missing: str | None = None  # "module:attribute" of the missing hook
    is_exported: str | None = None  # "module:attribute" of the is_exported hook

    @property
    def supported(self) -> tuple[str, ...]:
        return self.precisions + self.on_request


ENGINES: dict[str, Engine] = {
    # The reference; float16 is for CUDA, where it is the only engine.
    "torch": Engine("worker.engines.torch_engine:build", ("float32", "bfloat16"), on_request=("float16",),
                    cpu_only=False, compiles=True),
    "onnxruntime": Engine("worker.engines.onnxruntime_engine:build", ("float32", "int8"),
                          missing="worker.engines.onnxruntime_engine:missing",
                          is_exported="worker.engines.onnxruntime_engine:is_exported"),
    "openvino": Engine("worker.engines.openvino_engine:build", ("float32", "bfloat16", "int8"),
                       missing="worker.engines.openvino_engine:missing",
                       is_exported="worker.engines.openvino_engine:is_exported"),
}


def hook(reference: str) -> Callable[..., Any]:
    """The callable a ``"module:attribute"`` string names, looked up at each call (so tests may replace it)."""
    module, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module), attribute)


def unavailable(candidate: Candidate) -> str | None:
    """Why a candidate cannot run on this installation, or None."""
    check = ENGINES[candidate.engine].missing
    return hook(check)(candidate.precision) if check else None


def candidates(engine: str, dtype: str) -> list[Candidate]:
    """The CPU candidates ``WORKER_ENGINE``/``WORKER_DTYPE`` allow and this installation can run.

    An engine or precision asked for by name that cannot run is an error; ``auto`` skips what is not installed.
    """
    if engine != "auto" and engine not in ENGINES:
        raise ModelLoadError(engine, f"WORKER_ENGINE={engine} is not an engine (auto, {', '.join(ENGINES)})")
    names = list(ENGINES) if engine == "auto" else [engine]
    wanted: list[Candidate] = []
    for name in names:
        supported = ENGINES[name].supported
        precisions = ENGINES[name].precisions if dtype == "auto" else (dtype,)
        for precision in precisions:
            if precision not in supported:
                if engine != "auto":
                    raise ModelLoadError(name, f"WORKER_DTYPE={dtype} is not supported by WORKER_ENGINE={name} "
                                               f"(it runs {', '.join(supported)})")
                continue
            candidate = Candidate(name, precision)
            why = unavailable(candidate)
            if why is None:
                wanted.append(candidate)
            elif engine != "auto":
                raise ModelLoadError(name, f"WORKER_ENGINE={name}: {why}")
            else:
                log.info("engine candidate skipped", extra={"fields": {"candidate": str(candidate), "reason": why}})
    if not wanted:
        raise ModelLoadError(engine, f"no installed engine runs WORKER_DTYPE={dtype}")
    return wanted


def compiles(engine: str) -> bool:
    """True when ``WORKER_COMPILE`` applies to ``engine`` (False for ``auto`` and for names not in the table)."""
    spec = ENGINES.get(engine)
    return spec is not None and spec.compiles


def gpu_engines() -> list[str]:
    """The engines that run on a GPU, in the table's order."""
    return [name for name, spec in ENGINES.items() if not spec.cpu_only]


def build(candidate: Candidate, source: ModelSource, threads: int, cache: EngineCache, compile_mode: str = "off",
          device: str = "cpu") -> Classifier:
    return hook(ENGINES[candidate.engine].build)(source, candidate.precision, threads, cache, compile_mode, device)


def is_exported(candidate: Candidate, source: ModelSource, cache: EngineCache) -> bool:
    check = ENGINES[candidate.engine].is_exported
    return hook(check)(source, candidate.precision, cache) if check else True
