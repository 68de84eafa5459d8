"""Schema Registry framing (the Confluent wire format) and what a decoded record's text is. No I/O here.

A framed value is ``0x00`` (magic byte), a 4-byte big-endian schema id, then, for Protobuf only, the
message indexes (a zig-zag varint count, then that many zig-zag varints; a single ``0x00`` means
``[0]``, the file's first message), then the body. :func:`parse_frame` splits a value into a
:class:`Frame` or says why it cannot (the record's fault, so a ``no_schema_header`` dead letter).

The schema itself lives in the registry: fetching it and decoding the body is the
:class:`SchemaPort`'s work (the adapter is :mod:`worker.kafka_io.schema_registry`). What the port
raises says whose fault a failure is: :class:`UnknownSchema` and :class:`UndecodableBody` are the
record's (a dead letter each), :class:`RegistryUnreachable` is nobody's (the worker waits).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any, Literal, Protocol
from uuid import UUID

SchemaFormat = Literal["avro", "protobuf", "json_schema"]
SCHEMA_FORMATS: tuple[str, ...] = ("avro", "protobuf", "json_schema")
MAGIC_BYTE = 0
HEADER_BYTES = 5  # magic byte + schema id


class NotFramed(ValueError):
    """The value does not start with the wire-format header (or its message indexes are cut)."""


class UnknownSchema(LookupError):
    """The registry answered, and it has no schema with this id (or not of the expected type)."""


class UndecodableBody(ValueError):
    """The schema is known, the body does not decode with it."""


class RegistryUnreachable(ConnectionError):
    """The registry could not be asked (refused, timed out, 5xx): no record's fault."""


@dataclass(frozen=True)
class Frame:
    schema_id: int
    body: bytes
    message_indexes: tuple[int, ...] = ()  # Protobuf only: the path to the message type in its file


class SchemaPort(Protocol):
    """Decodes framed values with the registry's schemas and encodes results with the worker's own.

    ``decode`` returns the decoded record as plain Python values (dicts, lists, strings, numbers,
    bytes) or raises :class:`UnknownSchema`, :class:`UndecodableBody` or :class:`RegistryUnreachable`.
    ``encode`` frames a result (plain dict) for ``topic`` under that topic's value subject;
    ``prepare`` registers the result schema for those topics (raises RegistryUnreachable).
    """

    def decode(self, schema_format: SchemaFormat, frame: Frame) -> Any: ...

    def prepare(self, topics: list[str]) -> None: ...

    def encode(self, topic: str, result: dict[str, Any]) -> bytes: ...


def _zigzag_varint(data: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if pos >= len(data):
            raise NotFramed("the Protobuf message indexes are cut short")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
        if shift > 63:
            raise NotFramed("a Protobuf message index is not a valid varint")
    return (result >> 1) ^ -(result & 1), pos


def parse_frame(value: bytes, schema_format: SchemaFormat) -> Frame:
    """The schema id, message indexes and body of a framed value; raises :class:`NotFramed`."""
    if len(value) < HEADER_BYTES:
        raise NotFramed(f"value is {len(value)} bytes, shorter than the 5-byte Schema Registry header")
    if value[0] != MAGIC_BYTE:
        raise NotFramed(f"value starts with byte 0x{value[0]:02x}, not the Schema Registry magic byte 0x00")
    schema_id = int.from_bytes(value[1:HEADER_BYTES], "big")
    if schema_format != "protobuf":
        return Frame(schema_id, bytes(value[HEADER_BYTES:]))
    count, pos = _zigzag_varint(value, HEADER_BYTES)
    if count == 0:
        return Frame(schema_id, bytes(value[pos:]), (0,))
    if count < 0 or count > 100:
        raise NotFramed(f"{count} Protobuf message indexes is not a valid count")
    indexes = []
    for _ in range(count):
        index, pos = _zigzag_varint(value, pos)
        if index < 0:
            raise NotFramed(f"Protobuf message index {index} is negative")
        indexes.append(index)
    return Frame(schema_id, bytes(value[pos:]), tuple(indexes))


def frame(schema_id: int, body: bytes, message_indexes: tuple[int, ...] = ()) -> bytes:
    """A framed value (the inverse of :func:`parse_frame`; for Protobuf pass the indexes, ``(0,)`` at least)."""
    header = bytes([MAGIC_BYTE]) + schema_id.to_bytes(4, "big")
    if not message_indexes:
        return header + body
    if message_indexes == (0,):
        return header + b"\x00" + body
    out = bytearray()
    for number in (len(message_indexes), *message_indexes):
        zz = (number << 1) ^ (number >> 63)
        while zz > 0x7F:
            out.append((zz & 0x7F) | 0x80)
            zz >>= 7
        out.append(zz)
    return header + bytes(out) + body


def _plain(value: Any) -> Any:
    """What json cannot write itself, as Avro's JSON encoding would show it (bytes as base64)."""
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, (Decimal, UUID)):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=_plain)


def document_json(document: Any) -> bytes | None:
    """The decoded record as strict JSON (the result's ``input``), or None if it has no JSON form (NaN)."""
    try:
        return _ENCODER.encode(document).encode("utf-8")
    except (TypeError, ValueError, RecursionError):
        return None
