import json

import pytest

from worker import records as r
from worker.records import Comment, InputRecord, Prediction, Rejection, decode


def rec(value, headers=None, key=b"k1", ts=1_700_000_000_000):
    return InputRecord("in", 2, 41, key, value, headers or [], ts)


@pytest.mark.parametrize(
    "value,fmt,reason",
    [
        (None, "text", r.TOMBSTONE),
        (b"\xff\xfe\x00bad", "text", r.INVALID_UTF8),
        (b"x" * 101, "text", r.TOO_LARGE),
        (b"   \n\t ", "text", r.EMPTY_TEXT),
        (b"", "text", r.EMPTY_TEXT),
        (b"{not json", "json", r.INVALID_JSON),
        (b"[1, 2]", "json", r.NOT_AN_OBJECT),
        (b'"just a string"', "json", r.NOT_AN_OBJECT),
        (b'{"other": "x"}', "json", r.MISSING_TEXT),
        (b'{"text": 5}', "json", r.MISSING_TEXT),
        (b'{"text": "  "}', "json", r.EMPTY_TEXT),
    ],
)
def test_bad_input_is_rejected_with_reason(value, fmt, reason):
    outcome = decode(rec(value), fmt, "text", max_bytes=100)
    assert isinstance(outcome, Rejection)
    assert outcome.reason == reason
    assert outcome.detail


@pytest.mark.parametrize("text", ["ㅋㅋㅋㅋ", "최고👍🔥", "zero\u200bwidth", "Mixed 한국어 English 日本語", "a" * 90])
def test_odd_but_valid_text_is_accepted(text):
    outcome = decode(rec(text.encode()), "text", max_bytes=1000)
    assert isinstance(outcome, Comment) and outcome.text == text and outcome.original == text


def test_json_nested_field_and_original_object_kept():
    value = {"id": 7, "comment": {"body": "재밌다", "author": "a"}}
    outcome = decode(rec(json.dumps(value).encode()), "json", "comment.body")
    assert isinstance(outcome, Comment)
    assert outcome.text == "재밌다"
    assert outcome.original == value


def _prediction():
    return Prediction("positive", 0.9, {"negative": 0.1, "positive": 0.9}, False, 5)


def test_result_schema():
    comment = Comment(rec("좋다".encode()), "좋다", "좋다")
    value = json.loads(r.encode_result(comment, _prediction(), {"id": "m", "revision": "r"}, now_ms=1_700_000_000_250))
    assert value["input"] == "좋다"
    assert value["label"] == "positive" and value["score"] == 0.9
    assert value["probabilities"] == {"negative": 0.1, "positive": 0.9}
    assert value["model"] == {"id": "m", "revision": "r"}
    assert value["source"] == {"topic": "in", "partition": 2, "offset": 41}
    assert value["latency_ms"] == 250
    assert value["truncated"] is False
    assert value["classified_at"].startswith("2023-11-14T22:13:20.250")


def test_result_without_timestamp_has_null_latency():
    comment = Comment(rec("좋다".encode(), ts=None), "좋다", "좋다")
    value = json.loads(r.encode_result(comment, _prediction(), {"id": "m", "revision": "r"}, now_ms=5))
    assert value["latency_ms"] is None


def test_result_is_utf8_not_escaped():
    comment = Comment(rec("좋다".encode()), "좋다", "좋다")
    assert "좋다".encode() in r.encode_result(comment, _prediction(), {"id": "m", "revision": "r"}, 0)


def test_dead_letter_headers_keep_originals_and_name_the_error():
    original = [("trace-id", b"abc"), ("bin", b"\x00\x01")]
    rejection = Rejection(rec(b"\xff", headers=original), r.INVALID_UTF8, "value is not UTF-8")
    headers = r.dead_letter_headers(rejection, "my-model", now_ms=0)
    assert headers[:2] == original
    named = dict(headers)
    assert named["worker.error.kind"] == b"invalid_utf8"
    assert named["worker.error.reason"] == b"value is not UTF-8"
    assert named["worker.source.topic"] == b"in"
    assert named["worker.source.partition"] == b"2"
    assert named["worker.source.offset"] == b"41"
    assert named["worker.model"] == b"my-model"
    assert named["worker.failed.at"].startswith(b"1970-01-01T00:00:00")
