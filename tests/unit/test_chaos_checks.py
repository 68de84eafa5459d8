"""The chaos run's checks (benchmarks/chaos.py) on hand-made topic contents: what counts as lost, duplicated,
out of key order, and which worker exits are explained."""

from __future__ import annotations

import json
import signal

from benchmarks.chaos import KEYS, ModeReport, explained, verify
from harness.clients import OutputRecord


def result(key: int, seq: int, partition: int = 0, offset: int = 0) -> OutputRecord:
    value = json.dumps({"input": {"text": "t", "seq": seq}, "label": "positive", "score": 0.5}).encode()
    return OutputRecord(f"key-{key:03d}".encode(), value, {}, partition, offset)


def dead(key: int, seq: int) -> OutputRecord:
    return OutputRecord(f"key-{key:03d}".encode(), json.dumps({"text": "", "seq": seq}).encode(), {}, 0, 0)


def every_input(records: int) -> list[OutputRecord]:
    return [result(i % KEYS, i // KEYS, offset=i) for i in range(records)]


def test_every_input_once_is_clean():
    report = ModeReport("exactly_once", 2 * KEYS)
    verify(report, every_input(2 * KEYS), [], 2 * KEYS)
    assert (report.missing, report.duplicates, report.skips_ahead, report.keys_on_several_partitions) == (0, 0, 0, 0)


def test_a_dead_letter_accounts_for_its_input_and_a_missing_one_is_counted():
    results = every_input(2 * KEYS)
    report = ModeReport("at_least_once", 2 * KEYS)
    verify(report, results[1:], [dead(0, 0)], 2 * KEYS)
    assert report.missing == 0
    report = ModeReport("at_least_once", 2 * KEYS)
    verify(report, results[2:], [], 2 * KEYS)
    assert report.missing == 2


def test_a_replay_repeats_without_skipping_but_a_jump_ahead_is_out_of_order():
    replayed = [result(0, 0, offset=0), result(0, 1, offset=1), result(0, 0, offset=2), result(0, 1, offset=3),
                result(0, 2, offset=4)]
    report = ModeReport("at_least_once", 3 * KEYS)
    verify(report, replayed, [], 3)
    assert (report.duplicates, report.skips_ahead) == (2, 0)
    report = ModeReport("at_least_once", 3)
    verify(report, [result(0, 0, offset=0), result(0, 2, offset=1), result(0, 1, offset=2)], [], 3)
    assert report.skips_ahead == 1 and report.first_skip.startswith("key-000: seq 2")


def test_a_key_on_two_output_partitions_is_reported():
    report = ModeReport("at_least_once", 2)
    verify(report, [result(0, 0, partition=0), result(0, 1, partition=1, offset=1)], [], 1)
    assert report.keys_on_several_partitions == 1


def test_which_exits_are_explained():
    assert explained(0, "sigterm") and explained(3, "final") and not explained(4, "sigterm")
    assert explained(-signal.SIGKILL, "sigkill") and not explained(0, "sigkill")
    assert explained(4, "own") and not explained(1, "own") and not explained(None, "final")
    assert explained(-signal.SIGTERM, "sigterm", started=False) and not explained(-signal.SIGTERM, "sigterm")
