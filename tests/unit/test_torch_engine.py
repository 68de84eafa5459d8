"""The torch engine on a tiny model (the tokenizer side, truncation, labels on disk, dtypes), and predictions from probabilities."""

import pytest

from worker.engines.base import Encoding, classify_encoded, to_prediction
from worker.engines.device import resolve_dtype
from worker.engines.torch_engine import HFClassifier
from worker.errors import ModelLoadError
from harness.models import build_tiny_model
from harness.paths import TOKENIZER_DIR


def test_tokenizer_gives_exact_koelectra_v3_ids():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))
    assert tokenizer("한국어 ELECTRA를 공유합니다.")["input_ids"] == [2, 11229, 29173, 13352, 25541, 4110, 7824, 17788, 18, 3]
    assert len(tokenizer) == 35000


def test_prediction_picks_argmax():
    p = to_prediction([0.2, 0.7, 0.1], ["a", "b", "c"], Encoding([2, 5, 3], False))
    assert (p.label, p.score, p.tokens) == ("b", 0.7, 3)
    assert p.probabilities == {"a": 0.2, "b": 0.7, "c": 0.1}


def test_dtype_resolution():
    assert resolve_dtype("float32", "cpu") == "float32"
    assert resolve_dtype("auto", "cpu") in ("float32", "bfloat16")


def test_score_alone_equals_score_in_padded_batch(tiny_classifier, nsmc_rows):
    texts = [doc for _, doc, _ in nsmc_rows[:64]]
    encodings = tiny_classifier.encode(texts)
    batched = classify_encoded(tiny_classifier, encodings, sub_batch_max_tokens=4096).probabilities
    arrival_order = tiny_classifier.predict([e.ids for e in encodings])  # one pass, padded to the longest
    for i, encoding in enumerate(encodings):
        alone = tiny_classifier.predict([encoding.ids])[0]
        assert alone == pytest.approx(batched[i], abs=1e-4)
        assert alone == pytest.approx(arrival_order[i], abs=1e-4)


def test_long_text_is_truncated_and_flagged(tiny_classifier):
    short, long = tiny_classifier.encode(["짧은 글", "아주 긴 댓글 " * 400])
    assert not short.truncated
    assert long.truncated and len(long.ids) == tiny_classifier.max_length == 512
    assert long.ids[0] == 2 and long.ids[-1] == 3  # [CLS] ... [SEP] kept
    probs = classify_encoded(tiny_classifier, [short, long], 2048).probabilities
    assert all(abs(sum(p) - 1) < 1e-5 for p in probs)


def test_a_text_of_a_megabyte_is_cut_before_tokenizing_and_gives_the_same_ids(tiny_classifier):
    """The largest record the worker accepts (~1 MB) is not tokenized whole (hundreds of thousands of tokens and
    their structures: a poll of 70 took the RSS to 2.7 GB); the model sees the same 512 ids as from the whole text."""
    from worker.engines import text as text_module

    review = "배우들 연기가 정말 좋았고 음악도 훌륭했다. "
    huge = review * (960_000 // len(review.encode("utf-8")))
    moderate = review * 700  # 17,500 characters: over the cut, still cheap to tokenize whole
    (cut_huge, cut_moderate) = tiny_classifier.encode([huge, moderate])
    whole = tiny_classifier.encoder.tokenizer(moderate, add_special_tokens=True)["input_ids"]
    limit = tiny_classifier.max_length
    assert len(moderate) > limit * text_module.CHARS_PER_TOKEN
    assert cut_moderate.truncated and cut_moderate.ids == whole[: limit - 1] + whole[-1:]
    assert cut_huge.truncated and cut_huge.ids == cut_moderate.ids


def test_max_length_setting_caps_tokens(tiny_model_dir):
    classifier = HFClassifier.load(str(tiny_model_dir), device="cpu", dtype="float32", max_length=16)
    (encoding,) = classifier.encode(["긴 문장 " * 50])
    assert encoding.truncated and len(encoding.ids) == 16


def test_multiclass_model_reports_all_probabilities(tmp_path):
    directory = build_tiny_model(tmp_path / "three", {0: "anger", 1: "joy", 2: "neutral"})
    classifier = HFClassifier.load(str(directory), device="cpu", dtype="float32")
    assert classifier.labels == ["anger", "joy", "neutral"]
    encodings = classifier.encode(["화난다", "기쁘다"])
    for probs, enc in zip(classify_encoded(classifier, encodings, 1024).probabilities, encodings):
        prediction = to_prediction(probs, classifier.labels, enc)
        assert set(prediction.probabilities) == {"anger", "joy", "neutral"}


def test_generic_labels_on_disk_become_positive_negative(tmp_path):
    directory = build_tiny_model(tmp_path / "generic", {0: "LABEL_0", 1: "LABEL_1"})
    assert HFClassifier.load(str(directory), device="cpu", dtype="float32").labels == ["negative", "positive"]


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="cannot load model"):
        HFClassifier.load(str(tmp_path / "nope"), device="cpu")


def test_bfloat16_path_runs(tiny_model_dir):
    classifier = HFClassifier.load(str(tiny_model_dir), device="cpu", dtype="bfloat16")
    probs = classify_encoded(classifier, classifier.encode(["좋아요", "싫어요"]), 1024).probabilities
    assert all(abs(sum(p) - 1) < 1e-3 for p in probs)
    assert classifier.info["dtype"] == "bfloat16"
