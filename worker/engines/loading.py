"""Building the classifier from settings (:func:`load_classifier`): device, engine and precision resolved, ``auto`` measured.

For a local model directory on the CPU, whatever the engine cache does not hold yet (tokenizer
snapshot, exports, ``auto``'s measurement) is prepared first in a child process
(``python -m worker.engines.prepare``), so the worker itself loads only the chosen engine.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from worker.engines.base import Classifier
from worker.engines.cache import (
    FORMAT_VERSION,
    EngineCache,
    cache_key,
    directory_fingerprint,
    library_versions,
    model_fingerprint,
)
from worker.engines.calibration import agreement_rows
from worker.engines.device import cuda_possible, resolve_device, resolve_dtype, usable_cpus
from worker.engines.labels import nsmc_positive_index
from worker.engines.memory import bound_memory, release_memory
from worker.engines.registry import build, candidates, compiles, gpu_engines, is_exported
from worker.engines.selection import Candidate, SelectionReport, choose, machine, measure
from worker.engines.source import SNAPSHOT_VERSION, ModelSource
from worker.errors import ModelLoadError
from worker.wire.rules import rules_from, split_thresholds

log = logging.getLogger(__name__)

# The libraries whose versions make a measurement apply (and that the benchmark reports).
LIBRARIES = ("torch", "transformers", "onnxruntime", "openvino", "nncf", "tokenizers")
# The settings a preparing child process needs (the model side only: no Kafka settings, no secrets).
MODEL_SETTINGS = ("model", "model_revision", "device", "engine", "dtype", "compile", "torch_threads", "max_length",
                  "positive_index", "labels", "problem_type", "label_thresholds", "engine_cache_dir",
                  "engine_remeasure", "sub_batch_max_tokens", "log_format", "log_level")
PREPARE_TIMEOUT_S = 900.0


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
        able = gpu_engines()
        if settings.engine not in ("auto", *able):
            raise ModelLoadError(settings.model, f"WORKER_ENGINE={settings.engine} runs on the CPU only; "
                                                 f"use WORKER_ENGINE={' or '.join(able)} with WORKER_DEVICE={settings.device}")
        engine = able[0] if settings.engine == "auto" else settings.engine
        classifier = build(Candidate(engine, resolve_dtype(settings.dtype, device)), source, threads, cache,
                           settings.compile, device)
        classifier.info["selection"] = "fixed"
        return classifier
    # torch.compile costs 20-90 s of start-up: only where torch was asked for by name (its own
    # ``auto`` rule), or when asked for outright; ``auto`` measures eager torch.
    compile_mode = settings.compile if compiles(settings.engine) else ("on" if settings.compile == "on" else "off")
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
        classifier = build(report.chosen, source, threads, cache, compile_mode if compiles(report.chosen.engine) else "off")
    else:
        report, classifier = measure_and_choose(wanted, source, threads, cache, settings.sub_batch_max_tokens,
                                                thresholds=agreement_thresholds(settings, source))
        cache.write_json(report_name, {**report.to_json(), "machine": machine(), "libraries": library_versions(*LIBRARIES)})
        if compiles(report.chosen.engine):
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


def snapshot_name(settings: Any, cache: EngineCache) -> str:
    """The engine cache directory of a local model's tokenizer snapshot."""
    return cache.name_for(settings.model, directory_fingerprint(Path(settings.model)), "source",
                          {**library_versions("tokenizers"), "snapshot": str(SNAPSHOT_VERSION)})


def load_source(settings: Any, cache: EngineCache) -> ModelSource:
    """The checkpoint's tokenizer and labels; for a local directory from the engine cache's snapshot once it has one.

    The snapshot lets ONNX Runtime and OpenVINO start without importing transformers, and so
    without torch (its import alone is ~0.3-0.7 GB of RSS): measured in benchmarks/README.md.
    """
    arguments = (settings.max_length, settings.positive_index, settings.labels, settings.problem_type)
    if not Path(settings.model).is_dir():
        return ModelSource.load(settings.model, settings.model_revision, *arguments)
    name = snapshot_name(settings, cache)
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


def selection_report_name(settings: Any, source: ModelSource, wanted: list[Candidate], threads: int) -> str:
    """Everything that makes a measurement apply: checkpoint, CPU model and flags, cores, libraries, candidates, budgets
    (and for a multi-label model the thresholds its agreement was checked at)."""
    where = {k: v for k, v in machine().items() if k != "cpu_flags"}
    parts: tuple[Any, ...] = (
        FORMAT_VERSION, model_fingerprint(source), where, threads, library_versions(*LIBRARIES),
        sorted(map(str, wanted)), settings.sub_batch_max_tokens, source.encoder.max_length,
    )
    if source.multi_label:  # single-label reports keep the names they had
        parts += (source.problem_type, agreement_thresholds(settings, source))
    return "selection-" + cache_key(*parts) + ".json"


def agreement_thresholds(settings: Any, source: ModelSource) -> list[float] | None:
    """Per category, the threshold at which ``auto``'s agreement check compares a multi-label model's decisions
    (WORKER_LABEL_THRESHOLDS, 0.5 where it names none); None for a single-label model (compared on its winner)."""
    if not source.multi_label:
        return None
    rules = rules_from((), *split_thresholds(settings.label_thresholds))
    return [rules.threshold(category) for category in source.labels]


def cached_report(remeasure: bool, cache: EngineCache, name: str, wanted: list[Candidate]) -> SelectionReport | None:
    if remeasure:
        return None
    value = cache.read_json(name)
    report = SelectionReport.from_json(value) if value else None
    return report if report is not None and report.chosen in wanted else None


def is_prepared(settings: Any, cache: EngineCache) -> bool:
    """True when the tokenizer snapshot, the measurement (if any is needed) and the chosen export are all cached."""
    snapshot = snapshot_name(settings, cache)
    if not cache.has(snapshot):
        return False
    try:
        wanted = candidates(settings.engine, settings.dtype)
    except ModelLoadError:
        return True  # nothing to prepare: loading reports the problem
    source = ModelSource.from_snapshot(cache.root / snapshot, settings.model, settings.model_revision,
                                       settings.max_length, settings.positive_index, settings.labels, settings.problem_type)
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


def measure_and_choose(
    wanted: list[Candidate], source: ModelSource, threads: int, cache: EngineCache, sub_batch_max_tokens: int,
    builder: Callable[[Candidate], Classifier] | None = None,
    thresholds: list[float] | None = None,
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
    # NSMC's sentiment labels grade a positive/negative model's accuracy; they say nothing of a multi-label model's categories.
    positive_index = None if source.multi_label else nsmc_positive_index(source.labels)
    measurements = measure(
        prepared, wanted, encodings, [label for _, label in rows], positive_index,
        sub_batch_max_tokens, eligible=lambda c: c in wanted, release=release_memory, thresholds=thresholds,
    )
    chosen = choose(measurements)
    report = SelectionReport(chosen.candidate, measurements, "measured", seconds=round(time.perf_counter() - started, 1),
                             texts=len(encodings))
    return report, make(chosen.candidate)


def shadow_settings(settings: Any) -> Any:
    """The settings of the shadow model: the primary's, with the shadow's model, revision, engine, precision, threads.

    The label overrides are the primary's own and do not apply; torch.compile is off (start-up time for a
    model that decides nothing).
    """
    return settings.model_copy(update={
        "model": settings.shadow_model, "model_revision": settings.shadow_revision, "engine": settings.shadow_engine,
        "dtype": settings.shadow_dtype, "torch_threads": settings.shadow_threads, "compile": "off",
        "labels": None, "positive_index": None,
    })


def load_shadow_classifier(settings: Any) -> Classifier | None:
    """The shadow model of ``WORKER_SHADOW_MODEL`` (None without one), built as :func:`load_classifier` builds the primary.

    torch's intra-op thread count is one per process: loading a torch shadow must not take the
    primary's threads away, so the count is put back afterwards (a torch shadow then runs with it).
    """
    if settings.shadow_model is None:
        return None
    torch = sys.modules.get("torch")
    threads = torch.get_num_threads() if torch is not None else None
    classifier = load_classifier(shadow_settings(settings))
    torch = sys.modules.get("torch")
    if torch is not None and threads is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return classifier
