"""OpenVINO on the CPU: the model converted from the ONNX export, run in float32 or bfloat16, or quantized to int8 by NNCF.

``openvino.convert_model`` reads the same ``model.onnx`` ONNX Runtime runs (one export for both);
the IR is saved in full precision and the precision is chosen when compiling
(``INFERENCE_PRECISION_HINT``). int8 is NNCF's post-training quantization (``nncf.quantize``,
transformer preset) with statistics from the package's calibration texts.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from pathlib import Path
from typing import Any

from worker.engines.cache import EngineCache, library_versions
from worker.engines.calibration import statistics_texts
from worker.engines.export import onnx_export
from worker.engines.exported import ExportedClassifier
from worker.engines.source import ModelSource

log = logging.getLogger(__name__)

NAME = "openvino"
IR_FILE = "model.xml"
_HINTS = {"float32": "f32", "bfloat16": "bf16"}
# The CPU plugin keeps compiled kernels per input shape, 5,000 by default; batches come in
# thousands of (rows, width) shapes, so memory grows for a long time. Measured on the stand-in over
# 15,000 texts in varying windows: +245 MB with 256 entries, +140 MB with 16 and flat after ~6,000
# texts, with no loss of speed visible through the noise (benchmarks/README.md, "Memory").
RUNTIME_CACHE_CAPACITY = 16
# NNCF statistics: this many texts, a few per padded batch (like the worker's small windows).
STATISTICS_BATCH = 8


def missing(precision: str | None = None) -> str | None:
    """Why this engine cannot run here at ``precision``, or None."""
    import importlib.util

    if importlib.util.find_spec("openvino") is None:
        return "openvino is not installed (pip install 'koelectra-worker[openvino]')"
    if precision == "int8" and importlib.util.find_spec("nncf") is None:
        return "nncf is not installed (pip install 'koelectra-worker[openvino]')"
    return None


def ir_name(source: ModelSource, precision: str, cache: EngineCache) -> str:
    libraries = library_versions("torch", "transformers", "openvino")
    if precision != "int8":
        return cache.artifact_name(source, "openvino-float32", libraries)
    libraries.update(library_versions("nncf"), statistics_texts=str(len(statistics_texts())))
    return cache.artifact_name(source, "openvino-int8", libraries)


def is_exported(source: ModelSource, precision: str, cache: EngineCache) -> bool:
    return cache.has(ir_name(source, precision, cache))


def ir_file(source: ModelSource, precision: str, cache: EngineCache) -> Path:
    onnx_path = onnx_export(source, cache)

    def convert(tmp: Path) -> None:
        import openvino as ov

        started = time.perf_counter()
        log.info("converting the ONNX export with openvino.convert_model")
        ov.save_model(ov.convert_model(str(onnx_path)), str(tmp / IR_FILE), compress_to_fp16=False)
        log.info("converted", extra={"fields": {"convert_s": round(time.perf_counter() - started, 1)}})

    fp32 = cache.get_or_build(ir_name(source, "float32", cache), convert, "OpenVINO conversion") / IR_FILE
    if precision != "int8":
        return fp32

    def quantize(tmp: Path) -> None:
        import nncf
        import openvino as ov

        texts = statistics_texts()
        batches = [source.encoder.pad([e.ids for e in source.encoder.encode(texts[i : i + STATISTICS_BATCH])])
                   for i in range(0, len(texts), STATISTICS_BATCH)]
        started = time.perf_counter()
        log.info("quantizing to int8 with nncf.quantize (transformer preset)",
                 extra={"fields": {"texts": len(texts), "batches": len(batches)}})
        # NNCF draws its progress bars on stdout, which belongs to `worker classify --json`.
        with contextlib.redirect_stdout(sys.stderr):
            quantized = nncf.quantize(
                ov.Core().read_model(str(fp32)),
                nncf.Dataset(batches, lambda batch: {"input_ids": batch[0], "attention_mask": batch[1]}),
                model_type=nncf.ModelType.TRANSFORMER,
                subset_size=len(batches),
            )
        ov.save_model(quantized, str(tmp / IR_FILE), compress_to_fp16=False)
        log.info("quantized", extra={"fields": {"quantize_s": round(time.perf_counter() - started, 1)}})

    return cache.get_or_build(ir_name(source, "int8", cache), quantize, "OpenVINO int8") / IR_FILE


class OpenVinoClassifier(ExportedClassifier):
    def __init__(self, source: ModelSource, compiled: Any, info: dict[str, str]) -> None:
        super().__init__(source, info)
        self._compiled = compiled
        self._request = compiled.create_infer_request()
        self._output = compiled.output(0)

    @classmethod
    def load(cls, source: ModelSource, precision: str, threads: int, cache: EngineCache) -> OpenVinoClassifier:
        import openvino as ov

        path = ir_file(source, precision, cache)
        config: dict[str, Any] = {
            "INFERENCE_NUM_THREADS": threads,
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
            "CPU_RUNTIME_CACHE_CAPACITY": RUNTIME_CACHE_CAPACITY,
        }
        if precision in _HINTS:
            config["INFERENCE_PRECISION_HINT"] = _HINTS[precision]
        started = time.perf_counter()
        core = ov.Core()
        compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        # What the plugin really runs in: bfloat16 only where the CPU has it; int8 models run
        # their other operators in the plugin's default (bf16 on such CPUs, else f32).
        runs_in = compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
        info = {"model": source.model, "revision": source.revision, "device": "cpu", "dtype": precision,
                "engine": NAME, "precision": precision, "inference_precision": runs_in}
        log.info("model loaded", extra={"fields": {**info, "file": str(path), "load_s": round(time.perf_counter() - started, 2)}})
        return cls(source, compiled, info)

    def runs_as_requested(self) -> bool:
        """False when bfloat16 was asked for and the CPU runs float32 instead (a duplicate of the float32 candidate)."""
        return self.info["precision"] != "bfloat16" or "bf16" in self.info["inference_precision"]

    def _logits(self, input_ids: Any, attention_mask: Any) -> Any:
        return self._request.infer({"input_ids": input_ids, "attention_mask": attention_mask})[self._output]


def build(source: ModelSource, precision: str, threads: int, cache: EngineCache, compile_mode: str,
          device: str) -> OpenVinoClassifier:
    """The engine table's build hook (the table runs it on the CPU only; there is nothing to compile)."""
    return OpenVinoClassifier.load(source, precision, threads, cache)
