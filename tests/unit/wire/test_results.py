"""The result record and its fields (worker.wire.results)."""

import json

import pytest

from tests.strict_json import strict_json
from tests.unit.wire.samples import MODEL, rec, sample_prediction
from worker.wire.decoding import decode
from worker.wire.results import LEAN_FIELDS, RESULT_FIELDS, _longest_prefix, parse_result_fields, render_result
from worker.wire.sizes import SIZE_MARGIN_BYTES
from worker.wire.types import INFERENCE_ERROR, TOO_LARGE, Comment, Rejection, Rendered


def _result(comment, max_bytes=100_000, **kwargs):
    out = render_result(comment, kwargs.pop("prediction", sample_prediction()), model=MODEL,
                        now_ms=kwargs.pop("now_ms", 1_700_000_000_250), max_bytes=max_bytes, **kwargs)
    assert isinstance(out, Rendered), out
    return out, strict_json(out.value)


def test_result_schema():
    out, value = _result(Comment(rec("좋다".encode(), headers=[("trace", b"t")]), "좋다"))
    assert list(value) == [f for f in RESULT_FIELDS if f != "labels"]  # labels: multi-label results only
    assert value["input"] == "좋다" and value["text"] == "좋다"
    assert value["label"] == "positive" and value["score"] == 0.9
    assert value["probabilities"] == {"negative": 0.1, "positive": 0.9}
    assert value["model"] == {"id": "m", "revision": "r"}
    assert value["source"] == {"topic": "in", "partition": 2, "offset": 41}
    assert value["latency_ms"] == 250
    assert value["truncated"] is False and value["tokens"] == 5
    assert value["classified_at"].startswith("2023-11-14T22:13:20.250")
    assert out.key == b"k1" and out.headers == [("trace", b"t")] and out.reason is None


def test_json_input_is_echoed_as_the_object():
    raw = json.dumps({"text": "좋다", "id": 7, "f": 1.5, "nested": {"a": [1, None, True]}}, ensure_ascii=False)
    comment = decode(rec(raw.encode()), "json")
    _, value = _result(comment)
    assert value["input"] == json.loads(raw) and value["text"] == "좋다"


def test_result_without_timestamp_has_null_latency():
    _, value = _result(Comment(rec("좋다".encode(), ts=None), "좋다"), now_ms=5)
    assert value["latency_ms"] is None


def test_result_is_utf8_not_escaped():
    out, _ = _result(Comment(rec("좋다".encode()), "좋다"))
    assert "좋다".encode() in out.value


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_probabilities_are_not_a_result(bad):
    comment = Comment(rec(b"x"), "x")
    for prediction in (sample_prediction(score=bad),
                       sample_prediction(probabilities={"negative": bad, "positive": 0.5})):
        out = render_result(comment, prediction, model=MODEL, now_ms=0, max_bytes=100_000)
        assert isinstance(out, Rejection) and out.reason == INFERENCE_ERROR


@pytest.mark.parametrize(
    "spec,expected",
    [
        ("all", RESULT_FIELDS),
        ("lean", LEAN_FIELDS),
        ("label", ("label", "score")),
        ("source, text ,label", ("text", "label", "score", "source")),
        ("lean,text", ("text",) + LEAN_FIELDS),
    ],
)
def test_result_fields(spec, expected):
    fields = parse_result_fields(spec)
    assert fields == expected
    _, value = _result(Comment(rec(b"hello"), "hello"), fields=fields)
    assert tuple(value) == tuple(f for f in expected if f != "labels")  # a single-label result has no labels
    _, multi = _result(Comment(rec(b"hello"), "hello"), fields=fields, prediction=_multi_label(), flagged=("insult",))
    assert tuple(multi) == expected


@pytest.mark.parametrize("spec", ["categories", "all,nope", "", " , "])
def test_unknown_result_fields_are_refused(spec):
    with pytest.raises(ValueError):
        parse_result_fields(spec)


def test_lean_result_leaves_the_text_out():
    _, value = _result(Comment(rec("비밀 댓글".encode()), "비밀 댓글"), fields=LEAN_FIELDS)
    assert "input" not in value and "text" not in value and "비밀" not in json.dumps(value, ensure_ascii=False)


def test_too_large_result_drops_input_first():
    text = "가" * 4000  # 12,000 bytes of UTF-8; input + text do not fit in 20,000, text alone does
    out, value = _result(Comment(rec(text.encode(), key=b"k" * 100), text), max_bytes=20_000)
    assert "input" not in value and value["text"] == text
    assert value["cut"] == {"input": True, "text": False, "text_length": 4000}
    assert out.size <= 20_000 - SIZE_MARGIN_BYTES


def test_too_large_result_cuts_text_on_a_character_boundary():
    text = "가😀\"\\\n" * 5000  # multi-byte and escaped characters
    out, value = _result(Comment(rec(text.encode()), text), max_bytes=20_000, reserve_bytes=300)
    assert "input" not in value
    assert value["cut"] == {"input": True, "text": True, "text_length": len(text)}
    assert text.startswith(value["text"]) and len(value["text"]) > 1000
    assert out.size <= 20_000 - 300 - SIZE_MARGIN_BYTES
    assert out.size > 20_000 - 300 - SIZE_MARGIN_BYTES - 12  # filled up to a character or escape
    assert value["label"] == "positive" and value["source"]["offset"] == 41 and value["model"] == MODEL


def test_result_that_cannot_fit_is_too_large():
    comment = Comment(rec(b"hello", key=b"k" * 19_900), "hello")
    out = render_result(comment, sample_prediction(), model=MODEL, now_ms=0, max_bytes=20_000)
    assert isinstance(out, Rejection) and out.reason == TOO_LARGE
    many_headers = [(f"h{i}", b"v" * 100) for i in range(300)]
    comment = Comment(rec(b"hello", headers=many_headers), "hello")
    out = render_result(comment, sample_prediction(), model=MODEL, now_ms=0, max_bytes=20_000)
    assert isinstance(out, Rejection) and out.reason == TOO_LARGE and "300 headers" in out.detail


def test_result_fields_setting_fails_at_start_naming_the_variable(monkeypatch):
    from worker.errors import ConfigError
    from worker.settings import load_settings

    monkeypatch.setenv("WORKER_RESULT_FIELDS", "lean,categories")
    with pytest.raises(ConfigError) as error:
        load_settings()
    message = str(error.value)
    assert "WORKER_RESULT_FIELDS" in message and "'categories'" in message and "\n" not in message
    monkeypatch.setenv("WORKER_RESULT_FIELDS", "lean")
    settings = load_settings()
    assert settings.result_field_names == LEAN_FIELDS
    assert settings.max_message_bytes < 1_000_000  # below the producer's default message.max.bytes


@pytest.mark.parametrize("seed", range(30))
def test_longest_prefix_matches_a_plain_search(seed):
    import random

    rng = random.Random(seed)
    alphabet = ["a", "가", "😀", '"', "\\", "\n", "\x00", "\u2028", "é"]
    text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12_000)))
    full = json.dumps(text, ensure_ascii=False).encode()
    room = rng.randint(2, len(full) + 5)
    expected = max(
        (n for n in range(len(text) + 1) if len(json.dumps(text[:n], ensure_ascii=False).encode()) <= room),
        default=0,
    ) if len(text) < 400 else None
    got = _longest_prefix(text, full, room)
    prefix = json.loads(got)
    assert len(got) <= room and text.startswith(prefix)
    assert got == json.dumps(prefix, ensure_ascii=False).encode()
    if len(prefix) < len(text):  # one more code point would not fit
        assert len(json.dumps(text[: len(prefix) + 1], ensure_ascii=False).encode()) > room
    if expected is not None:
        assert len(prefix) == expected


def _multi_label(**changes):
    values = dict(label="insult", score=0.8, probabilities={"hate": 0.6, "insult": 0.8, "spam": 0.1},
                  multi_label=True)
    values.update(changes)
    return sample_prediction(**values)


def test_multi_label_result_carries_its_labels_after_the_score():
    _, value = _result(Comment(rec(b"x"), "x"), prediction=_multi_label(), flagged=("insult", "hate"))
    assert list(value) == list(RESULT_FIELDS)
    assert value["labels"] == ["insult", "hate"] and value["label"] == "insult" and value["score"] == 0.8
    assert value["probabilities"] == {"hate": 0.6, "insult": 0.8, "spam": 0.1}
    _, none = _result(Comment(rec(b"x"), "x"), prediction=_multi_label())
    assert none["labels"] == []  # nothing at or above its threshold: present, and empty
    _, lean = _result(Comment(rec(b"x"), "x"), prediction=_multi_label(), flagged=("insult",),
                      fields=parse_result_fields("label"))
    assert list(lean) == ["label", "score"]  # WORKER_RESULT_FIELDS still decides


def test_single_label_result_has_no_labels_whatever_is_passed():
    _, value = _result(Comment(rec(b"x"), "x"), flagged=("positive",))
    assert "labels" not in value
