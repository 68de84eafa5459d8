"""Multi-label models: a sigmoid per category in every engine, thresholds per category, labels, routes, agreement."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from harness.models import MULTI_LABEL_CATEGORIES
from tests.strict_json import strict_json
from worker.engines.base import Encoding, activate, sigmoid, to_prediction
from worker.engines.cache import EngineCache
from worker.engines.labels import resolve_labels
from worker.engines.selection import check_agreement
from worker.engines.source import ModelSource, resolve_problem_type
from worker.errors import ConfigError, ModelLoadError
from worker.pipeline.intake import Entry
from worker.pipeline.render import ROUTED, Renderer
from worker.wire.routing import Route
from worker.wire.rules import rules_from
from worker.wire.types import Comment, InputRecord

CATEGORIES = list(MULTI_LABEL_CATEGORIES.values())  # hate, insult, spam, clean
TEXTS = ["이 영화 정말 재밌다!", "연기도 별로고 스토리도 엉망이네", "배우들 연기력이 대단하다", "시간 낭비했다 다신 안 봄",
         "ㅋㅋㅋ 광고 클릭하세요 http://spam.example", "a" * 300]


@pytest.fixture(scope="module")
def multi_label_dir(tiny_multi_label_model_dir) -> Path:
    return tiny_multi_label_model_dir


@pytest.fixture(scope="module")
def independent(multi_label_dir) -> list[list[float]]:
    """torch.sigmoid of the checkpoint's logits, computed with transformers directly (not through the worker)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(multi_label_dir)
    model = AutoModelForSequenceClassification.from_pretrained(multi_label_dir).eval()
    rows = []
    with torch.inference_mode():
        for text in TEXTS:  # one text per pass: no padding to differ from the worker's sub-batches
            inputs = tokenizer(text, return_tensors="pt", truncation=True, max_length=512)
            rows.append(torch.sigmoid(model(**inputs).logits)[0].tolist())
    return rows


# --- the activation ---

def test_sigmoid_is_the_logistic_function_and_never_overflows():
    logits = [[0.0, 2.0, -3.0, 100.0, -100.0, -1000.0]]
    [row] = sigmoid(logits)
    for x, p in zip(logits[0][:3], row[:3]):
        assert p == pytest.approx(1 / (1 + math.exp(-x)), rel=1e-6)
    assert row[3] == 1.0 and 0 < row[4] < 1e-40 and row[5] == 0.0
    assert activate(logits, True) == sigmoid(logits)
    assert sum(activate([[1.0, 2.0]], False)[0]) == pytest.approx(1.0)  # single-label: the softmax, as before


def test_a_multi_label_prediction_names_its_most_probable_category():
    p = to_prediction([0.6, 0.8, 0.1, 0.7], CATEGORIES, Encoding([2, 5, 3], False), multi_label=True)
    assert (p.label, p.score, p.multi_label) == ("insult", pytest.approx(0.8), True)
    assert to_prediction([0.4, 0.6], ["negative", "positive"], Encoding([2, 3], False)).multi_label is False


# --- the problem type ---

@pytest.mark.parametrize("config,wanted,expected", [
    ("multi_label_classification", "auto", "multi_label"),
    ("single_label_classification", "auto", "single_label"),
    (None, "auto", "single_label"),
    (None, "multi_label", "multi_label"),
    ("multi_label_classification", "single_label", "single_label"),
])
def test_problem_type_follows_the_config_unless_set(config, wanted, expected):
    assert resolve_problem_type(config, wanted) == expected


def test_two_categories_of_a_multi_label_model_keep_their_names():
    assert resolve_labels({0: "hate", 1: "spam"}, multi_label=True) == ["hate", "spam"]
    assert resolve_labels({0: "hate", 1: "spam"}) == ["negative", "positive"]  # single-label binary: as before
    with pytest.raises(ModelLoadError, match="WORKER_POSITIVE_INDEX"):
        resolve_labels({0: "hate", 1: "spam"}, positive_index=0, multi_label=True)


def test_the_source_and_its_snapshot_know_the_problem_type(multi_label_dir, tmp_path):
    source = ModelSource.load(str(multi_label_dir))
    assert source.multi_label and source.labels == CATEGORIES
    source.save_snapshot(tmp_path)
    again = ModelSource.from_snapshot(tmp_path, str(multi_label_dir))
    assert again.multi_label and again.labels == CATEGORIES
    assert not ModelSource.from_snapshot(tmp_path, str(multi_label_dir), problem_type="single_label").multi_label


# --- every engine scores it with a sigmoid ---

def test_torch_gives_the_independent_sigmoid(multi_label_dir, independent):
    from worker.engines.torch_engine import HFClassifier

    classifier = HFClassifier.load(str(multi_label_dir), device="cpu", dtype="float32", threads=1)
    assert classifier.multi_label
    got = [classifier.predict([e.ids])[0] for e in classifier.encode(TEXTS)]
    for row, expected in zip(got, independent):
        assert row == pytest.approx(expected, abs=1e-6)
    assert any(sum(row) > 1.2 or sum(row) < 0.8 for row in got)  # not a softmax


def test_onnxruntime_agrees_with_the_torch_sigmoid(multi_label_dir, independent, tmp_path):
    from worker.engines.onnxruntime_engine import OnnxRuntimeClassifier

    source = ModelSource.load(str(multi_label_dir))
    classifier = OnnxRuntimeClassifier.load(source, "float32", 1, EngineCache(tmp_path))
    assert classifier.multi_label and classifier.info["problem_type"] == "multi_label"
    encodings = classifier.encode(TEXTS)
    got = [classifier.predict([e.ids])[0] for e in encodings]
    for row, expected in zip(got, independent):
        assert row == pytest.approx(expected, abs=1e-4)
    # ...and in one padded batch (padding must not leak into any category)
    batched = classifier.predict([e.ids for e in encodings])
    for row, expected in zip(batched, independent):
        assert row == pytest.approx(expected, abs=1e-4)


def test_openvino_agrees_with_the_torch_sigmoid(multi_label_dir, independent, tmp_path):
    pytest.importorskip("openvino")
    from worker.engines.openvino_engine import OpenVinoClassifier

    source = ModelSource.load(str(multi_label_dir))
    classifier = OpenVinoClassifier.load(source, "float32", 1, EngineCache(tmp_path))
    assert classifier.multi_label
    got = [classifier.predict([e.ids])[0] for e in classifier.encode(TEXTS)]
    for row, expected in zip(got, independent):
        assert row == pytest.approx(expected, abs=1e-4)


# --- engine agreement compares per-category decisions ---

def test_agreement_of_a_multi_label_model_is_per_category():
    reference = [[0.9, 0.55, 0.1], [0.2, 0.3, 0.4]]
    # Same winner everywhere, but category 1 of text 0 falls below 0.5: not the same decisions.
    candidate = [[0.9, 0.45, 0.1], [0.2, 0.3, 0.4]]
    assert check_agreement(reference, candidate).same_label == 1.0  # argmax alone would not see it
    assert check_agreement(reference, candidate, thresholds=[0.5, 0.5, 0.5]).same_label == 0.5
    # at a threshold of 0.4 for category 1 both sides present it; category 2 of text 1 is at 0.4 on both
    assert check_agreement(reference, candidate, thresholds=[0.5, 0.4, 0.4]).same_label == 1.0
    agreement = check_agreement(reference, candidate, truths=[1, 0], positive_index=1, thresholds=[0.5] * 3)
    assert agreement.accuracy is None  # NSMC's labels do not grade categories


# --- rules from the settings ---

class _Model:
    def __init__(self, multi_label: bool, labels=CATEGORIES):
        self.labels = list(labels)
        self.multi_label = multi_label
        self.info = {"model": "m", "revision": "r"}


def _settings(monkeypatch, **env):
    from worker.settings import load_settings

    for name, value in env.items():
        monkeypatch.setenv(f"WORKER_{name.upper()}", value)
    return load_settings()


def test_thresholds_become_rules_with_their_default(monkeypatch):
    from worker.app import rules_for

    settings = _settings(monkeypatch, label_thresholds='{"hate": 0.7, "insult": 0.6, "default": 0.4}')
    rules = rules_for(settings, _Model(True))
    assert (rules.threshold("hate"), rules.threshold("insult"), rules.threshold("spam")) == (0.7, 0.6, 0.4)
    assert rules.flagged({"hate": 0.65, "insult": 0.6, "spam": 0.9, "clean": 0.39}) == ("spam", "insult")
    assert rules_for(_settings(monkeypatch, label_thresholds="{}"), _Model(True)).threshold("clean") == 0.5


@pytest.mark.parametrize("value,words", [
    ('{"hate": 0}', "(0, 1]"),
    ('{"hate": 1.5}', "(0, 1]"),
    ('{"default": -0.1}', "(0, 1]"),
    ('{"hate": "high"}', "WORKER_LABEL_THRESHOLDS.hate"),
    ('[0.5]', "WORKER_LABEL_THRESHOLDS"),
    ("{not json", "WORKER_LABEL_THRESHOLDS"),
])
def test_invalid_thresholds_stop_the_start_with_one_line(monkeypatch, value, words):
    with pytest.raises(ConfigError) as error:
        _settings(monkeypatch, label_thresholds=value)
    assert words in str(error.value) and "WORKER_LABEL_THRESHOLDS" in str(error.value)
    assert "\n" not in str(error.value)


def test_thresholds_are_checked_against_the_model(monkeypatch):
    from worker.app import rules_for

    with pytest.raises(ConfigError, match=r"WORKER_LABEL_THRESHOLDS: names category threat the model does not have"):
        rules_for(_settings(monkeypatch, label_thresholds='{"threat": 0.5}'), _Model(True))
    with pytest.raises(ConfigError, match="WORKER_LABEL_THRESHOLDS: .*single-label"):
        rules_for(_settings(monkeypatch, label_thresholds='{"default": 0.7}'), _Model(False, ["negative", "positive"]))
    monkeypatch.delenv("WORKER_LABEL_THRESHOLDS")
    routes = '[{"name": "x", "topic": "t", "labels": ["threat"]}]'
    with pytest.raises(ConfigError, match="WORKER_ROUTES: route 'x' names label"):
        rules_for(_settings(monkeypatch, routes=routes), _Model(True))


def test_a_bad_threshold_ends_worker_run_with_exit_2_and_one_line(monkeypatch, capsys, multi_label_dir):
    from worker import cli

    monkeypatch.setenv("WORKER_MODEL", str(multi_label_dir))
    monkeypatch.setenv("WORKER_ENGINE", "torch")
    monkeypatch.setenv("WORKER_LABEL_THRESHOLDS", '{"threat": 0.5}')
    assert cli.main(["classify", "x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("worker: error: WORKER_LABEL_THRESHOLDS: names category threat")


# --- rendering: labels, probabilities and routes under the rules in force ---

def _entry(probabilities: dict[str, float], offset: int = 0) -> Entry:
    record = InputRecord("in", 0, offset, b"k", b"text", [], 1_700_000_000_000)
    encoding = Encoding([2, 5, 3], False)
    entry = Entry(Comment(record, "text"), encoding)
    entry.prediction = to_prediction(list(probabilities.values()), list(probabilities), encoding, multi_label=True)
    return entry


def test_renderer_writes_labels_and_routes_per_category_under_its_current_rules():
    routes = [Route(name="abuse", topic="abuse", labels=("hate", "insult"), min_score=0.8),
              Route(name="spam", topic="spam", labels=("spam",), min_score=0.7),
              Route(name="clean", topic="clean", labels=("clean",), min_score=0.9)]
    renderer = Renderer("out", "dlq", {"id": "m", "revision": "r"}, rules_from(routes, {"hate": 0.7}))
    entry = _entry({"hate": 0.65, "insult": 0.91, "spam": 0.82, "clean": 0.02})
    delivery = renderer.render(entry, 1_700_000_000_100)
    result = strict_json(delivery.messages[0].value)
    assert result["label"] == "insult" and result["score"] == pytest.approx(0.91)
    assert result["labels"] == ["insult", "spam"]  # hate 0.65 is under its 0.7
    assert result["probabilities"] == pytest.approx({"hate": 0.65, "insult": 0.91, "spam": 0.82, "clean": 0.02})
    assert [(m.kind, m.route) for m in delivery.messages[1:]] == [(ROUTED, "abuse"), (ROUTED, "spam")]
    # A reload swaps the rules between windows: the next record is rendered under the new thresholds.
    renderer.rules = rules_from(routes, {"hate": 0.6, "insult": 0.95})
    again = strict_json(renderer.render(entry, 1_700_000_000_200).messages[0].value)
    assert again["labels"] == ["spam", "hate"]


def test_a_single_label_result_is_unchanged():
    renderer = Renderer("out", "dlq", {"id": "m", "revision": "r"}, rules_from([]))
    record = InputRecord("in", 0, 0, b"k", b"text", [], 1_700_000_000_000)
    encoding = Encoding([2, 5, 3], False)
    entry = Entry(Comment(record, "text"), encoding)
    entry.prediction = to_prediction([0.3, 0.7], ["negative", "positive"], encoding)
    value = json.loads(renderer.render(entry, 1_700_000_000_100).messages[0].value)
    assert "labels" not in value and list(value)[:5] == ["input", "text", "label", "score", "probabilities"]


# --- worker classify ---

def test_classify_prints_every_category_at_or_above_its_threshold(monkeypatch, capsys, multi_label_dir, independent):
    from worker import cli

    monkeypatch.setenv("WORKER_MODEL", str(multi_label_dir))
    monkeypatch.setenv("WORKER_ENGINE", "torch")
    monkeypatch.setenv("WORKER_LABEL_THRESHOLDS", '{"default": 0.3}')
    assert cli.main(["classify", "--json", *TEXTS[:4]]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    for line, expected in zip(lines, independent):
        wanted = sorted((c for c, p in zip(CATEGORIES, expected) if p >= 0.3), key=lambda c: -expected[CATEGORIES.index(c)])
        assert line["labels"] == wanted and line["multi_label"] is True
    assert cli.main(["classify", TEXTS[0]]) == 0
    out = capsys.readouterr().out.strip()
    flagged = [c for c, p in zip(CATEGORIES, independent[0]) if p >= 0.3]
    assert out.endswith(f": {TEXTS[0]}") and all(f"{c} (" in out for c in flagged)
