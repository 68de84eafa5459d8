"""The dead-letter record and its worker.* headers (worker.wire.dead_letters)."""

import pytest

from tests.unit.wire.samples import rec
from worker.wire.dead_letters import render_dead_letter
from worker.wire.sizes import DETAIL_MAX_BYTES, SIZE_MARGIN_BYTES
from worker.wire.types import DECODE_ERROR, INVALID_UTF8, TOKENIZE_ERROR, TOMBSTONE, TOO_LARGE, InputRecord, Rejection


def _dead(record, reason=INVALID_UTF8, detail="value is not UTF-8", max_bytes=100_000, reserve_bytes=0):
    out = render_dead_letter(Rejection(record, reason, detail), model_id="my-model", now_ms=0,
                             max_bytes=max_bytes, reserve_bytes=reserve_bytes)
    assert out.reason == reason
    assert out.size <= max_bytes - reserve_bytes - SIZE_MARGIN_BYTES
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
    tombstone = render_dead_letter(Rejection(rec(b"x", headers=original), TOMBSTONE, "d"), model_id="m", now_ms=0,
                                   max_bytes=100_000)
    assert tombstone.headers[:2] == original


def test_tombstone_dead_letter_stays_null():
    out, _ = _dead(rec(None), TOMBSTONE, "null")
    assert out.value is None


def test_oversized_dead_letter_cuts_the_value_first():
    value = "가".encode() * 10_000
    out, named = _dead(rec(value, headers=[("h", b"v")]), TOO_LARGE, max_bytes=20_000)
    assert named["worker.original.value.bytes"] == b"30000"
    assert value.startswith(out.value) and len(out.value) > 19_000
    out.value.decode("utf-8")  # cut on a character boundary
    assert named["h"] == b"v" and out.key == b"k1"


def test_oversized_dead_letter_then_drops_headers_then_cuts_the_key():
    headers = [(f"h{i}", b"v" * 100) for i in range(300)]
    out, named = _dead(rec(b"v" * 50_000, headers=headers), TOO_LARGE, max_bytes=20_000)
    assert "h0" not in named and named["worker.original.headers.count"] == b"300"
    assert int(named["worker.original.headers.bytes"]) > 30_000
    assert out.key == b"k1" and len(out.value) > 15_000
    out, named = _dead(rec(b"v" * 50_000, headers=headers, key=b"K" * 60_000), TOO_LARGE, max_bytes=20_000)
    assert named["worker.original.key.bytes"] == b"60000" and named["worker.original.value.bytes"] == b"50000"
    assert out.value == b"" and out.key == b"K" * len(out.key) and len(out.key) > 15_000


def test_dead_letter_detail_is_capped_and_valid():
    out, named = _dead(rec(b"x"), TOKENIZE_ERROR, "boom \udc80 " + "x" * 10_000)
    assert len(named["worker.error.reason"]) <= DETAIL_MAX_BYTES
    named["worker.error.reason"].decode("utf-8")


def test_dead_letter_never_raises():
    class Evil:
        def __str__(self):
            raise RuntimeError("no")

    record = InputRecord(Evil(), 0, 1, b"k", b"v", [])  # type: ignore[arg-type]
    out = render_dead_letter(Rejection(record, DECODE_ERROR, Evil()), model_id="m", now_ms=1e30,  # type: ignore[arg-type]
                             max_bytes=10_000)
    assert out.reason == DECODE_ERROR and out.key is None and out.value is None
    assert dict(out.headers)["worker.error.kind"] == b"decode_error"
