"""Record sizes as librdkafka counts them, and producible headers (worker.wire.sizes)."""

import pytest

from tests.unit.wire.samples import MODEL, rec, sample_prediction
from worker.wire.dead_letters import render_dead_letter
from worker.wire.results import render_result
from worker.wire.sizes import DETAIL_MAX_BYTES, cut_utf8, header_text, pass_through_headers, record_size
from worker.wire.types import TOMBSTONE, TOO_LARGE, Comment, Rejection, Rendered


def test_record_size_matches_librdkafka():
    # Measured against confluent-kafka 2.16 with message.max.bytes=10000: a 9964-byte value alone is
    # the largest accepted; with a 10-byte key and header ("abc", 20 bytes) the largest is 9929.
    assert record_size(None, b"x" * 9964, []) == 10_000
    assert record_size(b"k" * 10, b"x" * 9929, [("abc", b"v" * 20)]) == 10_000
    assert record_size(None, b"x" * 9961, [("a", None)]) == 10_000


def test_header_names_and_values_are_made_producible():
    headers = pass_through_headers([("ok", b"\xff"), ("lone\udc80", None), (b"by\xfftes", "str\ud800"), ("n", 5)])
    for name, value in headers:
        name.encode("utf-8")
        assert value is None or isinstance(value, bytes)
    assert headers[0] == ("ok", b"\xff")  # binary values pass untouched


@pytest.mark.parametrize("limit", range(0, 12))
def test_cut_utf8_never_splits_a_character(limit):
    data = "a가😀b".encode()
    cut = cut_utf8(data, limit)
    assert len(cut) <= max(limit, 0)
    cut.decode("utf-8")
    assert data.startswith(cut)
    assert cut_utf8(b"\x80\x80\x80\x80\x80", 3) == b"\x80\x80\x80"  # not UTF-8: a plain cut


def test_header_text_is_capped_and_valid_utf8():
    value = header_text("가" * 2000 + "\udc80")
    assert len(value) <= DETAIL_MAX_BYTES
    value.decode("utf-8")
    assert header_text("x\udc80") == b"x\\udc80"


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
            render_result(Comment(rec(text.encode()), text), sample_prediction(), model=MODEL, now_ms=0,
                          max_bytes=limit),
            render_dead_letter(Rejection(rec(b"v" * 50_000, headers=many), TOO_LARGE, "d"), model_id="m",
                               now_ms=0, max_bytes=limit),
            render_dead_letter(Rejection(rec(b"v", headers=many, key=b"K" * 60_000), TOO_LARGE, "d"),
                               model_id="m", now_ms=0, max_bytes=limit),
            render_dead_letter(Rejection(rec(None, headers=[("a\udc80", None)]), TOMBSTONE, "d"), model_id="m",
                               now_ms=0, max_bytes=limit),
        ]
        for out in rendered:
            assert isinstance(out, Rendered) and out.size <= limit
            producer.produce("t", key=out.key, value=out.value, headers=out.headers)
        headers = [("abc", b"v" * 20), ("none", None)]
        exact = b"x" * (limit - record_size(b"key", b"", headers))
        producer.produce("t", key=b"key", value=exact, headers=headers)  # exactly the limit: accepted
        with pytest.raises(KafkaException, match="MSG_SIZE_TOO_LARGE"):
            producer.produce("t", key=b"key", value=exact + b"x", headers=headers)
    finally:
        producer.purge()
        producer.flush(0)
