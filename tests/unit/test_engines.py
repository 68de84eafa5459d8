"""Each engine on a tiny random model: same outputs as torch, exports cached and written atomically, settings resolved.

The tiny model here is initialised with a larger spread (``initializer_range=0.2``) so that its scores
spread over (0, 1) and depend on every token, the attention mask and the padding: with the default
initialisation every text scores ~0.5 and any engine would "agree". Tolerances for reduced precision
were measured on this model (max |Δp| against float32 torch over 1,000 NSMC texts): bfloat16
0.006 (torch and OpenVINO), ONNX Runtime int8 0.020, OpenVINO int8 0.060.
"""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest

from harness.models import build_tiny_model
from harness.paths import NSMC_SAMPLE
from worker.engines import export as engines_export
from worker.engines import loading, onnxruntime_engine
from worker.engines.base import classify_encoded
from worker.engines.cache import EngineCache
from worker.engines.loading import load_classifier
from worker.engines.registry import ENGINES, build
from worker.engines.selection import Candidate
from worker.engines.source import ModelSource
from worker.errors import ModelLoadError
from worker.datasets import read_nsmc
from worker.settings import load_settings

TOLERANCE = {"float32": 1e-4, "bfloat16": 0.02, "int8": 0.1}
EXPORTED = [Candidate(e, p) for e in ("onnxruntime", "openvino") for p in ENGINES[e].supported]


@pytest.fixture(scope="module")
def spread_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-spread"), initializer_range=0.2)


@pytest.fixture(scope="module")
def source(spread_model_dir) -> ModelSource:
    return ModelSource.load(str(spread_model_dir))


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> EngineCache:
    return EngineCache(tmp_path_factory.mktemp("engines"))


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return [text for text, _ in read_nsmc(NSMC_SAMPLE, 300)]


@pytest.fixture(scope="module")
def reference(source, cache, texts) -> list[list[float]]:
    torch_fp32 = build(Candidate("torch", "float32"), source, 2, cache)
    return classify_encoded(torch_fp32, torch_fp32.encode(texts), 1024).probabilities


@pytest.mark.parametrize("candidate", EXPORTED + [Candidate("torch", "bfloat16")], ids=str)
def test_engine_matches_float32_torch(candidate, source, cache, texts, reference):
    classifier = build(candidate, source, 2, cache)
    if candidate == Candidate("openvino", "bfloat16"):
        # Where the CPU has no bfloat16, OpenVINO runs the model in float32 and says so (auto then skips it).
        assert classifier.runs_as_requested() == (classifier.info["inference_precision"] == "bf16")
    classifier.warm_up()
    assert classifier.info["engine"] == candidate.engine and classifier.info["precision"] == candidate.precision
    assert classifier.labels == ["negative", "positive"]
    probabilities = classify_encoded(classifier, classifier.encode(texts), 1024).probabilities
    tolerance = TOLERANCE[candidate.precision]
    spread = max(p[1] for p in reference) - min(p[1] for p in reference)
    assert spread > 0.3, "the test model must score texts differently for this comparison to mean anything"
    for got, want in zip(probabilities, reference):
        assert got == pytest.approx(want, abs=tolerance)
        if abs(want[1] - 0.5) > tolerance:
            assert (got[1] > 0.5) == (want[1] > 0.5)


@pytest.mark.parametrize("candidate", [Candidate("onnxruntime", "float32"), Candidate("openvino", "float32")], ids=str)
def test_exported_score_does_not_depend_on_neighbours_or_padding(candidate, source, cache, texts):
    classifier = build(candidate, source, 2, cache)
    encodings = classifier.encode(texts[:40] + ["아주 긴 댓글 " * 300])
    padded_together = classifier.predict([e.ids for e in encodings])  # one pass, padded to 512
    for encoding, together in zip(encodings, padded_together):
        assert classifier.predict([encoding.ids])[0] == pytest.approx(together, abs=1e-4)


def test_exports_are_cached_and_reused(source, tmp_path, monkeypatch):
    cache = EngineCache(tmp_path / "cache")
    build(Candidate("onnxruntime", "int8"), source, 2, cache)
    build(Candidate("openvino", "float32"), source, 2, cache)
    written = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert [name.split("-")[-2] for name in written] == ["float32", "int8", "float32"]  # onnx, ort int8, ov
    assert all((tmp_path / "cache" / name / "complete").is_file() for name in written)

    def no_export(*args, **kwargs):
        raise AssertionError("exported again although the cache has it")

    monkeypatch.setattr(engines_export, "export_onnx", no_export)
    monkeypatch.setattr(ModelSource, "load_torch", no_export)
    build(Candidate("onnxruntime", "int8"), source, 2, cache)
    build(Candidate("openvino", "bfloat16"), source, 2, cache)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == written


def test_a_new_checkpoint_gets_a_new_export(tmp_path):
    model_dir = build_tiny_model(tmp_path / "model", initializer_range=0.2)
    cache = EngineCache(tmp_path / "cache")
    first = onnxruntime_engine.model_file(ModelSource.load(str(model_dir)), "float32", cache)
    build_tiny_model(model_dir, initializer_range=0.2, seed=1)  # same path, new weights
    time.sleep(0.01)
    second = onnxruntime_engine.model_file(ModelSource.load(str(model_dir)), "float32", cache)
    assert first.parent != second.parent


def _slow_build(root: str, name: str, results) -> None:
    def write(tmp: Path) -> None:
        (tmp / "part1").write_text("half")
        time.sleep(0.5)  # another process looking now must not see a half-written directory
        (tmp / "part2").write_text("done")

    target = EngineCache(Path(root)).get_or_build(name, write, "test")
    results.put(sorted(p.name for p in target.iterdir()))


def test_two_processes_exporting_at_once_both_get_a_complete_directory(tmp_path):
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    workers = [context.Process(target=_slow_build, args=(str(tmp_path), "artifact", results)) for _ in range(2)]
    for w in workers:
        w.start()
    seen_partial = False
    deadline = time.time() + 60
    while any(w.is_alive() for w in workers) and time.time() < deadline:
        target = tmp_path / "artifact"
        if target.exists() and sorted(p.name for p in target.iterdir()) != ["complete", "part1", "part2"]:
            seen_partial = True
        time.sleep(0.01)
    for w in workers:
        w.join(30)
        assert w.exitcode == 0
    assert not seen_partial
    assert [results.get(timeout=5) for _ in workers] == [["complete", "part1", "part2"]] * 2
    assert [p.name for p in tmp_path.iterdir()] == ["artifact"]  # no staging directory left behind


def test_an_unwritable_cache_falls_back_to_a_temporary_directory(source, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    cache = EngineCache(blocker / "cache")  # cannot be created, even as root
    path = onnxruntime_engine.model_file(source, "float32", cache)
    assert path.is_file() and not str(path).startswith(str(blocker))


# --------------------------------------------------------------------------- load_classifier
def test_cuda_is_torch_only(monkeypatch, spread_model_dir):
    monkeypatch.setattr(loading, "cuda_possible", lambda: True)
    monkeypatch.setattr(loading, "resolve_device", lambda requested: "cuda")
    with pytest.raises(ModelLoadError, match="runs on the CPU only"):
        load_classifier(load_settings(model=str(spread_model_dir), engine="onnxruntime"))


def test_one_candidate_is_loaded_without_measuring(spread_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(loading, "measure", None)  # calling it would fail
    classifier = load_classifier(load_settings(
        model=str(spread_model_dir), engine="onnxruntime", dtype="int8", engine_cache_dir=str(tmp_path)))
    assert (classifier.info["engine"], classifier.info["precision"], classifier.info["selection"]) == (
        "onnxruntime", "int8", "fixed")


def test_auto_measures_once_then_reuses_the_measurement(spread_model_dir, tmp_path, monkeypatch):
    settings = load_settings(model=str(spread_model_dir), dtype="float32", engine_cache_dir=str(tmp_path))
    first = load_classifier(settings, prepare_in_child=False)
    assert first.info["selection"] == "measured"
    report = first.selection
    assert {str(m.candidate) for m in report.measurements} == {"torch/float32", "onnxruntime/float32", "openvino/float32"}
    # float32 engines all agree with the reference; a candidate may be stopped early on timing alone (over
    # GIVE_UP times the reference's cost on this machine's tiny model), then it was never compared
    checked = [m for m in report.measurements if not m.note.startswith("stopped")]
    assert all(m.qualifies for m in checked) and any(m.candidate.engine != "torch" for m in checked)
    assert (first.info["engine"], first.info["precision"]) == (report.chosen.engine, "float32")
    assert list(tmp_path.glob("selection-*.json"))

    calls = []
    monkeypatch.setattr(loading, "measure", lambda *a, **k: calls.append(1) or [])
    second = load_classifier(settings, prepare_in_child=False)
    assert not calls and second.info["selection"] == "cached"
    assert second.selection.chosen == report.chosen and second.info["engine"] == report.chosen.engine

    with pytest.raises(RuntimeError, match="no engine candidate"):  # remeasuring calls measure() again: the stub
        load_classifier(load_settings(model=str(spread_model_dir), dtype="float32", engine_cache_dir=str(tmp_path),
                                      engine_remeasure=True), prepare_in_child=False)
    assert calls == [1]


def test_metrics_describe_the_choice(spread_model_dir, tmp_path):
    from worker.metrics import WorkerMetrics

    classifier = load_classifier(load_settings(model=str(spread_model_dir), engine="onnxruntime",
                                               engine_cache_dir=str(tmp_path)))
    metrics = WorkerMetrics()
    metrics.describe_model(classifier)
    registry = metrics.registry
    chosen = classifier.selection.chosen
    info = {"model": str(spread_model_dir), "revision": "local", "device": "cpu", "dtype": chosen.precision,
            "engine": "onnxruntime", "precision": chosen.precision, "selection": "measured"}
    assert registry.get_sample_value("worker_model_info", info) == 1
    for m in classifier.selection.measurements:
        labels = {"engine": m.candidate.engine, "precision": m.candidate.precision, "window": "small",
                  "chosen": str(m.candidate == chosen).lower(), "qualified": str(m.qualifies).lower()}
        assert registry.get_sample_value("worker_engine_candidate_texts_per_second", labels) == m.small_per_s
    ratio = registry.get_sample_value("worker_engine_candidate_same_label_ratio",
                                      {"engine": "onnxruntime", "precision": "float32"})
    assert ratio == 1.0


PREPARED_START = """
import json, sys
from worker.engines.loading import load_classifier
from worker.settings import load_settings
classifier = load_classifier(load_settings(model=sys.argv[1], engine=sys.argv[2], dtype=sys.argv[3], engine_cache_dir=sys.argv[4]))
classifier.warm_up()
print(json.dumps({"torch_imported": "torch" in sys.modules, "info": classifier.info}))
"""


@pytest.mark.parametrize("engine,dtype", [("onnxruntime", "int8"), ("auto", "float32")])
def test_the_worker_process_never_imports_torch_for_an_exported_engine(engine, dtype, spread_model_dir, tmp_path):
    """Exports, snapshot and measurement happen in a child process; the worker loads only what was chosen."""
    import json
    import subprocess
    import sys

    def start() -> dict:
        done = subprocess.run([sys.executable, "-c", PREPARED_START, str(spread_model_dir), engine, dtype, str(tmp_path)],
                              capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parents[2])
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    cold, warm = start(), start()
    chosen_torch = cold["info"]["engine"] == "torch"
    assert cold["torch_imported"] == chosen_torch and warm["torch_imported"] == chosen_torch
    assert cold["info"]["selection"] == ("fixed" if engine != "auto" else "measured")
    assert warm["info"]["selection"] == ("fixed" if engine != "auto" else "cached")
    assert warm["info"]["engine"] == cold["info"]["engine"]


def test_the_tokenizer_snapshot_gives_the_same_ids_as_transformers(source, tmp_path, nsmc_rows):
    source.save_snapshot(tmp_path)
    restored = ModelSource.from_snapshot(tmp_path, source.model, max_length=64)
    assert restored.labels == source.labels and restored.model_limit == source.model_limit == 512
    assert restored.encoder.pad_id == source.encoder.pad_id
    texts = [doc for _, doc, _ in nsmc_rows] + ["", " ", "😀👍 ㅋㅋㅋㅋ", "é\u200bx\u0000", "ＡＢＣ①", "긴 " * 600]
    original = [e.ids for e in source.encoder.encode(texts)]
    assert [e.ids for e in ModelSource.from_snapshot(tmp_path, source.model).encoder.encode(texts)] == original
    cut = restored.encoder.encode(["긴 " * 600])[0]
    assert cut.truncated and len(cut.ids) == 64 and cut.ids[-1] == original[-1][-1]


def test_memory_bounds_leave_an_operators_setting_alone(monkeypatch):
    import os

    from worker.engines.memory import ONEDNN_PRIMITIVE_CACHE, bound_memory

    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "512")
    bound_memory()
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "512"
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY")
    bound_memory()
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == ONEDNN_PRIMITIVE_CACHE


def test_remeasuring_measures_once_per_start(spread_model_dir, tmp_path):
    """WORKER_ENGINE_REMEASURE: the preparing child measures, and the worker uses that measurement."""
    import subprocess
    import sys

    env_script = PREPARED_START.replace("engine_cache_dir=sys.argv[4]", "engine_cache_dir=sys.argv[4], engine_remeasure=True")
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", "import logging; logging.basicConfig(level=logging.INFO)\n" + env_script,
                               str(spread_model_dir), "auto", "float32", str(tmp_path)],
                              capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parents[2])
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stderr.count("engine selection: measuring") == 1
        assert '"selection": "measured"' in done.stdout
