"""The Schema Registry adapter against the client's mock:// registry (and an address where nothing answers)."""

from __future__ import annotations

import json
import uuid

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.json_schema import JSONSerializer
from confluent_kafka.schema_registry.protobuf import ProtobufDeserializer, ProtobufSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from worker.kafka_io.schema_registry import RegistrySchemas, client_config, result_message_class
from worker.settings import Settings
from worker.wire.framing import RegistryUnreachable, UndecodableBody, UnknownSchema, frame, parse_frame

AVRO_COMMENT = json.dumps({"type": "record", "name": "Comment", "fields": [
    {"name": "id", "type": "long"},
    {"name": "comment", "type": {"type": "record", "name": "Body", "fields": [{"name": "body", "type": "string"}]}}]})


@pytest.fixture
def url():
    return f"mock://{uuid.uuid4().hex}"  # the mock client keeps its schemas per URL


def ctx(topic):
    return SerializationContext(topic, MessageField.VALUE)


def schemas(url, output_format="json"):
    return RegistrySchemas(Settings(schema_registry_url=url, input_format="avro", output_format=output_format))


def test_client_properties_pass_through_with_numbers_as_numbers(monkeypatch):
    monkeypatch.setenv("WORKER_SCHEMA_REGISTRY_URL", "http://registry:8080/apis/ccompat/v7")
    monkeypatch.setenv("WORKER_SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO", "me:s3cret")
    monkeypatch.setenv("WORKER_SCHEMA_REGISTRY_TIMEOUT", "2")
    monkeypatch.setenv("WORKER_INPUT_FORMAT", "avro")
    settings = Settings()
    config = client_config(settings)
    assert config["url"] == "http://registry:8080/apis/ccompat/v7"
    assert config["basic.auth.user.info"] == "me:s3cret" and config["timeout"] == 2
    assert "s3cret" not in json.dumps(settings.masked_dump(), default=str)


def test_avro_records_decode_with_the_writers_schema(url):
    port = schemas(url)  # the mock registry lives in its client: the tests' serializers share it
    value = AvroSerializer(port.client, AVRO_COMMENT)({"id": 1, "comment": {"body": "재밌다"}}, ctx("in"))
    assert port.decode("avro", parse_frame(value, "avro")) == {"id": 1, "comment": {"body": "재밌다"}}


def test_unknown_ids_bodies_that_do_not_decode_and_wrong_schema_types(url):
    port = schemas(url)
    value = AvroSerializer(port.client, AVRO_COMMENT)({"id": 1, "comment": {"body": "x"}}, ctx("in"))
    schema_id = parse_frame(value, "avro").schema_id
    with pytest.raises(UnknownSchema):
        port.decode("avro", parse_frame(frame(schema_id + 1000, b"\x02"), "avro"))
    with pytest.raises(UndecodableBody):
        port.decode("avro", parse_frame(frame(schema_id, b"\x02"), "avro"))  # cut short
    with pytest.raises(UndecodableBody):
        port.decode("avro", parse_frame(value + b"\x00", "avro"))  # bytes left over
    with pytest.raises(UnknownSchema, match="AVRO schema, not JSON"):
        port.decode("json_schema", parse_frame(value, "json_schema"))


def test_json_schema_bodies_must_validate(url):
    port = schemas(url)
    serializer = JSONSerializer(json.dumps({"type": "object", "properties": {"text": {"type": "string"}},
                                            "required": ["text"]}), port.client)
    value = serializer({"text": "좋아요"}, ctx("in"))
    assert port.decode("json_schema", parse_frame(value, "json_schema")) == {"text": "좋아요"}
    schema_id = parse_frame(value, "json_schema").schema_id
    for body in (b"{not json", b'{"text": 3}'):
        with pytest.raises(UndecodableBody):
            port.decode("json_schema", parse_frame(frame(schema_id, body), "json_schema"))


def comment_class():
    F = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name="unit_comment.proto", package="unit", syntax="proto3")
    message = file.message_type.add(name="Comment")
    message.field.add(name="text", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("unit.Comment"))


def test_protobuf_records_decode_through_the_registered_descriptor(url):
    Comment = comment_class()
    port = schemas(url)
    serializer = ProtobufSerializer(Comment, port.client, {"use.deprecated.format": False})
    value = serializer(Comment(text="최고"), ctx("in"))
    assert port.decode("protobuf", parse_frame(value, "protobuf")) == {"text": "최고"}
    with pytest.raises(UndecodableBody):
        port.decode("protobuf", parse_frame(value[:6] + b"\x0a\x05ab", "protobuf"))  # length past the end


@pytest.mark.parametrize("output_format", ["avro", "protobuf", "json_schema"])
def test_results_are_encoded_under_each_topics_subject_and_read_by_the_stock_deserializers(url, output_format):
    port = schemas(url, output_format)
    port.prepare(["out", "flagged"])
    client = port.client
    assert set(client.get_subjects()) == {"out-value", "flagged-value"}
    result = {"label": "긍정", "score": 0.75, "probabilities": {"긍정": 0.75, "부정": 0.25},
              "model": {"id": "m", "revision": "r"}, "latency_ms": None}
    value = port.encode("out", result)
    if output_format == "avro":
        read = AvroDeserializer(client)(value, ctx("out"))
        assert read["label"] == "긍정" and read["probabilities"]["부정"] == 0.25 and read["text"] is None
    elif output_format == "protobuf":
        read = ProtobufDeserializer(result_message_class(), {"use.deprecated.format": False})(value, ctx("out"))
        assert read.label == "긍정" and read.probabilities["부정"] == 0.25 and read.model.id == "m"
    else:
        assert json.loads(value[5:]) == {k: v for k, v in result.items()}


def test_known_schemas_outlive_the_registry_new_ones_wait_for_it(url):
    port = schemas(url)
    value = AvroSerializer(port.client, AVRO_COMMENT)({"id": 1, "comment": {"body": "x"}}, ctx("in"))
    port.decode("avro", parse_frame(value, "avro"))
    # The registry goes away: nothing listens on port 9 of this host.
    port._client = SchemaRegistryClient({"url": "http://127.0.0.1:9", "max.retries": 0, "timeout": 2})
    assert port.decode("avro", parse_frame(value, "avro"))["id"] == 1
    with pytest.raises(RegistryUnreachable):
        port.decode("avro", parse_frame(frame(424242, b"\x02"), "avro"))
    with pytest.raises(RegistryUnreachable):
        schemas("http://127.0.0.1:9", "avro").prepare(["out"])


def test_schema_formats_need_a_registry_url_and_the_url_is_masked():
    from worker.errors import ConfigError
    from worker.settings import load_settings

    with pytest.raises(ConfigError, match="WORKER_SCHEMA_REGISTRY_URL is needed"):
        load_settings(input_format="protobuf")
    with pytest.raises(ConfigError, match="WORKER_SCHEMA_REGISTRY_URL is needed"):
        load_settings(output_format="avro")
    settings = load_settings(input_format="json_schema", schema_registry_url="https://me:pw@registry:8081")
    assert settings.masked_dump()["schema_registry_url"] == "https://**********@registry:8081"
