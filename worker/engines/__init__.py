"""Inference engines behind the :class:`worker.model.Classifier` protocol, and ``WORKER_ENGINE=auto``'s choice.

- ``torch``: the transformers model (the reference; float32 or bfloat16 on the CPU, the only engine for CUDA);
- ``onnxruntime``: the model exported with ``torch.onnx.export``, float32 or int8 (``quantize_dynamic``);
- ``openvino``: the same export converted with ``openvino.convert_model``, float32, bfloat16 or int8 (NNCF).

Every engine shares the checkpoint's tokenizer and labels (:class:`worker.model.ModelSource`), so
they differ only in how the padded ids become probabilities. Exports are cached on disk
(``worker.engines.cache``); ``auto``'s measurement is cached per machine (``selection``).
"""

from __future__ import annotations

import ctypes
import gc
import logging
import time
from pathlib import Path
from typing import Any, Callable

from worker.engines import onnxruntime_engine, openvino_engine
from worker.engines.cache import FORMAT_VERSION, EngineCache, cache_key, library_versions, model_fingerprint
from worker.engines.calibration import agreement_rows
from worker.engines.selection import Candidate, SelectionReport, choose, machine, measure
from worker.errors import ModelLoadError
from worker.model import Classifier, HFClassifier, ModelSource, resolve_device, resolve_dtype, usable_cpus

log = logging.getLogger(__name__)

ENGINES = ("torch", "onnxruntime", "openvino")
# What ``auto`` may pick from, per engine; float16 runs only when asked for (torch, meant for CUDA).
AUTO_PRECISIONS = {
    "torch": ("float32", "bfloat16"),
    "onnxruntime": onnxruntime_engine.PRECISIONS,
    "openvino": openvino_engine.PRECISIONS,
}
SUPPORTED_PRECISIONS = {**AUTO_PRECISIONS, "torch": ("float32", "bfloat16", "float16")}
LIBRARIES = ("torch", "transformers", "onnxruntime", "openvino", "nncf", "tokenizers")


def unavailable(candidate: Candidate) -> str | None:
    """Why a candidate cannot run on this installation, or None."""
    if candidate.engine == "onnxruntime":
        return onnxruntime_engine.missing()
    if candidate.engine == "openvino":
        return openvino_engine.missing(candidate.precision)
    return None


def candidates(engine: str, dtype: str) -> list[Candidate]:
    """The CPU candidates ``WORKER_ENGINE``/``WORKER_DTYPE`` allow and this installation can run.

    An engine or precision asked for by name that cannot run is an error; ``auto`` skips what is not installed.
    """
    engines = ENGINES if engine == "auto" else (engine,)
    wanted: list[Candidate] = []
    for name in engines:
        precisions = AUTO_PRECISIONS[name] if dtype == "auto" else (dtype,)
        for precision in precisions:
            if precision not in SUPPORTED_PRECISIONS[name]:
                if engine != "auto":
                    raise ModelLoadError(name, f"WORKER_DTYPE={dtype} is not supported by WORKER_ENGINE={name} "
                                               f"(it runs {', '.join(SUPPORTED_PRECISIONS[name])})")
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


def build(candidate: Candidate, source: ModelSource, threads: int, cache: EngineCache, compile_mode: str = "off") -> Classifier:
    if candidate.engine == "torch":
        return HFClassifier.load(source.model, device="cpu", dtype=candidate.precision, threads=threads,
                                 compile=compile_mode, source=source)
    if candidate.engine == "onnxruntime":
        return onnxruntime_engine.OnnxRuntimeClassifier.load(source, candidate.precision, threads, cache)
    if candidate.engine == "openvino":
        return openvino_engine.OpenVinoClassifier.load(source, candidate.precision, threads, cache)
    raise ValueError(f"unknown engine {candidate.engine}")


def positive_index(labels: list[str]) -> int | None:
    """Where NSMC's label 1 sits in the model's classes, for positive/negative models; None for others."""
    return labels.index("positive") if sorted(labels) == ["negative", "positive"] else None


def load_classifier(settings: Any) -> Classifier:
    """The one place a classifier is built from settings: device, engine and precision resolved (measured for ``auto``)."""
    device = resolve_device(settings.device)
    source = ModelSource.load(settings.model, settings.model_revision, settings.max_length,
                              settings.positive_index, settings.labels)
    threads = settings.torch_threads or usable_cpus()
    if device != "cpu":
        if settings.engine not in ("auto", "torch"):
            raise ModelLoadError(settings.model, f"WORKER_ENGINE={settings.engine} runs on the CPU only; "
                                                 f"use WORKER_ENGINE=torch with WORKER_DEVICE={settings.device}")
        classifier = HFClassifier.load(settings.model, device=device, dtype=resolve_dtype(settings.dtype, device),
                                       threads=threads, compile=settings.compile, source=source)
        classifier.info["selection"] = "fixed"
        return classifier
    # torch.compile costs 20-90 s of start-up: only where torch was asked for by name (its own
    # ``auto`` rule), or when asked for outright; ``auto`` measures eager torch.
    compile_mode = settings.compile if settings.engine == "torch" else ("on" if settings.compile == "on" else "off")
    wanted = candidates(settings.engine, settings.dtype)
    cache = EngineCache(Path(settings.engine_cache_dir))
    if len(wanted) == 1:
        classifier = build(wanted[0], source, threads, cache, compile_mode)
        classifier.info["selection"] = "fixed"
        return classifier

    where = machine()
    versions = library_versions(*LIBRARIES)
    report_name = "selection-" + cache_key(
        FORMAT_VERSION, model_fingerprint(source), {k: v for k, v in where.items() if k != "cpu_flags"}, threads,
        versions, sorted(map(str, wanted)), settings.sub_batch_max_tokens, source.encoder.max_length,
    ) + ".json"
    cached = None if settings.engine_remeasure else cache.read_json(report_name)
    report = SelectionReport.from_json(cached) if cached else None
    if report is not None and report.chosen in wanted:
        classifier = build(report.chosen, source, threads, cache, compile_mode if report.chosen.engine == "torch" else "off")
    else:
        report, classifier = measure_and_choose(wanted, source, threads, cache, settings.sub_batch_max_tokens)
        cache.write_json(report_name, {**report.to_json(), "machine": where, "libraries": versions})
        if report.chosen.engine == "torch":
            classifier.compile_mode = compile_mode  # type: ignore[attr-defined]  # applied by warm_up()
    log.info(
        f"engine chosen: {report.chosen} ({report.origin}{' ' + report.measured_at if report.origin == 'cached' else ''})\n"
        + report.table(),
        extra={"fields": {"engine": report.chosen.engine, "precision": report.chosen.precision, "origin": report.origin,
                          "measure_s": report.seconds, "cpu": where["cpu"], "threads": threads}},
    )
    classifier.info["selection"] = report.origin
    classifier.selection = report  # type: ignore[attr-defined]  # read by WorkerMetrics.describe_model
    return classifier


def release_memory() -> None:
    """Collect the last candidate's objects and hand freed heap pages back to the system (glibc)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def measure_and_choose(
    wanted: list[Candidate], source: ModelSource, threads: int, cache: EngineCache, sub_batch_max_tokens: int,
    builder: Callable[[Candidate], Classifier] | None = None,
) -> tuple[SelectionReport, Classifier]:
    """Measure every candidate (and the reference) one at a time, then build the winner afresh."""
    started = time.perf_counter()
    make = builder or (lambda c: build(c, source, threads, cache))

    def prepared(candidate: Candidate) -> Classifier:
        classifier = make(candidate)
        if not getattr(classifier, "runs_as_requested", lambda: True)():
            raise RuntimeError("this CPU runs it in float32 (the same as openvino/float32)")
        classifier.warm_up()
        return classifier

    rows = agreement_rows()
    encodings = source.encoder.encode([text for text, _ in rows])
    log.info(f"engine selection: measuring {len(wanted)} candidates on {len(rows)} calibration texts (cached afterwards)",
             extra={"fields": {"candidates": [str(c) for c in wanted]}})
    measurements = measure(
        prepared, wanted, encodings, [label for _, label in rows], positive_index(source.labels), sub_batch_max_tokens,
        eligible=lambda c: c in wanted, release=release_memory,
    )
    chosen = choose(measurements)
    report = SelectionReport(chosen.candidate, measurements, "measured", seconds=round(time.perf_counter() - started, 1),
                             texts=len(encodings))
    return report, make(chosen.candidate)
