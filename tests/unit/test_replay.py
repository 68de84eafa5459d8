"""worker replay: reading dead letters back, the selection, and a replay against the fake port."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from tests.fakes.replay_clients import FakeReplayKafka
from worker.cli import main
from worker.errors import EXIT_UNFINISHED, ConfigError
from worker.policy import ClientError, ErrorKind
from worker.replay import (
    CUT_COPY,
    NO_ORIGINAL,
    NOT_A_DEAD_LETTER,
    NOT_SELECTED,
    OTHER_SOURCE,
    ReplayRun,
    Selection,
    describe,
    judge,
    original,
    parse_time,
)
from worker.wire.dead_letters import (
    UNREADABLE_HEADERS_DETAIL,
    minimal_dead_letter,
    read_dead_letter,
    render_dead_letter,
)
from worker.wire.types import InputRecord, Rejection

NOW_MS = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc).timestamp() * 1000
BINARY_KEY = bytes(range(256))
ORIGINAL_HEADERS = [
    ("trace", b"\x00\xff\xfe binary"),
    ("empty", b""),
    ("null", None),
    ("worker.route", b"review"),  # the original's own worker.* header stays with the original
    ("trace", b"second value, same name"),
]


def dead_letter(
    value: bytes | None = b'{"body": "\xec\x98\x81\xed\x99\x94"}',
    key: bytes | None = BINARY_KEY,
    headers=None,
    reason: str = "missing_text",
    partition: int = 1,
    offset: int = 7,
    detail: str = "JSON object has no field 'text'",
    max_bytes: int = 960_000,
    now_ms: float = NOW_MS,
    dlq_offset: int = 0,
) -> InputRecord:
    """A dead letter as the worker renders it, read back the way the Kafka adapter hands it over."""
    source = InputRecord("comments", partition, offset, key, value, list(ORIGINAL_HEADERS if headers is None else headers))
    out = render_dead_letter(Rejection(source, reason, detail), model_id="m", now_ms=now_ms, max_bytes=max_bytes)
    return InputRecord("comments-dlq", 0, dlq_offset, out.key, out.value, out.headers, int(now_ms) + 5)


def test_the_original_comes_back_byte_for_byte():
    letter = dead_letter()
    view = read_dead_letter(letter.headers)
    assert (view.reason, view.source_topic, view.source_partition, view.source_offset) == ("missing_text", "comments", 1, 7)
    assert view.failed_at == "2026-12-01T12:00:00.000+00:00"
    assert view.cut == () and not view.minimal
    key, value, headers = original(letter, view)
    assert key == BINARY_KEY
    assert value == b'{"body": "\xec\x98\x81\xed\x99\x94"}'
    assert headers == ORIGINAL_HEADERS
    assert judge(letter, view, Selection()) is None


def test_a_tombstone_and_a_record_without_key_or_headers_come_back_as_they_were():
    letter = dead_letter(value=None, key=None, headers=[], reason="tombstone")
    view = read_dead_letter(letter.headers)
    assert original(letter, view) == (None, None, [])
    assert judge(letter, view, Selection()) is None


@pytest.mark.parametrize(
    "kwargs, cut",
    [
        ({"value": b"v" * 5_000}, ("value",)),  # the value is cut first
        ({"value": b"v" * 100, "headers": [("h", b"x" * 5_000)]}, ("value", "headers")),
        ({"value": b"v", "headers": [], "key": b"k" * 5_000}, ("value", "headers", "key")),
    ],
)
def test_cut_copies_are_refused_unless_told(kwargs, cut):
    letter = dead_letter(reason="too_large", max_bytes=2_000, **kwargs)
    view = read_dead_letter(letter.headers)
    assert view.cut == cut
    assert judge(letter, view, Selection()) == CUT_COPY
    assert judge(letter, view, Selection(include_cut=True)) is None


def test_a_dead_letter_of_unreadable_headers_counts_as_cut():
    letter = dead_letter(headers=[], reason="decode_error", detail=UNREADABLE_HEADERS_DETAIL + " (a header name ...)")
    assert read_dead_letter(letter.headers).cut == ("headers",)


def test_the_unreadable_headers_detail_is_the_adapters():
    from worker.kafka_io.clients import _to_record

    class Message:
        def timestamp(self):
            return (1, 5)

        def headers(self):
            raise SystemError("a name that is not UTF-8")

        def topic(self):
            return "t"

        def partition(self):
            return 0

        def offset(self):
            return 0

        def key(self):
            return None

        def value(self):
            return b"x"

    assert _to_record(Message()).unreadable.startswith(UNREADABLE_HEADERS_DETAIL)


def test_minimal_dead_letters_and_other_records_are_skipped():
    rendered = minimal_dead_letter(Rejection(InputRecord("comments", 2, 9, b"k", b"v"), "encode_error", "x"))
    letter = InputRecord("comments-dlq", 0, 0, rendered.key, rendered.value, rendered.headers, 1)
    view = read_dead_letter(letter.headers)
    assert view.minimal and view.source_partition == 2
    assert judge(letter, view, Selection()) == NO_ORIGINAL
    stray = InputRecord("comments-dlq", 0, 1, b"k", b"v", [("worker.source.topic", b"x")], 1)
    assert judge(stray, read_dead_letter(stray.headers), Selection()) == NOT_A_DEAD_LETTER


def test_filters_by_reason_source_partition_time_and_source_topic():
    letter = dead_letter(reason="missing_text", partition=1)
    view = read_dead_letter(letter.headers)
    at = datetime.fromtimestamp(NOW_MS / 1000, timezone.utc)
    second = timedelta(seconds=1)
    assert judge(letter, view, Selection(reasons=frozenset({"missing_text", "invalid_json"}))) is None
    assert judge(letter, view, Selection(reasons=frozenset({"invalid_json"}))) == NOT_SELECTED
    assert judge(letter, view, Selection(partitions=frozenset({0, 1}))) is None
    assert judge(letter, view, Selection(partitions=frozenset({0}))) == NOT_SELECTED
    assert judge(letter, view, Selection(since=at, until=at + second)) is None  # since inclusive
    assert judge(letter, view, Selection(until=at)) == NOT_SELECTED  # until exclusive
    assert judge(letter, view, Selection(since=at + second)) == NOT_SELECTED
    assert judge(letter, view, Selection(source_topic="comments")) is None
    assert judge(letter, view, Selection(source_topic="other")) == OTHER_SOURCE


def test_time_filters_fall_back_to_the_dead_letters_timestamp():
    rendered = minimal_dead_letter(Rejection(InputRecord("comments", 0, 1, None, None), "encode_error", "x"))
    letter = InputRecord("comments-dlq", 0, 0, None, None, rendered.headers, int(NOW_MS))
    at = datetime.fromtimestamp(NOW_MS / 1000, timezone.utc)
    assert judge(letter, read_dead_letter(letter.headers), Selection(since=at)) == NO_ORIGINAL  # selected, no original
    assert judge(letter, read_dead_letter(letter.headers), Selection(until=at)) == NOT_SELECTED


def test_parse_time():
    now = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
    assert parse_time("30m", now) == now - timedelta(minutes=30)
    assert parse_time("2h", now) == now - timedelta(hours=2)
    assert parse_time("1.5d", now) == now - timedelta(hours=36)
    assert parse_time("2026-12-01T08:00:00Z", now) == datetime(2026, 12, 1, 8, tzinfo=timezone.utc)
    assert parse_time("2026-12-01T08:00", now) == datetime(2026, 12, 1, 8, tzinfo=timezone.utc)  # no zone: UTC
    assert parse_time("2026-12-01T09:00+09:00", now) == datetime(2026, 12, 1, 0, tzinfo=timezone.utc)
    with pytest.raises(ValueError, match="not an ISO 8601 time"):
        parse_time("yesterday", now)


def _dlq(*letters: InputRecord) -> FakeReplayKafka:
    records = [InputRecord(r.topic, 0, i, r.key, r.value, r.headers, r.timestamp_ms) for i, r in enumerate(letters)]
    return FakeReplayKafka(topics={"comments-dlq": {0: records}, "comments": {0: [], 1: [], 2: []}})


def _run(kafka: FakeReplayKafka, selection: Selection | None = None, **kwargs) -> tuple:
    selection = selection or Selection(source_topic="comments")
    run = ReplayRun(kafka, "comments-dlq", "comments", selection, progress=_Sink(), **kwargs)
    return run.run()


class _Sink:
    def write(self, text: str) -> None:
        pass

    def flush(self) -> None:
        pass


def test_a_replay_writes_the_originals_into_their_partitions_and_leaves_the_dead_letters():
    kafka = _dlq(
        dead_letter(partition=2, offset=3),
        dead_letter(reason="invalid_utf8", value=b"\xff\xfe", partition=0),
        dead_letter(reason="too_large", value=b"v" * 5_000, max_bytes=2_000),
    )
    before = list(kafka.topics["comments-dlq"][0])
    code, tally = _run(kafka)
    assert code == 0
    assert [(p.topic, p.partition, p.key, p.value, p.headers) for p in kafka.produced] == [
        ("comments", 2, BINARY_KEY, b'{"body": "\xec\x98\x81\xed\x99\x94"}', ORIGINAL_HEADERS),
        ("comments", 0, BINARY_KEY, b"\xff\xfe", ORIGINAL_HEADERS),
    ]
    assert (tally.read, tally.replayed, tally.delivered, tally.skipped[CUT_COPY]) == (3, 2, 2, 1)
    assert kafka.topics["comments-dlq"][0] == before and kafka.closed
    (line,) = describe(tally, "comments", dry_run=False)
    assert line == ("worker replay: replayed 2 of 3 dead letters read to comments; "
                    "skipped 1 cut copy (--include-cut replays it); delivered 2")


def test_a_dry_run_produces_nothing_and_says_what_would_go():
    kafka = _dlq(dead_letter(), dead_letter(reason="invalid_utf8", value=b"\xff"), dead_letter(partition=0))
    code, tally = _run(kafka, dry_run=True)
    assert code == 0 and kafka.produced == [] and kafka.producers_made == 0
    lines = describe(tally, "comments", dry_run=True)
    assert lines[0] == "dry run: nothing was produced"
    assert any(line.split() == ["missing_text", "1", "1"] for line in lines)
    assert any(line.split() == ["invalid_utf8", "1", "1"] for line in lines)
    assert sum(line.startswith("sample: dead letter 0@") for line in lines) == 3
    assert lines[-1] == "worker replay: would replay 3 of 3 dead letters read to comments"


def test_the_limit_stops_the_replay():
    kafka = _dlq(*(dead_letter(offset=i) for i in range(5)))
    code, tally = _run(kafka, Selection(limit=2))
    assert code == 0 and len(kafka.produced) == 2 and tally.stopped_at_limit
    assert "(stopped at --limit)" in describe(tally, "comments", dry_run=False)[-1]


def test_a_failed_delivery_stops_the_replay_and_says_what_was_delivered():
    kafka = _dlq(*(dead_letter(offset=i) for i in range(3)))
    kafka.fail_tokens[(0, 1)] = ClientError("MSG_SIZE_TOO_LARGE", "Broker: Message size too large", ErrorKind.RECORD)
    code, tally = _run(kafka)
    assert code == EXIT_UNFINISHED
    assert (tally.replayed, tally.delivered, tally.failed) == (3, 2, 1)
    assert tally.first_failure.startswith("dead letter 0@1: ")


def test_a_stalled_reader_ends_the_replay():
    clock = iter(range(0, 1000, 10)).__next__
    kafka = _dlq(dead_letter())
    kafka.stall = True
    code, tally = _run(kafka, timeout_s=30, clock=clock)
    assert code == EXIT_UNFINISHED and "stalled" in tally.first_failure


def test_missing_topics_are_settings_errors():
    with pytest.raises(ConfigError, match="dead-letter topic 'comments-dlq' does not exist"):
        _run(FakeReplayKafka(topics={"comments": {0: []}}))
    with pytest.raises(ConfigError, match="destination topic 'comments' does not exist"):
        _run(FakeReplayKafka(topics={"comments-dlq": {0: []}}))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["replay", "--reason", "nope"], "unknown reason 'nope'"),
        (["replay", "--limit", "0"], "must be at least 1"),
        (["replay", "--partition", "-1"], "must be at least 0"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["replay", "--since", "yesterday"], "worker: error: worker replay: --since/--until: not an ISO 8601 time"),
        (["replay", "--since", "1h", "--until", "2h"], "worker: error: worker replay: --since must be before --until"),
        (["replay", "--to", "comments-dlq"], "worker: error: worker replay: --to comments-dlq is the dead-letter topic"),
    ],
)
def test_bad_times_and_destinations_exit_2_before_any_kafka_call(argv, message, capsys, monkeypatch):
    monkeypatch.setenv("WORKER_BOOTSTRAP_SERVERS", "127.0.0.1:1")  # nothing there: any Kafka call would hang
    assert main(argv) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(message)


def test_an_unreachable_cluster_ends_the_replay_with_exit_3_and_one_line(capsys, monkeypatch):
    monkeypatch.setenv("WORKER_BOOTSTRAP_SERVERS", "127.0.0.1:1")  # nothing listens there
    assert main(["replay", "--timeout", "2"]) == EXIT_UNFINISHED
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("worker: error: the replay did not finish: list_topics failed: ")
