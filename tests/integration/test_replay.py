"""Issue 17 part 5: `worker replay` against the real broker.

A worker with a wrong WORKER_TEXT_FIELD dead-letters every JSON comment (missing_text); an invalid
UTF-8 record and a too-large one (a cut copy) join them. A dry run changes nothing; the replay, per
source partition and for missing_text only, writes the originals back byte for byte into the
partitions they came from; a worker with the setting fixed then classifies exactly those records.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest

from harness.clients import consume_all, produce
from harness.offsets import end_offsets
from harness.paths import REPO
from harness.processes import start_worker_process, terminate, worker_env
from harness.topics import fresh_topics

pytestmark = pytest.mark.integration

TEXTS = ["이 영화 정말 재밌다!", "연기도 별로고 스토리도 엉망이네", "배우들 연기력이 대단하다", "시간 낭비했다 다신 안 봄",
         "ㅋㅋㅋㅋ 최고", "그냥 그랬다", "두 번 봤어요", "별점 하나도 아깝다"]
MAX_BYTES = 10_000  # WORKER_MAX_MESSAGE_BYTES in both phases: the 12 kB record is a cut copy


def raw_records(bootstrap: str, topic: str, starts: dict[int, int], ends: dict[int, int]) -> list[tuple]:
    """(partition, key, value, headers as read) of the offsets starts..ends, without a group."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"read-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False})
    wanted = {p: e for p, e in ends.items() if e > starts.get(p, 0)}
    consumer.assign([TopicPartition(topic, p, starts.get(p, 0)) for p in wanted])
    out = []
    try:
        while wanted:
            for message in consumer.consume(100, 10):
                assert message.error() is None, message.error()
                out.append((message.partition(), message.key(), message.value(), message.headers() or []))
                if message.offset() >= wanted.get(message.partition(), 0) - 1:
                    wanted.pop(message.partition(), None)
    finally:
        consumer.close()
    return out


def replay(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "worker.cli", "replay", *args], env=env, cwd=str(REPO),
                          capture_output=True, text=True, timeout=120, check=False)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def test_replay_classifies_dead_letters_again_and_a_dry_run_changes_nothing(kafka_bootstrap, tiny_model_dir, tmp_path):
    from confluent_kafka.admin import AdminClient

    topics = fresh_topics(kafka_bootstrap, partitions=2)
    comments = [
        (b"\x00key-%d\xff" % i, json.dumps({"text": text, "n": i}, ensure_ascii=False).encode(),
         [("trace", bytes([i, 0, 255])), ("empty", b""), ("null", None)])
        for i, text in enumerate(TEXTS)
    ]
    produce(kafka_bootstrap, topics["input"], [
        *comments,
        (b"bad", b"\xff\xfe not utf-8", []),
        (b"big", json.dumps({"text": "가" * 4_000}).encode(), []),  # 12 kB: too_large, a cut copy
    ])
    env = worker_env(kafka_bootstrap, topics, tiny_model_dir, WORKER_INPUT_FORMAT="json",
                     WORKER_MAX_MESSAGE_BYTES=str(MAX_BYTES), WORKER_TEXT_FIELD="body")
    log = tmp_path / "worker.log"

    # 1. The wrong text field: everything is dead-lettered.
    process = start_worker_process(env, log)
    try:
        letters = consume_all(kafka_bootstrap, topics["dlq"], expected=len(comments) + 2, timeout_s=420)
    finally:
        assert terminate(process)[0] == 0, log.read_text()[-3000:]
    kinds = sorted(r.headers["worker.error.kind"] for r in letters)
    assert kinds == sorted(["missing_text"] * len(comments) + ["invalid_utf8", "too_large"]), kinds
    by_key = {key: partition for partition, key, _, _ in raw_records(
        kafka_bootstrap, topics["input"], {}, end_offsets(kafka_bootstrap, topics["input"]))}
    input_end, dlq_end = end_offsets(kafka_bootstrap, topics["input"]), end_offsets(kafka_bootstrap, topics["dlq"])

    # 2. A dry run: a summary, and nothing written anywhere, no group left behind.
    dry = replay(env, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"worker replay: would replay {len(comments) + 1} of {len(comments) + 2} dead letters read to " \
           f"{topics['input']}; skipped 1 cut copy (--include-cut replays it)" in dry.stdout, dry.stdout
    assert "dry run: nothing was produced" in dry.stdout and "sample: dead letter 0@0 " in dry.stdout
    assert end_offsets(kafka_bootstrap, topics["input"]) == input_end
    assert end_offsets(kafka_bootstrap, topics["dlq"]) == dlq_end
    assert sum(end_offsets(kafka_bootstrap, topics["output"]).values()) == 0
    groups = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_consumer_groups(request_timeout=10).result(15)
    assert not [g.group_id for g in groups.valid if g.group_id.startswith("koelectra-worker-replay-")]

    # 3. The replay, missing_text only, one source partition at a time.
    for partition in (0, 1):
        done = replay(env, "--reason", "missing_text", "--partition", str(partition))
        expected = sum(1 for key, _, _ in comments if by_key[key] == partition)
        assert done.returncode == 0, done.stderr
        assert f"replayed {expected} of {len(comments) + 2} dead letters" in done.stdout, done.stdout
        assert f"delivered {expected}" in done.stdout
    assert end_offsets(kafka_bootstrap, topics["dlq"]) == dlq_end  # the dead letters are all still there
    replayed = raw_records(kafka_bootstrap, topics["input"], input_end, end_offsets(kafka_bootstrap, topics["input"]))
    assert sorted((by_key[k], k, v, h) for k, v, h in comments) == sorted(replayed)  # byte for byte, same partition

    # 4. The text field fixed: the replayed records, and only they, are classified.
    env["WORKER_TEXT_FIELD"] = "text"
    process = start_worker_process(env, log)
    try:
        results = consume_all(kafka_bootstrap, topics["output"], expected=len(comments), timeout_s=420)
    finally:
        assert terminate(process)[0] == 0, log.read_text()[-3000:]
    assert sorted(r.key for r in results) == sorted(key for key, _, _ in comments)
    for result in results:
        value = result.json()
        assert value["source"]["offset"] >= input_end[value["source"]["partition"]]  # a replayed record
        assert value["input"] == json.loads({k: v for k, v, _ in comments}[result.key])
    assert end_offsets(kafka_bootstrap, topics["dlq"]) == dlq_end  # nothing dead-lettered again
