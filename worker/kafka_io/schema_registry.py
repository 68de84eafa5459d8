"""The Schema Registry adapter: :class:`~worker.wire.framing.SchemaPort` over ``confluent_kafka.schema_registry``.

Input: the writer's schema is fetched by id (the client caches it; this adapter also keeps the
parsed form), then the body is decoded with it: Avro with fastavro, JSON Schema with ``json`` and
``jsonschema`` (the body must validate), Protobuf through a descriptor pool built from the
registered schema (no generated classes: the registry's schema is the message type). A schema
fetched once is never fetched again, so a registry outage stops nothing whose schemas are known.

Output: :meth:`RegistrySchemas.prepare` registers the worker's result schema
(:mod:`worker.wire.result_schemas`) under each destination topic's value subject
(``<topic>-value``, TopicNameStrategy) and keeps the ids; :meth:`encode` then needs no registry.

Errors leave classified: the registry answered "no such schema" (:class:`UnknownSchema`), the
body does not decode (:class:`UndecodableBody`), or the registry could not be asked: refused,
timed out, 5xx, 401/403 (:class:`RegistryUnreachable`: the worker waits, no record's fault).
"""

from __future__ import annotations

import base64
import io
import json
import logging
from typing import Any

import fastavro
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.common._httpx_compat import httpx  # httpx2 or httpx: the client's
from confluent_kafka.schema_registry.error import SchemaRegistryError
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import DecodeError

from worker.errors import ConfigError
from worker.settings import Settings
from worker.wire.framing import (
    Frame,
    RegistryUnreachable,
    SchemaFormat,
    UndecodableBody,
    UnknownSchema,
    frame,
)
from worker.wire.result_schemas import (
    AVRO_RESULT_SCHEMA,
    JSON_RESULT_SCHEMA,
    NAMESPACE,
    PROTOBUF_RESULT_SCHEMA,
    RECORD_NAME,
)

log = logging.getLogger(__name__)

_SCHEMA_TYPES = {"avro": "AVRO", "protobuf": "PROTOBUF", "json_schema": "JSON"}
# Bounded calls: a blackholed registry costs one step at most TIMEOUT * (RETRIES + 1) plus the waits.
CLIENT_DEFAULTS: dict[str, Any] = {"timeout": 5, "max.retries": 1, "retries.wait.ms": 200,
                                   "retries.max.wait.ms": 1000}


def client_config(settings: Settings) -> dict[str, Any]:
    """The client's configuration: URL, the defaults above, then WORKER_SCHEMA_REGISTRY_<PROPERTY> (numbers as numbers)."""
    config: dict[str, Any] = {"url": settings.schema_registry_url, **CLIENT_DEFAULTS}
    for key, value in settings.schema_registry_properties().items():
        try:
            config[key] = int(value)
        except ValueError:
            try:
                config[key] = float(value)
            except ValueError:
                config[key] = value
    return config


def _unreachable_or_unknown(exc: SchemaRegistryError, what: str) -> Exception:
    status = exc.http_status_code
    if status == 404 or (400 <= status < 500 and status not in (401, 403, 408, 429)):
        return UnknownSchema(f"the registry has no {what} ({exc.error_message})")
    return RegistryUnreachable(f"the registry answered {status} for {what}: {exc.error_message}")


def result_message_class() -> Any:
    """The generated-at-run-time Protobuf class of PROTOBUF_RESULT_SCHEMA (it has no .proto compiler here)."""
    F = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name="koelectra_worker_result.proto", package=NAMESPACE, syntax="proto3")
    result = file.message_type.add(name=RECORD_NAME)
    prefix = f".{NAMESPACE}.{RECORD_NAME}"

    def field(message: Any, name: str, number: int, kind: int, type_name: str = "", repeated: bool = False) -> None:
        added = message.field.add(name=name, number=number, type=kind, json_name=name,
                                  label=F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL)
        if type_name:
            added.type_name = type_name

    for name, number, kind, type_name in (
        ("label", 1, F.TYPE_STRING, ""), ("score", 2, F.TYPE_DOUBLE, ""), ("input", 3, F.TYPE_STRING, ""),
        ("text", 4, F.TYPE_STRING, ""), ("truncated", 6, F.TYPE_BOOL, ""), ("tokens", 7, F.TYPE_INT64, ""),
        ("model", 8, F.TYPE_MESSAGE, f"{prefix}.ModelRef"), ("source", 9, F.TYPE_MESSAGE, f"{prefix}.SourceRef"),
        ("latency_ms", 10, F.TYPE_DOUBLE, ""), ("classified_at", 11, F.TYPE_STRING, ""),
        ("cut", 12, F.TYPE_MESSAGE, f"{prefix}.Cut"),
    ):
        field(result, name, number, kind, type_name)
    field(result, "probabilities", 5, F.TYPE_MESSAGE, f"{prefix}.ProbabilitiesEntry", repeated=True)
    # Declared in the .proto order: ModelRef, SourceRef, Cut; the map's entry type comes last.
    model = result.nested_type.add(name="ModelRef")
    field(model, "id", 1, F.TYPE_STRING)
    field(model, "revision", 2, F.TYPE_STRING)
    source = result.nested_type.add(name="SourceRef")
    field(source, "topic", 1, F.TYPE_STRING)
    field(source, "partition", 2, F.TYPE_INT32)
    field(source, "offset", 3, F.TYPE_INT64)
    cut = result.nested_type.add(name="Cut")
    field(cut, "input", 1, F.TYPE_BOOL)
    field(cut, "text", 2, F.TYPE_BOOL)
    field(cut, "text_length", 3, F.TYPE_INT64)
    entry = result.nested_type.add(name="ProbabilitiesEntry")
    entry.options.map_entry = True
    field(entry, "key", 1, F.TYPE_STRING)
    field(entry, "value", 2, F.TYPE_DOUBLE)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{NAMESPACE}.{RECORD_NAME}"))


class RegistrySchemas:
    """The SchemaPort of one worker. The constructor does no I/O; the first decode or prepare does."""

    def __init__(self, settings: Settings, output_format: str | None = None) -> None:
        self._config = client_config(settings)
        self._output_format = output_format if output_format is not None else settings.output_format
        self._client: SchemaRegistryClient | None = None
        self._readers: dict[tuple[str, int], Any] = {}  # (format, schema id) -> what decodes a body
        self._ids: dict[str, int] = {}  # destination topic -> id of the result schema under its subject
        self._result_avro = fastavro.parse_schema(AVRO_RESULT_SCHEMA)
        self._result_class: Any = None

    @property
    def client(self) -> SchemaRegistryClient:
        if self._client is None:
            self._client = SchemaRegistryClient.new_client(self._config)  # mock:// URLs: the client's in-memory mock
        return self._client

    # --- input ---
    def decode(self, schema_format: SchemaFormat, framed: Frame) -> Any:
        reader = self._reader(schema_format, framed.schema_id)
        try:
            return reader(framed)
        except (UndecodableBody, UnknownSchema):
            raise
        except Exception as exc:  # noqa: BLE001 - whatever the body does to the decoder is the record's
            raise UndecodableBody(f"{type(exc).__name__}: {exc}") from None

    def _reader(self, schema_format: SchemaFormat, schema_id: int) -> Any:
        key = (schema_format, schema_id)
        reader = self._readers.get(key)
        if reader is not None:
            return reader
        schema = self._fetch(schema_id)
        expected = _SCHEMA_TYPES[schema_format]
        found = (schema.schema_type or "AVRO").upper()
        if found != expected:
            raise UnknownSchema(f"schema id {schema_id} is a {found} schema, not {expected}")
        if schema.references:
            raise UnknownSchema(f"schema id {schema_id} has references, which the worker does not resolve")
        try:
            reader = {"avro": _avro_reader, "json_schema": _json_reader, "protobuf": self._protobuf_reader}[
                schema_format](schema_id, schema.schema_str)
        except (UnknownSchema, RegistryUnreachable):
            raise
        except Exception as exc:  # noqa: BLE001 - a schema the worker cannot use: as if unknown
            raise UnknownSchema(f"schema id {schema_id} cannot be used: {type(exc).__name__}: {exc}") from None
        self._readers[key] = reader
        return reader

    def _fetch(self, schema_id: int, fmt: str | None = None) -> Schema:
        try:
            return self.client.get_schema(schema_id, fmt=fmt)
        except SchemaRegistryError as exc:
            raise _unreachable_or_unknown(exc, f"schema id {schema_id}") from None
        except (httpx.HTTPError, OSError) as exc:
            raise RegistryUnreachable(f"{type(exc).__name__}: {exc}") from None

    def _protobuf_reader(self, schema_id: int, schema_str: str) -> Any:
        # Confluent's registry answers .proto text unless asked for format=serialized (a base64
        # FileDescriptorProto); Apicurio's Confluent API keeps what the producer registered, which
        # for confluent-kafka's ProtobufSerializer is that base64 form already.
        file = _file_descriptor(schema_str)
        if file is None:
            file = _file_descriptor(self._fetch(schema_id, fmt="serialized").schema_str)
        if file is None:
            raise UnknownSchema(f"schema id {schema_id} is .proto text; the registry did not give it serialized")
        pool = descriptor_pool.DescriptorPool()
        pool.Add(file)
        classes: dict[tuple[int, ...], Any] = {}

        def read(framed: Frame) -> Any:
            indexes = framed.message_indexes or (0,)
            message_class = classes.get(indexes)
            if message_class is None:
                message_class = message_factory.GetMessageClass(
                    pool.FindMessageTypeByName(_message_name(file, indexes, schema_id)))
                classes[indexes] = message_class
            message = message_class()
            try:
                message.ParseFromString(framed.body)
            except DecodeError as exc:
                raise UndecodableBody(f"not a {message_class.DESCRIPTOR.full_name}: {exc}") from None
            return MessageToDict(message, preserving_proto_field_name=True)

        return read

    # --- output ---
    def prepare(self, topics: list[str]) -> None:
        fmt = self._output_format
        schema_str = {"avro": lambda: json.dumps(AVRO_RESULT_SCHEMA), "json_schema": lambda: json.dumps(JSON_RESULT_SCHEMA),
                      "protobuf": lambda: PROTOBUF_RESULT_SCHEMA}[fmt]()
        if fmt == "protobuf" and self._result_class is None:
            self._result_class = result_message_class()
        for topic in topics:
            if topic in self._ids:
                continue
            subject = f"{topic}-value"
            try:
                self._ids[topic] = self.client.register_schema(subject, Schema(schema_str, _SCHEMA_TYPES[fmt]))
            except SchemaRegistryError as exc:
                if exc.http_status_code in (401, 403, 408, 429) or exc.http_status_code >= 500:
                    raise RegistryUnreachable(f"registering {subject}: {exc.http_status_code} {exc.error_message}") from None
                raise ConfigError(f"the Schema Registry refused the result schema under {subject}: "
                                  f"{exc.http_status_code} {exc.error_message}") from None
            except (httpx.HTTPError, OSError) as exc:
                raise RegistryUnreachable(f"{type(exc).__name__}: {exc}") from None
            log.info("result schema registered", extra={"fields": {"subject": subject, "id": self._ids[topic]}})

    def encode(self, topic: str, result: dict[str, Any]) -> bytes:
        schema_id = self._ids[topic]
        fmt = self._output_format
        if fmt == "avro":
            out = io.BytesIO()
            fastavro.schemaless_writer(out, self._result_avro, result)
            return frame(schema_id, out.getvalue())
        if fmt == "json_schema":
            return frame(schema_id, json.dumps(result, ensure_ascii=False, separators=(",", ":"),
                                               allow_nan=False).encode("utf-8"))
        message = self._result_class()
        for name, value in result.items():
            if value is None:
                continue
            if name == "probabilities":
                message.probabilities.update(value)
            elif isinstance(value, dict):
                for inner, item in value.items():
                    setattr(getattr(message, name), inner, item)
            else:
                setattr(message, name, value)
        return frame(schema_id, message.SerializeToString(), (0,))


def _avro_reader(schema_id: int, schema_str: str) -> Any:
    parsed = fastavro.parse_schema(json.loads(schema_str))

    def read(framed: Frame) -> Any:
        stream = io.BytesIO(framed.body)
        try:
            document = fastavro.schemaless_reader(stream, parsed, None)
        except (EOFError, StopIteration) as exc:
            raise UndecodableBody(f"the Avro body ends too early ({type(exc).__name__})") from None
        left = len(framed.body) - stream.tell()
        if left:
            raise UndecodableBody(f"{left} bytes left over after the Avro record")
        return document

    return read


def _json_reader(schema_id: int, schema_str: str) -> Any:
    import jsonschema

    schema = json.loads(schema_str)
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    validator = validator_class(schema)

    def read(framed: Frame) -> Any:
        try:
            document = json.loads(framed.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise UndecodableBody(f"the body is not JSON: {exc}") from None
        error = jsonschema.exceptions.best_match(validator.iter_errors(document))
        if error is not None:
            raise UndecodableBody(f"the body does not validate: {error.message}"[:500])
        return document

    return read


def _file_descriptor(schema_str: str) -> descriptor_pb2.FileDescriptorProto | None:
    try:
        data = base64.b64decode(schema_str, validate=True)
        file = descriptor_pb2.FileDescriptorProto()
        file.ParseFromString(data)
    except Exception:  # noqa: BLE001 - not the serialized form
        return None
    return file if file.message_type else None


def _message_name(file: descriptor_pb2.FileDescriptorProto, indexes: tuple[int, ...], schema_id: int) -> str:
    names: list[str] = []
    types = file.message_type
    for index in indexes:
        if index >= len(types):
            raise UndecodableBody(f"message indexes {list(indexes)} point past schema id {schema_id}'s messages")
        names.append(types[index].name)
        types = types[index].nested_type
    return ".".join([file.package, *names] if file.package else names)
