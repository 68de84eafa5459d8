"""The torch engine (the reference): the transformers model, eager or ``torch.compile``'d where that pays off.

float32 or bfloat16 on the CPU, and the only engine for CUDA (float16 there, when asked for).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Sequence

from worker.engines.base import Encoding, warm_up_shapes
from worker.engines.cache import EngineCache
from worker.engines.device import resolve_device, resolve_dtype, usable_cpus
from worker.engines.source import ModelSource
from worker.engines.text import TextEncoder

log = logging.getLogger(__name__)


class HFClassifier:
    """The torch engine (the reference): a transformers model and the shared tokenizer side. Build it with :meth:`load`."""

    def __init__(
        self,
        encoder: TextEncoder,
        model: Any,
        labels: list[str],
        info: dict[str, str],
        compile_mode: str = "auto",
        multi_label: bool = False,
    ) -> None:
        self.encoder = encoder
        self.model = model
        self.labels = labels
        self.info = info
        self.multi_label = multi_label
        self._device = next(model.parameters()).device
        self._forward = model  # replaced by a torch.compile'd module in warm_up() where that pays off
        self.compile_mode = compile_mode  # auto: where should_compile() says it pays; on; off

    @property
    def tokenizer(self) -> Any:
        return self.encoder.tokenizer

    @property
    def max_length(self) -> int:
        return self.encoder.max_length

    @classmethod
    def load(
        cls,
        model: str,
        revision: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        threads: int | None = None,
        max_length: int | None = None,
        positive_index: int | None = None,
        labels: Sequence[str] | None = None,
        compile: str = "auto",
        source: ModelSource | None = None,
        problem_type: str = "auto",
    ) -> HFClassifier:
        import torch

        resolved_device = resolve_device(device)
        resolved_dtype = resolve_dtype(dtype, resolved_device)
        if resolved_device == "cpu":
            torch.set_num_threads(threads or usable_cpus())
        started = time.perf_counter()
        source = source or ModelSource.load(model, revision, max_length, positive_index, labels, problem_type)
        network = source.load_torch(resolved_device, resolved_dtype)
        info = {
            "model": source.model,
            "revision": source.revision,
            "device": resolved_device,
            "dtype": resolved_dtype,
            "engine": "torch",
            "precision": resolved_dtype,
            # worker_model_info says so for a multi-label model; a single-label model's info is as it was.
            **({"problem_type": source.problem_type} if source.multi_label else {}),
        }
        classifier = cls(source.encoder, network, source.labels, info, compile, source.multi_label)
        log.info(
            "model loaded",
            extra={"fields": {**info, "labels": classifier.labels, "max_length": classifier.max_length,
                              "load_s": round(time.perf_counter() - started, 2)}},
        )
        return classifier

    def encode(self, texts: Sequence[str]) -> list[Encoding]:
        return self.encoder.encode(texts)

    def predict(self, batch: Sequence[Sequence[int]]) -> list[list[float]]:
        import torch

        input_ids, attention = self.encoder.pad(batch)  # numpy, shared with torch without a copy
        with torch.inference_mode():
            logits = self._forward(
                input_ids=torch.from_numpy(input_ids).to(self._device),
                attention_mask=torch.from_numpy(attention).to(self._device),
            ).logits
            logits = logits.float()
            probabilities = torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=-1)
            return probabilities.cpu().tolist()

    def warm_up(self) -> None:
        """Compile where it pays off, then run a few shapes once so the first real batch pays for nothing lazy."""
        wanted = self.compile_mode == "on" or (
            self.compile_mode == "auto" and should_compile(self.model, str(self._device), self.info.get("dtype", ""))
        )
        if wanted:
            self._forward = compile_for_cpu(self.model)
        started = time.perf_counter()
        warm_up_shapes(self)
        if self._forward is not self.model:
            self.info["compiled"] = "inductor"
            log.info("model compiled", extra={"fields": {"compile_s": round(time.perf_counter() - started, 1)}})


def build(source: ModelSource, precision: str, threads: int, cache: EngineCache, compile_mode: str,
          device: str) -> HFClassifier:
    """The engine table's build hook: torch reads the checkpoint itself (``cache`` is not needed)."""
    return HFClassifier.load(source.model, device=device, dtype=precision, threads=threads, compile=compile_mode,
                             source=source)


# torch.compile (inductor, weights frozen into the graph, dynamic shapes) fuses GELU,
# layer norm and the residual adds into the bf16 matmuls: on a 2-core AMX Xeon it gave
# ~900-1000 texts/s against ~600 eager (benchmarks/README.md). It costs about a minute of
# compilation at start-up (inductor caches on disk afterwards), so it is done only where
# it pays: a full-size model on the CPU in bfloat16, not the tiny test models.
COMPILE_MIN_PARAMETERS = 5_000_000


def should_compile(model: Any, device: str, dtype: str) -> bool:
    if device != "cpu" or dtype != "bfloat16":
        return False
    try:
        import torch._inductor  # noqa: F401
    except Exception:  # noqa: BLE001 - no inductor, no compile
        return False
    return sum(p.numel() for p in model.parameters()) >= COMPILE_MIN_PARAMETERS


def compile_for_cpu(model: Any) -> Any:
    import torch
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True  # constant-fold and pre-pack the weights (inference only)
    return torch.compile(model, dynamic=True)
