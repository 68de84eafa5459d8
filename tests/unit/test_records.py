import json

import pytest

from tests.strict_json import NotStrictJSON, strict_json
from worker import records as r
from worker.records import Comment, InputRecord, Prediction, Rejection, decode, record_size
from worker.settings import LEAN_FIELDS, RESULT_FIELDS, parse_result_fields

MODEL = {"id": "m", "revision": "r"}


def rec(value, headers=None, key=b"k1", ts=1_700_000_000_000):
    return InputRecord("in", 2, 41, key, value, headers or [], ts)


# --- decoding ---


@pytest.mark.parametrize(
    "value,fmt,reason",
    [
        (None, "text", r.TOMBSTONE),
        (b"\xff\xfe\x00bad", "text", r.INVALID_UTF8),
        (b"x" * 101, "text", r.TOO_LARGE),
        (b"   \n\t ", "text", r.EMPTY_TEXT),
        (b"", "text", r.EMPTY_TEXT),
        (b"{not json", "json", r.INVALID_JSON),
        (b"", "json", r.INVALID_JSON),
        (b"\xef\xbb\xbf{}", "json", r.INVALID_JSON),  # a byte order mark
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
    assert outcome.reason == r.NON_STRICT_JSON
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
    out = r.render_result(outcome, _prediction(), model=MODEL, now_ms=0, max_bytes=100_000)
    assert isinstance(out, r.Rendered)
    assert value.strip() in out.value
    strict_json(out.value)


def test_deep_nesting_is_a_decode_error_not_a_crash():
    value = b'{"text": "x", "deep": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    outcome = decode(rec(value), "json", max_bytes=1_000_000)
    assert isinstance(outcome, Rejection) and outcome.reason == r.DECODE_ERROR
    assert "nested too deeply" in outcome.detail


def test_any_exception_while_decoding_is_a_decode_error():
    weird = InputRecord("in", 0, 1, None, 12345, [])  # type: ignore[arg-type]
    outcome = decode(weird, "text")
    assert isinstance(outcome, Rejection) and outcome.reason == r.DECODE_ERROR


def test_unreadable_record_is_a_decode_error():
    record = InputRecord("in", 0, 1, None, b"fine", [], unreadable="headers could not be read")
    outcome = decode(record, "text")
    assert isinstance(outcome, Rejection) and outcome.reason == r.DECODE_ERROR
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


# --- results ---


def _prediction(**changes):
    values = dict(label="positive", score=0.9, probabilities={"negative": 0.1, "positive": 0.9}, truncated=False,
                  tokens=5)
    values.update(changes)
    return Prediction(**values)


def _result(comment, max_bytes=100_000, **kwargs):
    out = r.render_result(comment, kwargs.pop("prediction", _prediction()), model=MODEL,
                          now_ms=kwargs.pop("now_ms", 1_700_000_000_250), max_bytes=max_bytes, **kwargs)
    assert isinstance(out, r.Rendered), out
    return out, strict_json(out.value)


def test_result_schema():
    out, value = _result(Comment(rec("좋다".encode(), headers=[("trace", b"t")]), "좋다"))
    assert list(value) == list(RESULT_FIELDS)
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
    for prediction in (_prediction(score=bad), _prediction(probabilities={"negative": bad, "positive": 0.5})):
        out = r.render_result(comment, prediction, model=MODEL, now_ms=0, max_bytes=100_000)
        assert isinstance(out, Rejection) and out.reason == r.INFERENCE_ERROR


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
    assert tuple(value) == expected


@pytest.mark.parametrize("spec", ["labels", "all,nope", "", " , "])
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
    assert out.size <= 20_000 - r.SIZE_MARGIN_BYTES


def test_too_large_result_cuts_text_on_a_character_boundary():
    text = "가😀\"\\\n" * 5000  # multi-byte and escaped characters
    out, value = _result(Comment(rec(text.encode()), text), max_bytes=20_000, reserve_bytes=300)
    assert "input" not in value
    assert value["cut"] == {"input": True, "text": True, "text_length": len(text)}
    assert text.startswith(value["text"]) and len(value["text"]) > 1000
    assert out.size <= 20_000 - 300 - r.SIZE_MARGIN_BYTES
    assert out.size > 20_000 - 300 - r.SIZE_MARGIN_BYTES - 12  # filled up to a character or escape
    assert value["label"] == "positive" and value["source"]["offset"] == 41 and value["model"] == MODEL


def test_result_that_cannot_fit_is_too_large():
    comment = Comment(rec(b"hello", key=b"k" * 19_900), "hello")
    out = r.render_result(comment, _prediction(), model=MODEL, now_ms=0, max_bytes=20_000)
    assert isinstance(out, Rejection) and out.reason == r.TOO_LARGE
    many_headers = [(f"h{i}", b"v" * 100) for i in range(300)]
    comment = Comment(rec(b"hello", headers=many_headers), "hello")
    out = r.render_result(comment, _prediction(), model=MODEL, now_ms=0, max_bytes=20_000)
    assert isinstance(out, Rejection) and out.reason == r.TOO_LARGE and "300 headers" in out.detail


def test_record_size_matches_librdkafka():
    # Measured against confluent-kafka 2.16 with message.max.bytes=10000: a 9964-byte value alone is
    # the largest accepted; with a 10-byte key and header ("abc", 20 bytes) the largest is 9929.
    assert record_size(None, b"x" * 9964, []) == 10_000
    assert record_size(b"k" * 10, b"x" * 9929, [("abc", b"v" * 20)]) == 10_000
    assert record_size(None, b"x" * 9961, [("a", None)]) == 10_000


def test_header_names_and_values_are_made_producible():
    headers = r.pass_through_headers([("ok", b"\xff"), ("lone\udc80", None), (b"by\xfftes", "str\ud800"), ("n", 5)])
    for name, value in headers:
        name.encode("utf-8")
        assert value is None or isinstance(value, bytes)
    assert headers[0] == ("ok", b"\xff")  # binary values pass untouched


@pytest.mark.parametrize("limit", range(0, 12))
def test_cut_utf8_never_splits_a_character(limit):
    data = "a가😀b".encode()
    cut = r.cut_utf8(data, limit)
    assert len(cut) <= max(limit, 0)
    cut.decode("utf-8")
    assert data.startswith(cut)
    assert r.cut_utf8(b"\x80\x80\x80\x80\x80", 3) == b"\x80\x80\x80"  # not UTF-8: a plain cut


def test_header_text_is_capped_and_valid_utf8():
    value = r.header_text("가" * 2000 + "\udc80")
    assert len(value) <= r.DETAIL_MAX_BYTES
    value.decode("utf-8")
    assert r.header_text("x\udc80") == b"x\\udc80"


# --- dead letters ---


def _dead(record, reason=r.INVALID_UTF8, detail="value is not UTF-8", max_bytes=100_000, reserve_bytes=0):
    out = r.render_dead_letter(Rejection(record, reason, detail), model_id="my-model", now_ms=0,
                               max_bytes=max_bytes, reserve_bytes=reserve_bytes)
    assert out.reason == reason
    assert out.size <= max_bytes - reserve_bytes - r.SIZE_MARGIN_BYTES
    return out, dict(out.headers)


def test_dead_letter_keeps_originals_and_names_the_error():
    original = [("trace-id", b"abc"), ("bin", b"\x00\x01")]
    out, named = _dead(rec(b"\xff", headers=original))
    assert out.headers[:2] == original and out.key == b"k1" and out.value == b"\xff"
    assert named["worker.error.kind"] == b"invalid_utf8"
    assert named["worker.error.reason"] == b"value is not UTF-8"
    assert named["worker.source.topic"] == b"in"
    assert named["worker.source.partition"] == b"2"
    assert named["worker.source.offset"] == b"41"
    assert named["worker.model"] == b"my-model"
    assert named["worker.failed.at"].startswith(b"1970-01-01T00:00:00")
    assert not any(name.startswith("worker.original.") for name in named)
    assert r.dead_letter_headers(Rejection(rec(b"x", headers=original), r.TOMBSTONE, "d"), "m", 0)[:2] == original


def test_tombstone_dead_letter_stays_null():
    out, _ = _dead(rec(None), r.TOMBSTONE, "null")
    assert out.value is None


def test_oversized_dead_letter_cuts_the_value_first():
    value = "가".encode() * 10_000
    out, named = _dead(rec(value, headers=[("h", b"v")]), r.TOO_LARGE, max_bytes=20_000)
    assert named["worker.original.value.bytes"] == b"30000"
    assert value.startswith(out.value) and len(out.value) > 19_000
    out.value.decode("utf-8")  # cut on a character boundary
    assert named["h"] == b"v" and out.key == b"k1"


def test_oversized_dead_letter_then_drops_headers_then_cuts_the_key():
    headers = [(f"h{i}", b"v" * 100) for i in range(300)]
    out, named = _dead(rec(b"v" * 50_000, headers=headers), r.TOO_LARGE, max_bytes=20_000)
    assert "h0" not in named and named["worker.original.headers.count"] == b"300"
    assert int(named["worker.original.headers.bytes"]) > 30_000
    assert out.key == b"k1" and len(out.value) > 15_000
    out, named = _dead(rec(b"v" * 50_000, headers=headers, key=b"K" * 60_000), r.TOO_LARGE, max_bytes=20_000)
    assert named["worker.original.key.bytes"] == b"60000" and named["worker.original.value.bytes"] == b"50000"
    assert out.value == b"" and out.key == b"K" * len(out.key) and len(out.key) > 15_000


def test_dead_letter_detail_is_capped_and_valid():
    out, named = _dead(rec(b"x"), r.TOKENIZE_ERROR, "boom \udc80 " + "x" * 10_000)
    assert len(named["worker.error.reason"]) <= r.DETAIL_MAX_BYTES
    named["worker.error.reason"].decode("utf-8")


def test_dead_letter_never_raises():
    class Evil:
        def __str__(self):
            raise RuntimeError("no")

    record = InputRecord(Evil(), 0, 1, b"k", b"v", [])  # type: ignore[arg-type]
    out = r.render_dead_letter(Rejection(record, r.DECODE_ERROR, Evil()), model_id="m", now_ms=1e30,  # type: ignore[arg-type]
                               max_bytes=10_000)
    assert out.reason == r.DECODE_ERROR and out.key is None and out.value is None
    assert dict(out.headers)["worker.error.kind"] == b"decode_error"


def test_result_fields_setting_fails_at_start_naming_the_variable(monkeypatch):
    from worker.errors import ConfigError
    from worker.settings import load_settings

    monkeypatch.setenv("WORKER_RESULT_FIELDS", "lean,labels")
    with pytest.raises(ConfigError) as error:
        load_settings()
    message = str(error.value)
    assert "WORKER_RESULT_FIELDS" in message and "'labels'" in message and "\n" not in message
    monkeypatch.setenv("WORKER_RESULT_FIELDS", "lean")
    settings = load_settings()
    assert settings.result_field_names == LEAN_FIELDS
    assert settings.max_message_bytes < 1_000_000  # below the producer's default message.max.bytes


def test_rendered_records_pass_the_real_producers_size_check():
    """librdkafka checks message.max.bytes inside produce(), before any broker is involved: every
    rendered record must be accepted at a limit of max_bytes, and the size formula must be exact."""
    from confluent_kafka import KafkaException, Producer

    limit = 20_000
    producer = Producer({"bootstrap.servers": "127.0.0.1:1", "message.max.bytes": limit, "log_level": 0})
    try:
        many = [(f"h{i}", b"v" * 100) for i in range(300)]
        text = "가😀\"" * 3000
        rendered = [
            r.render_result(Comment(rec(text.encode()), text), _prediction(), model=MODEL, now_ms=0, max_bytes=limit),
            r.render_dead_letter(Rejection(rec(b"v" * 50_000, headers=many), r.TOO_LARGE, "d"), model_id="m",
                                 now_ms=0, max_bytes=limit),
            r.render_dead_letter(Rejection(rec(b"v", headers=many, key=b"K" * 60_000), r.TOO_LARGE, "d"),
                                 model_id="m", now_ms=0, max_bytes=limit),
            r.render_dead_letter(Rejection(rec(None, headers=[("a\udc80", None)]), r.TOMBSTONE, "d"), model_id="m",
                                 now_ms=0, max_bytes=limit),
        ]
        for out in rendered:
            assert isinstance(out, r.Rendered) and out.size <= limit
            producer.produce("t", key=out.key, value=out.value, headers=out.headers)
        headers = [("abc", b"v" * 20), ("none", None)]
        exact = b"x" * (limit - record_size(b"key", b"", headers))
        producer.produce("t", key=b"key", value=exact, headers=headers)  # exactly the limit: accepted
        with pytest.raises(KafkaException, match="MSG_SIZE_TOO_LARGE"):
            producer.produce("t", key=b"key", value=exact + b"x", headers=headers)
    finally:
        producer.purge()
        producer.flush(0)


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
    got = r._longest_prefix(text, full, room)
    prefix = json.loads(got)
    assert len(got) <= room and text.startswith(prefix)
    assert got == json.dumps(prefix, ensure_ascii=False).encode()
    if len(prefix) < len(text):  # one more code point would not fit
        assert len(json.dumps(text[: len(prefix) + 1], ensure_ascii=False).encode()) > room
    if expected is not None:
        assert len(prefix) == expected
