"""The loop with a Schema Registry format (fake registry, fake Kafka): bad records and a registry outage."""

from __future__ import annotations

import json

from tests.fakes.schema_registry import FakeSchemas, framed
from tests.unit.test_loop import drive, finish, header, keys
from tests.unit.test_loop import make_worker as make_loop_worker
from worker.wire.framing import parse_frame

T = "in"


def make_worker(schemas, **overrides):
    values = dict(input_format="avro", text_field="comment.body", schema_registry_url="mock://unit")
    values.update(overrides)
    return make_loop_worker(schemas=schemas, **values)


def comment(text):
    return framed(1, {"id": 7, "comment": {"body": text}})


def test_each_bad_record_kind_is_a_dead_letter_with_its_own_reason():
    worker, fake = make_worker(FakeSchemas({1: {"comment"}, 2: {"id"}}))
    fake.feed(0, [comment("좋다"), "평문".encode(), framed(99, {"comment": {"body": "x"}}), b"\x00\x00\x00\x00\x01{oops",
                  framed(2, {"id": 1}), comment("별로")])
    finish(worker, fake)
    assert keys(fake.visible("out")) == [b"0-0", b"0-5"]
    dead = fake.visible("dlq")
    assert [header(d, "worker.error.kind") for d in dead] == [
        b"no_schema_header", b"unknown_schema", b"undecodable_body", b"missing_text"]
    assert dead[2].value == b"\x00\x00\x00\x00\x01{oops"  # the original bytes
    result = json.loads(fake.visible("out")[0].value)
    assert result["input"] == {"id": 7, "comment": {"body": "좋다"}} and result["text"] == "좋다"


def test_results_are_encoded_with_the_result_schema_of_each_topic():
    schemas = FakeSchemas({1: {"comment"}})
    worker, fake = make_worker(schemas, output_format="avro")
    fake.feed(0, [comment("좋다")])
    finish(worker, fake)
    value = fake.visible("out")[0].value
    assert parse_frame(value, "avro").schema_id == schemas.result_ids["out"]


def test_an_unreachable_registry_holds_records_in_order_and_dead_letters_nothing():
    schemas = FakeSchemas({1: {"comment"}, 2: {"comment"}})
    worker, fake = make_worker(schemas)
    fake.feed(0, [comment("첫째")])
    drive(worker, fake)
    schemas.reachable = False  # schema 1 is known; schema 2 is not yet
    fake.feed(0, [comment("둘째"), framed(2, {"comment": {"body": "셋째"}}), comment("넷째")])
    drive(worker, fake, until=lambda: "registry_unreachable" in worker.health.blocked and len(fake.visible("out")) == 2)
    for _ in range(50):
        worker.step()
    assert keys(fake.visible("out")) == [b"0-0", b"0-1"]  # nothing overtakes the held record
    assert fake.visible("dlq") == []
    assert worker.metrics.blocked.labels(reason="registry_unreachable")._value.get() == 1
    assert not worker.health.ready()[0]
    assert fake.committed.get((T, 0), 0) <= 2
    schemas.reachable = True
    worker._held_retry_at = 0  # due now (it is retried every REGISTRY_RETRY_S)
    finish(worker, fake)
    assert keys(fake.visible("out")) == [b"0-0", b"0-1", b"0-2", b"0-3"] and fake.visible("dlq") == []
    assert fake.committed == {(T, 0): 4}
    assert "registry_unreachable" not in worker.health.blocked
    assert worker.metrics.blocked.labels(reason="registry_unreachable")._value.get() == 0


def test_held_records_of_a_revoked_partition_are_left_to_the_next_owner():
    schemas = FakeSchemas({1: {"comment"}})
    schemas.reachable = False
    worker, fake = make_worker(schemas)
    fake.feed(0, [comment("하나"), comment("둘")])
    drive(worker, fake, until=lambda: len(worker._held) == 2)
    fake.revoke([(T, 0)])
    assert worker._held == [] and fake.visible("dlq") == [] and fake.committed.get((T, 0)) is None
