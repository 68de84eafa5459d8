"""Record sizes as librdkafka counts them, and header names and values it can take. No I/O here.

Every rendered record (result or dead letter) must fit a byte budget counted the way librdkafka
counts ``message.max.bytes`` (:func:`record_size`); :func:`budget` is that limit less a margin.
Header names and values from the input, or written by the worker, are made valid UTF-8 here.
This module sits below :mod:`worker.wire.types` (whose ``Rendered.size`` uses :func:`record_size`),
so it names no record type.
"""

from __future__ import annotations

from typing import Any, Iterable

# librdkafka refuses a record in produce() when
#   RD_KAFKAP_MESSAGE_V2_MAX_OVERHEAD + len(key) + len(value) + serialized headers > message.max.bytes
# (rdkafka_msg.c, rd_kafka_msg_new0; rdkafka_proto.h). The overhead is the worst-case varints of a v2
# record: length 5 + attributes 1 + timestamp delta 10 + offset delta 5 + key length 5 + value length 5
# + header count 5 = 36 bytes. Each header counts its name and value bytes plus their zigzag varint
# lengths (rdkafka_header.c, rd_kafka_header_add); a null value counts as 0 bytes.
RECORD_OVERHEAD_BYTES = 36
# Kept free below every budget: the 61 bytes of header a record batch adds on the broker's side
# (max.message.bytes is checked per batch) plus room for rounding in anyone's arithmetic.
SIZE_MARGIN_BYTES = 128
# Error details in dead-letter headers are cut to this many bytes (valid UTF-8).
DETAIL_MAX_BYTES = 1024


def _varint_size(number: int) -> int:
    zigzag = number << 1  # librdkafka writes lengths as zigzag varints (non-negative here)
    size = 1
    while zigzag >= 0x80:
        zigzag >>= 7
        size += 1
    return size


def header_size(name: str, value: bytes | None) -> int:
    name_bytes = len(name.encode("utf-8", "backslashreplace"))
    value_bytes = len(value) if value is not None else 0
    return name_bytes + value_bytes + _varint_size(name_bytes) + _varint_size(value_bytes)


def record_size(key: bytes | None, value: bytes | None, headers: Iterable[tuple[str, bytes | None]]) -> int:
    """The size librdkafka compares with ``message.max.bytes`` in produce()."""
    return (
        RECORD_OVERHEAD_BYTES
        + (len(key) if key is not None else 0)
        + (len(value) if value is not None else 0)
        + sum(header_size(name, v) for name, v in headers)
    )


def budget(max_message_bytes: int, reserve_bytes: int = 0) -> int:
    """Bytes a record may take: the limit less the caller's reserve and :data:`SIZE_MARGIN_BYTES`."""
    return max_message_bytes - reserve_bytes - SIZE_MARGIN_BYTES


def cut_utf8(data: bytes, limit: int) -> bytes:
    """At most ``limit`` bytes of ``data``, not ending inside a UTF-8 sequence (when it is UTF-8)."""
    if limit <= 0:
        return b""
    if len(data) <= limit:
        return data
    end = limit  # data[end] is the first byte left out; a continuation byte (10xxxxxx) there means
    while end > limit - 3 and end > 0 and (data[end] & 0xC0) == 0x80:  # we are inside a character
        end -= 1
    return data[:end] if (data[end] & 0xC0) != 0x80 else data[:limit]


def header_text(text: str, limit: int = DETAIL_MAX_BYTES) -> bytes:
    """Any str as valid UTF-8 bytes for a header value, at most ``limit`` bytes."""
    encoded = text.encode("utf-8", "backslashreplace")  # lone surrogates become \udc80, still readable
    if len(encoded) <= limit:
        return encoded
    return cut_utf8(encoded, max(0, limit - 3)) + "…".encode()


def safe_header_name(name: Any) -> str:
    """A header name that librdkafka can take: a str that encodes to UTF-8.

    confluent-kafka hands a str name to librdkafka's C API; one that cannot be encoded (a lone
    surrogate) crashed the Python process in produce() when tried (confluent-kafka 2.16), so such
    names are made valid here with backslash escapes.
    """
    if isinstance(name, bytes):
        return name.decode("utf-8", "backslashreplace")
    if not isinstance(name, str):
        name = str(name)
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return name.encode("utf-8", "backslashreplace").decode("utf-8")


def safe_header_value(value: Any) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    return str(value).encode("utf-8", "backslashreplace")


def pass_through_headers(headers: Iterable[tuple[Any, Any]] | None) -> list[tuple[str, bytes | None]]:
    """The input's headers, made safe to produce (names encodable, values bytes or None)."""
    return [(safe_header_name(name), safe_header_value(value)) for name, value in headers or ()]
