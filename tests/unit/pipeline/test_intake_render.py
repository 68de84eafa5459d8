"""intake and render: a record's first and last step in the pipeline (a fake classifier, the real tiny tokenizer)."""

from __future__ import annotations

import pytest

from tests.strict_json import strict_json
from worker.engines.base import Encoding, classify_encoded, to_prediction
from worker.pipeline.intake import Entry, decode_and_tokenize, tokenize
from worker.pipeline.render import render_record
from worker.wire.sizes import SIZE_MARGIN_BYTES
from worker.wire.types import (
    ENCODE_ERROR,
    INFERENCE_ERROR,
    INVALID_UTF8,
    NON_STRICT_JSON,
    TOKENIZE_ERROR,
    TOO_LARGE,
    Comment,
    InputRecord,
    Prediction,
    Rejection,
)

MODEL = {"id": "m", "revision": "r"}


def rec(value, offset=0, key=b"k", headers=None):
    return InputRecord("in", 0, offset, key, value, headers or [], 1_700_000_000_000)


class PickyTokenizer:
    """Encodes texts; raises for the whole call if any text contains 'poison'; odd answers on demand."""

    labels = ["negative", "positive"]
    info = {"model": "fake", "revision": "0"}

    def __init__(self, empty_for: str | None = None):
        self.calls: list[int] = []
        self.empty_for = empty_for

    def encode(self, texts):
        self.calls.append(len(texts))
        if any("poison" in t for t in texts):
            raise ValueError("tokenizer choked on " + "x" * 5000)
        return [Encoding([] if t == self.empty_for else [2, len(t) % 50 + 5, 3], False) for t in texts]

    def predict(self, batch):
        return [[0.3, 0.7] for _ in batch]


def _intake(records, classifier, fmt="text"):
    return decode_and_tokenize(records, classifier, input_format=fmt, text_field="text", max_bytes=10_000)


def test_intake_tokenizes_a_poll_in_one_call():
    classifier = PickyTokenizer()
    records = [rec(b"good", 0), rec(b"\xff", 1), rec(b"fine too", 2), rec(None, 3)]
    out = _intake(records, classifier)
    assert classifier.calls == [2]
    assert [p.record.offset for p in out] == [0, 1, 2, 3]
    assert [type(p.item) for p in out] == [Comment, Rejection, Comment, Rejection]
    assert out[0].encoding is not None and out[1].encoding is None


def test_intake_finds_the_texts_the_tokenizer_fails_on():
    classifier = PickyTokenizer(empty_for="nothing to say")
    records = [rec(b"a", 0), rec(b"poison pill", 1), rec(b"b", 2), rec(b"nothing to say", 3), rec(b"c", 4)]
    out = _intake(records, classifier)
    assert classifier.calls[0] == 5 and len(classifier.calls) == 6  # one batch call, then one per text
    reasons = [p.item.reason if isinstance(p.item, Rejection) else None for p in out]
    assert reasons == [None, TOKENIZE_ERROR, None, TOKENIZE_ERROR, None]
    assert "ValueError: tokenizer choked" in out[1].item.detail
    assert out[3].item.detail == "tokenizer returned no tokens"


def test_tokenize_survives_a_wrong_number_of_encodings():
    class Short(PickyTokenizer):
        def encode(self, texts):
            return super().encode(texts)[:1] if len(texts) > 1 else super().encode(texts)

    comments = [Comment(rec(b"a"), "a"), Comment(rec(b"b", 1), "b")]
    out = tokenize(Short(), comments)
    assert all(p.encoding is not None for p in out)


def test_intake_with_no_records():
    assert _intake([], PickyTokenizer()) == []


def test_render_result_and_dead_letter():
    comment = Comment(rec(b"good"), "good")
    prediction = Prediction("positive", 0.7, {"negative": 0.3, "positive": 0.7}, False, 3)
    out = render_record(comment, prediction, model=MODEL, now_ms=1_700_000_000_100, max_bytes=10_000)
    assert out.reason is None and strict_json(out.value)["label"] == "positive" and out.prediction is prediction
    dead = render_record(Rejection(rec(b"\xff"), INVALID_UTF8, "bad"), None, model=MODEL, now_ms=0, max_bytes=10_000)
    assert dead.reason == INVALID_UTF8 and dead.value == b"\xff"
    assert dict(dead.headers)["worker.model"] == b"m"


def test_render_without_prediction_is_an_inference_error():
    out = render_record(Comment(rec(b"x"), "x"), None, model=MODEL, now_ms=0, max_bytes=10_000)
    assert out.reason == INFERENCE_ERROR


def test_render_turns_an_encoding_failure_into_a_dead_letter():
    comment = Comment(rec(b"x"), "x")
    prediction = Prediction("pos\ud800", 0.7, {"neg": 0.3, "pos\ud800": 0.7}, False, 3)  # label not encodable
    out = render_record(comment, prediction, model=MODEL, now_ms=0, max_bytes=10_000)
    assert out.reason == ENCODE_ERROR and "UnicodeEncodeError" in dict(out.headers)["worker.error.reason"].decode()
    out = render_record(comment, Prediction("p", 0.5, {"p": 0.5}, False, 1), model={"id": object()}, now_ms=0,
                 max_bytes=10_000)
    assert out.reason == ENCODE_ERROR


def test_render_keeps_reserve_bytes_free():
    text = "가" * 5000
    comment = Comment(rec(text.encode()), text)
    prediction = Prediction("positive", 0.7, {"negative": 0.3, "positive": 0.7}, False, 3)
    for reserve in (0, 500, 5000):
        out = render_record(comment, prediction, model=MODEL, now_ms=0, max_bytes=12_000, reserve_bytes=reserve)
        assert out.reason is None
        assert out.size <= 12_000 - reserve - SIZE_MARGIN_BYTES
    out = render_record(comment, prediction, model=MODEL, now_ms=0, max_bytes=12_000, reserve_bytes=11_800)
    assert out.reason == TOO_LARGE


def test_intake_and_render_with_the_real_tokenizer(tiny_classifier):
    records = [rec("재밌다".encode(), 0), rec(("정말 " * 1000).encode(), 1),
               rec(b'{"text": "\\ud800"}', 2), rec('{"text": "좋아요"}'.encode(), 3)]
    out = _intake(records[:2], tiny_classifier) + _intake(records[2:], tiny_classifier, "json")
    assert [isinstance(p.item, Comment) for p in out] == [True, True, False, True]
    assert out[1].encoding.truncated and len(out[1].encoding.ids) == tiny_classifier.max_length
    assert out[2].item.reason == NON_STRICT_JSON
    encodings = [p.encoding for p in out if p.encoding is not None]
    probabilities = classify_encoded(tiny_classifier, encodings, 4096).probabilities
    predictions = iter(to_prediction(p, tiny_classifier.labels, e) for p, e in zip(probabilities, encodings))
    rendered = [render_record(p.item, next(predictions) if p.encoding else None, model=MODEL, now_ms=0, max_bytes=10_000)
                for p in out]
    assert [o.reason for o in rendered] == [None, None, NON_STRICT_JSON, None]
    assert strict_json(rendered[3].value)["input"] == {"text": "좋아요"}
    assert isinstance(out[0], Entry)
