"""ONNX Runtime on the CPU: the exported float32 graph, or its int8 dynamic quantization.

Export with ``torch.onnx.export`` (``export.export_onnx``), quantize with ONNX Runtime's own
``quantize_dynamic`` (int8 weights, activations quantized per batch at run time): no calibration
set, about a second on 2 vCPUs.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from worker.engines.cache import EngineCache, library_versions
from worker.engines.export import onnx_export, onnx_name
from worker.engines.exported import ExportedClassifier
from worker.engines.source import ModelSource

log = logging.getLogger(__name__)

NAME = "onnxruntime"
INT8_FILE = "model.int8.onnx"


def missing(precision: str | None = None) -> str | None:
    """Why this engine cannot run here (at any precision), or None."""
    import importlib.util

    for module in ("onnxruntime", "onnx"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (a core dependency: pip install onnxruntime onnx)"
    return None


def int8_name(source: ModelSource, cache: EngineCache) -> str:
    return cache.artifact_name(source, "onnxruntime-int8", library_versions("torch", "transformers", "onnxruntime"))


def is_exported(source: ModelSource, precision: str, cache: EngineCache) -> bool:
    name = onnx_name(source, cache) if precision == "float32" else int8_name(source, cache)
    return cache.has(name)


def model_file(source: ModelSource, precision: str, cache: EngineCache) -> Path:
    fp32 = onnx_export(source, cache)
    if precision == "float32":
        return fp32

    def quantize(tmp: Path) -> None:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        started = time.perf_counter()
        log.info("quantizing to int8 with onnxruntime.quantization.quantize_dynamic")
        quantize_dynamic(str(fp32), str(tmp / INT8_FILE), weight_type=QuantType.QInt8)
        log.info("quantized", extra={"fields": {"quantize_s": round(time.perf_counter() - started, 1)}})

    return cache.get_or_build(int8_name(source, cache), quantize, "ONNX Runtime int8") / INT8_FILE


def session_options(threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Worker threads that spin between operators take the cores the Kafka loop and the tokenizer
    # need; on 2 shared vCPUs not spinning measured 1.3-2x faster (benchmarks/README.md).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # Memory patterns are planned and kept per input shape; with a new (rows, width) every batch
    # they only grow. The arena stays: its size is bounded by the largest sub-batch
    # (WORKER_SUB_BATCH_MAX_TOKENS padded tokens).
    options.enable_mem_pattern = False
    options.log_severity_level = 3
    return options


class OnnxRuntimeClassifier(ExportedClassifier):
    def __init__(self, source: ModelSource, session: Any, info: dict[str, str]) -> None:
        super().__init__(source, info)
        self._session = session

    @classmethod
    def load(cls, source: ModelSource, precision: str, threads: int, cache: EngineCache) -> OnnxRuntimeClassifier:
        import onnxruntime as ort

        path = model_file(source, precision, cache)
        started = time.perf_counter()
        session = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
        info = {"model": source.model, "revision": source.revision, "device": "cpu", "dtype": precision,
                "engine": NAME, "precision": precision}
        log.info("model loaded", extra={"fields": {**info, "file": str(path), "load_s": round(time.perf_counter() - started, 2)}})
        return cls(source, session, info)

    def _logits(self, input_ids: Any, attention_mask: Any) -> Any:
        return self._session.run(None, {"input_ids": input_ids, "attention_mask": attention_mask})[0]


def build(source: ModelSource, precision: str, threads: int, cache: EngineCache, compile_mode: str,
          device: str) -> OnnxRuntimeClassifier:
    """The engine table's build hook (the table runs it on the CPU only; there is nothing to compile)."""
    return OnnxRuntimeClassifier.load(source, precision, threads, cache)
