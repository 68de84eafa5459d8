"""The Schema Registry wire format and the result schemas' evolution rule (no registry)."""

from __future__ import annotations

import io
import json
import re

import fastavro
import pytest

from worker.wire.framing import Frame, NotFramed, document_json, frame, parse_frame
from worker.wire.result_schemas import AVRO_RESULT_SCHEMA, PROTOBUF_RESULT_SCHEMA, check_evolvable, result_document


def test_avro_and_json_schema_frames_are_magic_byte_id_body():
    assert parse_frame(b"\x00\x00\x00\x01\x02body", "avro") == Frame(258, b"body")
    assert parse_frame(b"\x00\x00\x00\x00\x07", "json_schema") == Frame(7, b"")
    assert parse_frame(frame(70000, b"x"), "avro") == Frame(70000, b"x")


@pytest.mark.parametrize("value", [b"", b"\x00\x00\x01", b"plain text, no header", b"\x01\x00\x00\x00\x01{}"])
def test_values_without_the_header_are_not_framed(value):
    with pytest.raises(NotFramed):
        parse_frame(value, "avro")


def test_protobuf_message_indexes():
    assert parse_frame(b"\x00\x00\x00\x00\x05\x00rest", "protobuf") == Frame(5, b"rest", (0,))
    value = frame(5, b"rest", (1, 2))
    assert value[5:8] == b"\x04\x02\x04"  # count 2, then 1 and 2, zig-zag encoded
    assert parse_frame(value, "protobuf") == Frame(5, b"rest", (1, 2))
    assert parse_frame(frame(5, b"", (0,)), "protobuf") == Frame(5, b"", (0,))
    with pytest.raises(NotFramed):
        parse_frame(b"\x00\x00\x00\x00\x05", "protobuf")  # indexes cut off
    with pytest.raises(NotFramed):
        parse_frame(b"\x00\x00\x00\x00\x05\x04\x02", "protobuf")  # count 2, one index


def test_document_json_writes_what_json_cannot():
    assert document_json({"b": b"\x01", "t": "한글"}) == '{"b":"AQ==","t":"한글"}'.encode()
    assert document_json({"x": float("nan")}) is None


def test_result_schema_only_grows_by_optional_fields():
    assert check_evolvable(AVRO_RESULT_SCHEMA) == []
    broken = {**AVRO_RESULT_SCHEMA, "fields": [*AVRO_RESULT_SCHEMA["fields"], {"name": "new", "type": "string"}]}
    assert check_evolvable(broken) == ["field 'new' is not a [\"null\", ...] union with default null"]


def test_a_result_written_now_is_read_by_a_schema_with_a_field_added_later():
    """BACKWARD compatibility, checked by reading: the later schema reads the earlier bytes."""
    document = result_document(json.dumps({"input": {"text": "좋다"}, "label": "긍정", "score": 0.9,
                                           "probabilities": {"긍정": 0.9, "부정": 0.1}}).encode())
    assert document["input"] == '{"text":"좋다"}'
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(AVRO_RESULT_SCHEMA), document)
    later = json.loads(json.dumps(AVRO_RESULT_SCHEMA))
    later["fields"].append({"name": "language", "type": ["null", "string"], "default": None})
    assert check_evolvable(later) == []
    read = fastavro.schemaless_reader(io.BytesIO(out.getvalue()), fastavro.parse_schema(AVRO_RESULT_SCHEMA),
                                      fastavro.parse_schema(later))
    assert read["label"] == "긍정" and read["language"] is None and read["probabilities"]["부정"] == 0.1


def test_protobuf_result_class_matches_the_registered_proto_text():
    from worker.kafka_io.schema_registry import result_message_class

    declared = dict(re.findall(r"^  (?:map<string, double>|\w+) (\w+) = (\d+);", PROTOBUF_RESULT_SCHEMA, re.M))
    fields = {f.name: str(f.number) for f in result_message_class().DESCRIPTOR.fields}
    assert fields == declared
