"""The result record's schemas for Schema Registry output (WORKER_OUTPUT_FORMAT avro, protobuf, json_schema).

One record type for every result, whatever WORKER_RESULT_FIELDS picks: ``label`` and ``score`` are
required (they are always there), every other field is optional with a null default (Avro: a
``["null", T]`` union with ``"default": null``; JSON Schema: not required, open content model;
Protobuf: proto3 fields, absent when unset). So the schema only ever grows by optional fields,
and a schema with a field added later stays BACKWARD compatible (a reader with the new schema reads
the old results: the new field takes its default). :func:`check_evolvable` is that rule, and the
tests hold the schemas to it. :func:`result_document` turns a rendered JSON result into the values
these schemas take. No I/O here.
"""

from __future__ import annotations

import json
from typing import Any

RECORD_NAME = "ClassificationResult"
NAMESPACE = "koelectra.worker"

AVRO_RESULT_SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": RECORD_NAME,
    "namespace": NAMESPACE,
    "doc": "A comment's classification by koelectra-worker (docs/output-format.md). Fields other than label and "
           "score are optional: WORKER_RESULT_FIELDS picks them, and fields added later have defaults.",
    "fields": [
        {"name": "label", "type": "string"},
        {"name": "score", "type": "double"},
        {"name": "input", "type": ["null", "string"], "default": None,
         "doc": "The input as read: the text, or the JSON of a JSON or schema-encoded input."},
        {"name": "text", "type": ["null", "string"], "default": None},
        {"name": "probabilities", "type": ["null", {"type": "map", "values": "double"}], "default": None},
        {"name": "truncated", "type": ["null", "boolean"], "default": None},
        {"name": "tokens", "type": ["null", "long"], "default": None},
        {"name": "model", "default": None, "type": ["null", {
            "type": "record", "name": "ModelRef",
            "fields": [{"name": "id", "type": "string"}, {"name": "revision", "type": "string"}],
        }]},
        {"name": "source", "default": None, "type": ["null", {
            "type": "record", "name": "SourceRef",
            "fields": [{"name": "topic", "type": "string"}, {"name": "partition", "type": "int"},
                       {"name": "offset", "type": "long"}],
        }]},
        {"name": "latency_ms", "type": ["null", "double"], "default": None},
        {"name": "classified_at", "type": ["null", "string"], "default": None},
        {"name": "cut", "default": None, "type": ["null", {
            "type": "record", "name": "Cut",
            "fields": [{"name": "input", "type": "boolean"}, {"name": "text", "type": "boolean"},
                       {"name": "text_length", "type": "long"}],
        }]},
    ],
}

JSON_RESULT_SCHEMA: dict[str, Any] = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": RECORD_NAME,
    "type": "object",
    "properties": {
        "label": {"type": "string"},
        "score": {"type": "number"},
        "input": {"type": "string"},
        "text": {"type": "string"},
        "probabilities": {"type": "object", "additionalProperties": {"type": "number"}},
        "truncated": {"type": "boolean"},
        "tokens": {"type": "integer"},
        "model": {"type": "object", "properties": {"id": {"type": "string"}, "revision": {"type": "string"}}},
        "source": {"type": "object", "properties": {
            "topic": {"type": "string"}, "partition": {"type": "integer"}, "offset": {"type": "integer"}}},
        "latency_ms": {"type": ["number", "null"]},
        "classified_at": {"type": "string"},
        "cut": {"type": "object", "properties": {
            "input": {"type": "boolean"}, "text": {"type": "boolean"}, "text_length": {"type": "integer"}}},
    },
    "required": ["label", "score"],
}

# The same record in proto3 (the registry gets this text; the worker builds the matching descriptor,
# worker.kafka_io.schema_registry.result_message_class). Unset fields are absent on the wire.
PROTOBUF_RESULT_SCHEMA = f"""syntax = "proto3";
package {NAMESPACE};

message {RECORD_NAME} {{
  string label = 1;
  double score = 2;
  string input = 3;
  string text = 4;
  map<string, double> probabilities = 5;
  bool truncated = 6;
  int64 tokens = 7;
  ModelRef model = 8;
  SourceRef source = 9;
  double latency_ms = 10;
  string classified_at = 11;
  Cut cut = 12;

  message ModelRef {{
    string id = 1;
    string revision = 2;
  }}
  message SourceRef {{
    string topic = 1;
    int32 partition = 2;
    int64 offset = 3;
  }}
  message Cut {{
    bool input = 1;
    bool text = 2;
    int64 text_length = 3;
  }}
}}
"""


def result_document(value: bytes) -> dict[str, Any]:
    """A rendered JSON result as the schemas' values: ``input`` always a string (JSON text unless text input)."""
    document = json.loads(value)
    if "input" in document and not isinstance(document["input"], str):
        document["input"] = json.dumps(document["input"], ensure_ascii=False, separators=(",", ":"))
    return document


def check_evolvable(avro_schema: dict[str, Any]) -> list[str]:
    """What in an Avro result schema breaks the rule "every field but label and score is optional with a
    null default" (empty: none). Keeping it means a later schema that adds such a field reads every
    earlier result: BACKWARD compatibility."""
    problems = []
    for field in avro_schema["fields"]:
        name, kind = field["name"], field["type"]
        if name in ("label", "score"):
            continue
        if not (isinstance(kind, list) and kind and kind[0] == "null" and "default" in field
                and field["default"] is None):
            problems.append(f"field {name!r} is not a [\"null\", ...] union with default null")
    return problems
