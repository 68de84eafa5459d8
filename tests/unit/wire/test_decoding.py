"""Strict decoding of input records (worker.wire.decoding)."""

import json

import pytest

from tests.strict_json import strict_json
from tests.unit.wire.samples import MODEL, rec, sample_prediction
from worker.wire.decoding import decode
from worker.wire.results import render_result
from worker.wire.types import (
    DECODE_ERROR,
    EMPTY_TEXT,
    INVALID_JSON,
    INVALID_UTF8,
    MISSING_TEXT,
    NON_STRICT_JSON,
    NOT_AN_OBJECT,
    TOMBSTONE,
    TOO_LARGE,
    Comment,
    InputRecord,
    Rejection,
    Rendered,
)


@pytest.mark.parametrize(
    "value,fmt,reason",
    [
        (None, "text", TOMBSTONE),
        (b"\xff\xfe\x00bad", "text", INVALID_UTF8),
        (b"x" * 101, "text", TOO_LARGE),
        (b"   \n\t ", "text", EMPTY_TEXT),
        (b"", "text", EMPTY_TEXT),
        (b"{not json", "json", INVALID_JSON),
        (b"", "json", INVALID_JSON),
        (b"\xef\xbb\xbf{}", "json", INVALID_JSON),  # a byte order mark
        (b"[1, 2]", "json", NOT_AN_OBJECT),
        (b'"just a string"', "json", NOT_AN_OBJECT),
        (b'{"other": "x"}', "json", MISSING_TEXT),
        (b'{"text": 5}', "json", MISSING_TEXT),
        (b'{"text": "  "}', "json", EMPTY_TEXT),
    ],
)
def test_bad_input_is_rejected_with_reason(value, fmt, reason):
    outcome = decode(rec(value), fmt, "text", max_bytes=100)
    assert isinstance(outcome, Rejection)
    assert outcome.reason == reason
    assert outcome.detail


@pytest.mark.parametrize(
    "value",
    [
        b'{"text": "x", "n": NaN}',
        b'{"text": "x", "n": Infinity}',
        b'{"text": "x", "n": [-Infinity]}',
        b'{"text": "bad \\ud800 surrogate"}',
        b'{"text": "x", "other": "\\udfff"}',
        b'{"text": "x", "\\ud83d": 1}',  # a lone surrogate in a key
        b'{"text": "x", "deep": [[{"k": ["\\udc00"]}]]}',
        b'{"text": "x", "n": 1e400}',
        b'{"text": "x", "n": -1E+309}',
        b'{"text": "x", "n": ' + b"9" * 400 + b"}",
        b'{"text": "x", "n": ' + b"1" * 5000 + b"}",  # past Python's 4300-digit int limit
    ],
)
def test_json_that_strict_parsers_refuse_is_non_strict_json(value):
    outcome = decode(rec(value), "json", max_bytes=100_000)
    assert isinstance(outcome, Rejection), outcome
    assert outcome.reason == NON_STRICT_JSON
    assert outcome.detail and len(outcome.detail) < 300


@pytest.mark.parametrize(
    "value",
    [
        b'{"text": "emoji \\ud83d\\ude00 pair"}',  # an escaped surrogate pair is one code point
        b'{"text": "x", "n": 1e308, "m": -0, "z": -0.0, "tiny": 1e-400, "big": 123456789012345678901234567890}',
        b'{"text": "x", "path": "C:\\\\ud800"}',  # an escaped backslash, not a surrogate escape
        b'{"text": "x", "text": "last wins"}',  # duplicate keys: valid JSON, echoed as sent
        b'  {"text": "\\u0000 nul and \\u2028 separator"}\n',
    ],
)
def test_strict_json_edge_cases_are_accepted_and_echoed_verbatim(value):
    outcome = decode(rec(value), "json", max_bytes=100_000)
    assert isinstance(outcome, Comment), outcome
    assert outcome.raw_json == value.strip()
    out = render_result(outcome, sample_prediction(), model=MODEL, now_ms=0, max_bytes=100_000)
    assert isinstance(out, Rendered)
    assert value.strip() in out.value
    strict_json(out.value)


def test_deep_nesting_is_a_decode_error_not_a_crash():
    value = b'{"text": "x", "deep": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    outcome = decode(rec(value), "json", max_bytes=1_000_000)
    assert isinstance(outcome, Rejection) and outcome.reason == DECODE_ERROR
    assert "nested too deeply" in outcome.detail


def test_any_exception_while_decoding_is_a_decode_error():
    weird = InputRecord("in", 0, 1, None, 12345, [])  # type: ignore[arg-type]
    outcome = decode(weird, "text")
    assert isinstance(outcome, Rejection) and outcome.reason == DECODE_ERROR


def test_unreadable_record_is_a_decode_error():
    record = InputRecord("in", 0, 1, None, b"fine", [], unreadable="headers could not be read")
    outcome = decode(record, "text")
    assert isinstance(outcome, Rejection) and outcome.reason == DECODE_ERROR
    assert outcome.detail == "headers could not be read"


@pytest.mark.parametrize("text", ["ㅋㅋㅋㅋ", "최고👍🔥", "zero\u200bwidth", "Mixed 한국어 English 日本語", "a" * 90])
def test_odd_but_valid_text_is_accepted(text):
    outcome = decode(rec(text.encode()), "text", max_bytes=1000)
    assert isinstance(outcome, Comment) and outcome.text == text and outcome.raw_json is None


def test_json_nested_field_and_original_kept_verbatim():
    value = json.dumps({"id": 7, "comment": {"body": "재밌다", "author": "a"}}, ensure_ascii=False).encode()
    outcome = decode(rec(value), "json", "comment.body")
    assert isinstance(outcome, Comment)
    assert outcome.text == "재밌다"
    assert outcome.raw_json == value
