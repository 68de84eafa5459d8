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
import os
import time
from pathlib import Path
from typing import Any, Callable

from worker.engines import onnxruntime_engine, openvino_engine
from worker.engines.cache import (
    FORMAT_VERSION,
    EngineCache,
    cache_key,
    directory_fingerprint,
    library_versions,
    model_fingerprint,
)
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


def cuda_possible() -> bool:
    """False where no NVIDIA driver is loaded: then ``WORKER_DEVICE=auto`` is the CPU without importing torch."""
    return Path("/dev/nvidiactl").exists() or Path("/proc/driver/nvidia/version").exists()


def load_source(settings: Any, cache: EngineCache) -> ModelSource:
    """The checkpoint's tokenizer and labels; for a local directory from the engine cache's snapshot once it has one.

    The snapshot lets ONNX Runtime and OpenVINO start without importing transformers, and so
    without torch (its import alone is ~0.3-0.7 GB of RSS): measured in benchmarks/README.md.
    """
    arguments = (settings.max_length, settings.positive_index, settings.labels)
    directory = Path(settings.model)
    if not directory.is_dir():
        return ModelSource.load(settings.model, settings.model_revision, *arguments)
    name = cache.name_for(settings.model, directory_fingerprint(directory), "source", library_versions("tokenizers"))
    snapshot = cache.root / name
    if (snapshot / "complete").is_file():
        return ModelSource.from_snapshot(snapshot, settings.model, settings.model_revision, *arguments)
    source = ModelSource.load(settings.model, settings.model_revision, *arguments)
    if hasattr(source.encoder.tokenizer, "backend_tokenizer"):  # only fast tokenizers have the JSON form
        try:
            cache.get_or_build(name, source.save_snapshot, "tokenizer snapshot")
        except OSError as exc:
            log.warning("could not save the tokenizer snapshot", extra={"fields": {"error": str(exc)}})
    return source


# The settings a preparing child process needs (the model side only: no Kafka settings, no secrets).
MODEL_SETTINGS = ("model", "model_revision", "device", "engine", "dtype", "compile", "torch_threads", "max_length",
                  "positive_index", "labels", "engine_cache_dir", "engine_remeasure", "sub_batch_max_tokens",
                  "log_format", "log_level")
PREPARE_TIMEOUT_S = 900.0


# oneDNN (torch's CPU kernels) keeps 1,024 primitives by default, one per new shape: 64 cut torch's growth
# over 15,000 texts in varying windows by about half, with no loss of speed measured at windows of 1-32
# (benchmarks/README.md, "Memory"). Read once, when torch first runs a kernel. (glibc malloc limits were
# tried too: within noise for ONNX Runtime and OpenVINO, 40 % slower for torch at small windows; not used.)
ONEDNN_PRIMITIVE_CACHE = "64"


def bound_memory() -> None:
    """Limits on what grows with the number of distinct batch shapes; an operator's own environment wins."""
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", ONEDNN_PRIMITIVE_CACHE)


def load_classifier(settings: Any, prepare_in_child: bool = True) -> Classifier:
    """The one place a classifier is built from settings: device, engine and precision resolved (measured for ``auto``).

    For a local model directory on the CPU, whatever is not cached yet (tokenizer snapshot,
    exports, ``auto``'s measurement) is prepared first in a child process: the worker itself then
    loads only the chosen engine, and never carries torch, the losing candidates or their garbage
    unless torch is the engine.
    """
    bound_memory()
    cpu_only = settings.device == "cpu" or (settings.device == "auto" and not cuda_possible())
    device = "cpu" if cpu_only else resolve_device(settings.device)
    cache = EngineCache(Path(settings.engine_cache_dir))
    started = time.time()
    remeasure = settings.engine_remeasure
    if cpu_only and prepare_in_child and Path(settings.model).is_dir() and not is_prepared(settings, cache):
        if prepare_in_child_process(settings):
            remeasure = False  # the child has just measured
    source = load_source(settings, cache)
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
    if len(wanted) == 1:
        classifier = build(wanted[0], source, threads, cache, compile_mode)
        classifier.info["selection"] = "fixed"
        return classifier

    report_name = selection_report_name(settings, source, wanted, threads)
    report = cached_report(remeasure, cache, report_name, wanted)
    if report is not None:
        if report.measured_unix >= started:
            report.origin = "measured"  # by the preparing child process, for this start
        classifier = build(report.chosen, source, threads, cache, compile_mode if report.chosen.engine == "torch" else "off")
    else:
        report, classifier = measure_and_choose(wanted, source, threads, cache, settings.sub_batch_max_tokens)
        cache.write_json(report_name, {**report.to_json(), "machine": machine(), "libraries": library_versions(*LIBRARIES)})
        if report.chosen.engine == "torch":
            classifier.compile_mode = compile_mode  # type: ignore[attr-defined]  # applied by warm_up()
    log.info(
        f"engine chosen: {report.chosen} ({report.origin}{' ' + report.measured_at if report.origin == 'cached' else ''})\n"
        + report.table(),
        extra={"fields": {"engine": report.chosen.engine, "precision": report.chosen.precision, "origin": report.origin,
                          "measure_s": report.seconds, "cpu": machine()["cpu"], "threads": threads}},
    )
    classifier.info["selection"] = report.origin
    classifier.selection = report  # type: ignore[attr-defined]  # read by WorkerMetrics.describe_model
    return classifier


def selection_report_name(settings: Any, source: ModelSource, wanted: list[Candidate], threads: int) -> str:
    """Everything that makes a measurement apply: checkpoint, CPU model and flags, cores, libraries, candidates, budgets."""
    where = {k: v for k, v in machine().items() if k != "cpu_flags"}
    return "selection-" + cache_key(
        FORMAT_VERSION, model_fingerprint(source), where, threads, library_versions(*LIBRARIES),
        sorted(map(str, wanted)), settings.sub_batch_max_tokens, source.encoder.max_length,
    ) + ".json"


def cached_report(remeasure: bool, cache: EngineCache, name: str, wanted: list[Candidate]) -> SelectionReport | None:
    if remeasure:
        return None
    value = cache.read_json(name)
    report = SelectionReport.from_json(value) if value else None
    return report if report is not None and report.chosen in wanted else None


def is_exported(candidate: Candidate, source: ModelSource, cache: EngineCache) -> bool:
    if candidate.engine == "onnxruntime":
        return onnxruntime_engine.is_exported(source, candidate.precision, cache)
    if candidate.engine == "openvino":
        return openvino_engine.is_exported(source, candidate.precision, cache)
    return True  # torch reads the checkpoint itself


def is_prepared(settings: Any, cache: EngineCache) -> bool:
    """True when the tokenizer snapshot, the measurement (if any is needed) and the chosen export are all cached."""
    directory = Path(settings.model)
    snapshot = cache.name_for(settings.model, directory_fingerprint(directory), "source", library_versions("tokenizers"))
    if not cache.has(snapshot):
        return False
    try:
        wanted = candidates(settings.engine, settings.dtype)
    except ModelLoadError:
        return True  # nothing to prepare: loading reports the problem
    source = ModelSource.from_snapshot(cache.root / snapshot, settings.model, settings.model_revision,
                                       settings.max_length, settings.positive_index, settings.labels)
    if len(wanted) == 1:
        return is_exported(wanted[0], source, cache)
    threads = settings.torch_threads or usable_cpus()
    report = cached_report(settings.engine_remeasure, cache, selection_report_name(settings, source, wanted, threads), wanted)
    return report is not None and is_exported(report.chosen, source, cache)


def prepare_in_child_process(settings: Any) -> bool:
    """Run ``python -m worker.engines.prepare`` (exports, measurement, snapshot into the cache) and wait for it.

    Its log goes to our stderr. If it fails, loading goes on in this process, which then reports
    the real error (a model that cannot load) or does the work itself.
    """
    import json
    import subprocess
    import sys

    fields = json.dumps(settings.model_dump(include=set(MODEL_SETTINGS), mode="json"))
    log.info("preparing the engines in a child process (exports, measurement; cached afterwards)")
    started = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-m", "worker.engines.prepare"], input=fields, text=True,
                              stdout=sys.stderr, timeout=PREPARE_TIMEOUT_S, check=False)
        outcome = f"exit {done.returncode}"
    except (OSError, subprocess.TimeoutExpired) as exc:
        outcome = f"{type(exc).__name__}: {exc}"
    if outcome != "exit 0":
        log.warning("engine preparation in a child process failed; preparing here", extra={"fields": {"outcome": outcome}})
        return False
    log.info("engines prepared", extra={"fields": {"prepare_s": round(time.perf_counter() - started, 1)}})
    return True


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
