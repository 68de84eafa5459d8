"""Issue 17: Schema Registry input and output against the real broker and a real registry (Apicurio, Confluent API).

Records are written by the stock confluent-kafka serializers; results are read back with the stock
deserializers. Each bad-record kind must be a dead letter with its own reason, holding the original
bytes. A registry stopped mid-stream and started again must cost no dead letter and no record.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest

from harness.clients import consume_all, produce
from harness.in_process import running_worker, worker_settings
from harness.probes import wait_for

pytestmark = pytest.mark.integration

pytest.importorskip("fastavro", reason="confluent-kafka[avro,json,protobuf,schemaregistry] is in the test extra")

from confluent_kafka.schema_registry import SchemaRegistryClient  # noqa: E402
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer  # noqa: E402
from confluent_kafka.schema_registry.json_schema import JSONSerializer  # noqa: E402
from confluent_kafka.schema_registry.protobuf import ProtobufDeserializer, ProtobufSerializer  # noqa: E402
from confluent_kafka.serialization import MessageField, SerializationContext  # noqa: E402
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory  # noqa: E402

from worker.kafka_io.schema_registry import result_message_class  # noqa: E402
from worker.wire.framing import frame  # noqa: E402
from worker.wire.result_schemas import AVRO_RESULT_SCHEMA  # noqa: E402

TEXTS = ["이 영화 정말 재밌다", "시간 낭비였다", "배우 연기가 좋았다", "별로였어요", "또 보고 싶다"]
AVRO_COMMENT = {"type": "record", "name": "Comment", "namespace": "test", "fields": [
    {"name": "id", "type": "long"},
    {"name": "comment", "type": {"type": "record", "name": "Body", "fields": [{"name": "body", "type": "string"}]}}]}
AVRO_NO_TEXT = {"type": "record", "name": "Counter", "namespace": "test", "fields": [{"name": "id", "type": "long"}]}
JSON_COMMENT = {"type": "object", "properties": {"id": {"type": "integer"}, "comment": {
    "type": "object", "properties": {"body": {"type": "string"}}, "required": ["body"]}}, "required": ["id", "comment"]}
JSON_NO_TEXT = {"type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"]}


def ctx(topic: str) -> SerializationContext:
    return SerializationContext(topic, MessageField.VALUE)


def protobuf_classes():
    """Comment {id, comment {body}} and Counter {id}, built at run time (no protoc here)."""
    F = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name="issue17_comment.proto", package="issue17", syntax="proto3")
    comment = file.message_type.add(name="Comment")
    comment.field.add(name="id", number=1, type=F.TYPE_INT64, label=F.LABEL_OPTIONAL)
    comment.field.add(name="comment", number=2, type=F.TYPE_MESSAGE, type_name=".issue17.Comment.Body",
                      label=F.LABEL_OPTIONAL)
    comment.nested_type.add(name="Body").field.add(name="body", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    counter = file.message_type.add(name="Counter")
    counter.field.add(name="id", number=1, type=F.TYPE_INT64, label=F.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return (message_factory.GetMessageClass(pool.FindMessageTypeByName("issue17.Comment")),
            message_factory.GetMessageClass(pool.FindMessageTypeByName("issue17.Counter")))


def writers(fmt: str, client: SchemaRegistryClient, topic: str):
    """(good record writer, a record of a schema without the text field, an undecodable framed value)."""
    if fmt == "avro":
        good = AvroSerializer(client, json.dumps(AVRO_COMMENT))
        no_text = AvroSerializer(client, json.dumps(AVRO_NO_TEXT))
        write = lambda i, text: good({"id": i, "comment": {"body": text}}, ctx(topic))  # noqa: E731
        missing = no_text({"id": 1}, ctx(topic + "-other"))
        return write, missing, lambda schema_id: frame(schema_id, b"\x02\x40ab")  # a string longer than the body
    if fmt == "json_schema":
        good = JSONSerializer(json.dumps(JSON_COMMENT), client)
        no_text = JSONSerializer(json.dumps(JSON_NO_TEXT), client)
        write = lambda i, text: good({"id": i, "comment": {"body": text}}, ctx(topic))  # noqa: E731
        missing = no_text({"id": 1}, ctx(topic + "-other"))
        return write, missing, lambda schema_id: frame(schema_id, b'{"id": 1}')  # fails its schema
    Comment, Counter = protobuf_classes()
    good = ProtobufSerializer(Comment, client, {"use.deprecated.format": False})
    no_text = ProtobufSerializer(Counter, client, {"use.deprecated.format": False})

    def write(i, text):
        message = Comment(id=i)
        message.comment.body = text
        return good(message, ctx(topic))

    missing = no_text(Counter(id=1), ctx(topic + "-other"))  # message index 1 of the same file
    return write, missing, lambda schema_id: frame(schema_id, b"\x12\x40ab", (0,))  # length past the end


def read_result(fmt: str, client: SchemaRegistryClient, topic: str, value: bytes) -> dict:
    if fmt == "avro":
        return AvroDeserializer(client)(value, ctx(topic))
    if fmt == "protobuf":
        message = ProtobufDeserializer(result_message_class(), {"use.deprecated.format": False})(value, ctx(topic))
        return {"label": message.label, "text": message.text, "score": message.score}
    schema = client.get_schema(int.from_bytes(value[1:5], "big"))  # the id resolves to the result schema
    assert json.loads(schema.schema_str)["title"] == "ClassificationResult"
    return json.loads(value[5:])


@pytest.mark.parametrize("fmt", ["avro", "json_schema", "protobuf"])
def test_schema_input_bad_records_and_results_read_by_stock_deserializers(
    fmt, kafka_bootstrap, topics, schema_registry, tiny_model_dir, tiny_classifier
):
    client = SchemaRegistryClient({"url": schema_registry.url})
    write, missing, undecodable = writers(fmt, client, topics["input"])
    good = [write(i, text) for i, text in enumerate(TEXTS)]
    good_id = int.from_bytes(good[0][1:5], "big")
    bad = {
        "no_schema_header": "그냥 글자".encode(),
        "unknown_schema": frame(987654, good[0][5:]),
        "undecodable_body": undecodable(good_id),
        "missing_text": missing,
    }
    records = [(f"good-{i}".encode(), v) for i, v in enumerate(good)] + [(k.encode(), v) for k, v in bad.items()]
    produce(kafka_bootstrap, topics["input"], records)
    settings = worker_settings(kafka_bootstrap, topics, tiny_model_dir, input_format=fmt, output_format=fmt,
                               text_field="comment.body", schema_registry_url=schema_registry.url)
    with running_worker(settings, tiny_classifier):
        results = consume_all(kafka_bootstrap, topics["output"], expected=len(good), timeout_s=120, idle_s=3)
        dead = consume_all(kafka_bootstrap, topics["dlq"], expected=len(bad), timeout_s=60, idle_s=3)
    assert sorted(r.key for r in results) == sorted(k for k, _ in records[: len(good)])
    for record in results:
        result = read_result(fmt, client, topics["output"], record.value)
        assert result["text"] in TEXTS and result["label"] and 0 <= result["score"] <= 1
    assert {d.key.decode(): d.headers["worker.error.kind"] for d in dead} == {k: k for k in bad}
    assert {d.key.decode(): d.value for d in dead} == bad  # the original bytes


def test_registry_stopped_mid_stream_costs_no_dead_letter_and_no_record(
    kafka_bootstrap, topics, schema_registry, tiny_model_dir, tiny_classifier, fault_report
):
    """The worker knows schema v1 when the registry stops: v1 records go on being classified. A v2 record
    (registered, never seen by the worker) waits, with everything after it, until the registry is back.
    The registry keeps its schemas across the restart (H2 in a file), so ids do not change."""
    client = SchemaRegistryClient({"url": schema_registry.url})
    v1 = AvroSerializer(client, json.dumps(AVRO_COMMENT))
    v2_schema = {**AVRO_COMMENT, "fields": [*AVRO_COMMENT["fields"], {"name": "lang", "type": "string", "default": "ko"}]}
    v2 = AvroSerializer(client, json.dumps(v2_schema))
    topic = topics["input"]

    def batch(name, serializer, n):
        return [(f"{name}-{i}".encode(), serializer({"id": i, "comment": {"body": TEXTS[i % 5]}, "lang": "ko"},
                                                    ctx(topic))) for i in range(n)]

    first, known, unseen = batch("first", v1, 5), batch("known", v1, 5), batch("unseen", v2, 5) + batch("after", v1, 3)
    settings = worker_settings(kafka_bootstrap, topics, tiny_model_dir, input_format="avro", output_format="avro",
                               text_field="comment.body", schema_registry_url=schema_registry.url,
                               schema_registry={"timeout": "2", "max.retries": "0"})
    out = topics["output"]
    with running_worker(settings, tiny_classifier) as worker:
        produce(kafka_bootstrap, topic, first)
        consume_all(kafka_bootstrap, out, expected=5, timeout_s=120, idle_s=1)
        schema_registry.stop_within(60)
        produce(kafka_bootstrap, topic, known)
        consume_all(kafka_bootstrap, out, expected=10, timeout_s=120, idle_s=1)  # known schema: no registry needed
        produce(kafka_bootstrap, topic, unseen)
        wait_for(lambda: "registry_unreachable" in worker.health.blocked, 60, message="the worker to wait")
        assert not worker.health.ready()[0]
        assert worker.metrics.blocked.labels(reason="registry_unreachable")._value.get() == 1
        held = len(worker._held)
        schema_registry.start()
        wait_for(lambda: "registry_unreachable" not in worker.health.blocked, 60, message="the worker to go on")
        results = consume_all(kafka_bootstrap, out, expected=len(first + known + unseen), timeout_s=120, idle_s=3)
    dead = consume_all(kafka_bootstrap, topics["dlq"], timeout_s=10, idle_s=2)
    counts = Counter(r.key for r in results)
    fault_report("registry stopped mid-stream", held=held, results=len(results), dead_letters=len(dead))
    assert dead == []
    assert set(counts) == {k for k, _ in first + known + unseen}  # nothing lost
    fresh = SchemaRegistryClient({"url": schema_registry.url})
    assert AvroDeserializer(fresh)(results[-1].value, ctx(out))["label"]  # result schema id survived the restart
    assert json.loads(fresh.get_latest_version(f"{out}-value").schema.schema_str)["name"] == AVRO_RESULT_SCHEMA["name"]
