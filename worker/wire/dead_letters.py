"""The dead-letter record: the original record plus ``worker.*`` headers saying what went wrong.

:func:`render_dead_letter` keeps the original key, value and headers, cut to fit the byte budget
(:func:`worker.wire.sizes.budget`), and never raises; :func:`minimal_dead_letter` is the smallest
dead letter there is. The ``worker.*`` header names are written here and nowhere else
(``worker.route`` of a routed copy is :data:`worker.wire.routing.ROUTE_HEADER`), and read back here
too: :func:`read_dead_letter` is the inverse that ``worker replay`` uses. No I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass

from worker.wire.sizes import budget, cut_utf8, header_size, header_text, pass_through_headers, record_size
from worker.wire.types import Headers, Rejection, Rendered, wire_time


def _worker_headers(rejection: Rejection, model_id: str, now_ms: float) -> Headers:
    record = rejection.record
    try:
        failed_at = wire_time(now_ms)
    except Exception:  # noqa: BLE001 - an absurd clock must not cost the dead letter
        failed_at = "unknown"
    return [
        ("worker.error.kind", header_text(str(rejection.reason), 64)),
        ("worker.error.reason", header_text(str(rejection.detail))),
        ("worker.source.topic", header_text(str(record.topic), 512)),
        ("worker.source.partition", str(record.partition).encode()),
        ("worker.source.offset", str(record.offset).encode()),
        ("worker.model", header_text(str(model_id), 512)),
        ("worker.failed.at", failed_at.encode()),
    ]


def _size_header(name: str, size: int) -> tuple[str, bytes]:
    return (f"worker.original.{name}", str(size).encode())


def render_dead_letter(
    rejection: Rejection, *, model_id: str, now_ms: float, max_bytes: int, reserve_bytes: int = 0
) -> Rendered:
    """The dead letter: original key, value and headers plus ``worker.*`` headers, within the budget.

    Too large: the value is cut first, then the original headers are dropped, then the key is cut;
    ``worker.original.value.bytes`` (``.key.bytes``, ``.headers.bytes``/``.headers.count``) give the
    original sizes. Never raises: if anything goes wrong, a minimal dead letter without key and value.
    """
    try:
        return _dead_letter(rejection, model_id, now_ms, budget(max_bytes, reserve_bytes))
    except Exception:  # noqa: BLE001 - the last resort below builds only from ints and short strings
        return minimal_dead_letter(rejection)


def _dead_letter(rejection: Rejection, model_id: str, now_ms: float, limit: int) -> Rendered:
    record = rejection.record
    key = None if record.key is None else bytes(record.key)
    value = None if record.value is None else bytes(record.value)
    original = pass_through_headers(record.headers)
    ours = _worker_headers(rejection, model_id, now_ms)

    def done(k: bytes | None, v: bytes | None, headers: Headers) -> Rendered:
        return Rendered(k, v, headers, record, rejection.reason, rejection.detail)

    if record_size(key, value, original + ours) <= limit:
        return done(key, value, original + ours)
    # 1. cut the value
    value_size = len(value) if value is not None else 0
    marked = ours + [_size_header("value.bytes", value_size)]
    room = limit - record_size(key, None, original + marked)
    if room >= 0:
        return done(key, None if value is None else cut_utf8(value, room), original + marked)
    # 2. drop the original headers (the value gets whatever room that frees)
    marked += [
        _size_header("headers.count", len(original)),
        _size_header("headers.bytes", sum(header_size(n, v) for n, v in original)),
    ]
    room = limit - record_size(key, None, marked)
    if room >= 0:
        return done(key, None if value is None else cut_utf8(value, room), marked)
    # 3. cut the key; the value is left empty
    marked += [_size_header("key.bytes", len(key or b""))]
    room = limit - record_size(None, b"", marked)
    if room >= 0:
        return done(cut_utf8(key or b"", room), None if value is None else b"", marked)
    return minimal_dead_letter(rejection)


def minimal_dead_letter(rejection: Rejection) -> Rendered:
    """The smallest dead letter there is: reason and provenance, no key, no value."""
    record = rejection.record
    headers: Headers = [("worker.error.kind", str(rejection.reason).encode("ascii", "replace")[:64])]
    for name, number in (("partition", record.partition), ("offset", record.offset)):
        try:
            headers.append((f"worker.source.{name}", str(int(number)).encode()))
        except Exception:  # noqa: BLE001 - provenance is best effort here
            pass
    try:
        headers.insert(1, ("worker.source.topic", header_text(str(record.topic), 256)))
    except Exception:  # noqa: BLE001
        pass
    return Rendered(None, None, headers, record, str(rejection.reason), None)


# --- Reading a dead letter back (`worker replay`) ---

# What the worker writes before and after the original headers: `_worker_headers` appends its block,
# starting with this name, after the original headers; `_size_header` adds `worker.original.*` to it.
KIND_HEADER = "worker.error.kind"
CUT_HEADER_PREFIX = "worker.original."
# The record-level detail of a `decode_error` whose headers the Kafka client could not read
# (worker.kafka_io.clients._to_record): its dead letter holds no original headers at all.
UNREADABLE_HEADERS_DETAIL = "record headers could not be read"


@dataclass(frozen=True)
class DeadLetterView:
    """What a dead letter says about itself and the record it holds.

    ``original_headers`` are the headers before the worker's block, exactly as they were read;
    ``cut`` names what the dead letter does not hold whole (``value``, ``headers``, ``key``);
    ``minimal``: the last-resort dead letter, with no key, value or original headers at all.
    """

    reason: str | None
    detail: str | None
    source_topic: str | None
    source_partition: int | None
    source_offset: int | None
    failed_at: str | None
    original_headers: Headers
    cut: tuple[str, ...] = ()
    minimal: bool = False

    @property
    def is_dead_letter(self) -> bool:
        return self.reason is not None


def read_dead_letter(headers: Headers | None) -> DeadLetterView:
    """Split a dead letter's headers into the original ones and what the worker added (the inverse of
    :func:`render_dead_letter`). The worker's block starts at the last ``worker.error.kind`` header, so
    ``worker.*`` headers that the original record itself carried stay with the original."""
    headers = list(headers or [])
    starts = [i for i, (name, _) in enumerate(headers) if name == KIND_HEADER]
    if not starts:
        return DeadLetterView(None, None, None, None, None, None, headers)
    original, block = headers[: starts[-1]], headers[starts[-1]:]
    fields = {name: value for name, value in block}

    def text(name: str) -> str | None:
        value = fields.get(name)
        return None if value is None else value.decode("utf-8", "replace")

    def number(name: str) -> int | None:
        try:
            return int(text(name) or "")
        except ValueError:
            return None

    detail = text("worker.error.reason")
    cut = [part for part in ("value", "headers", "key") if any(
        name.startswith(f"{CUT_HEADER_PREFIX}{part}.") for name in fields)]
    if detail is not None and detail.startswith(UNREADABLE_HEADERS_DETAIL) and "headers" not in cut:
        cut.append("headers")
    return DeadLetterView(
        reason=text(KIND_HEADER),
        detail=detail,
        source_topic=text("worker.source.topic"),
        source_partition=number("worker.source.partition"),
        source_offset=number("worker.source.offset"),
        failed_at=text("worker.failed.at"),
        original_headers=original,
        cut=tuple(cut),
        # minimal_dead_letter writes neither the model nor the time: only the reason and provenance.
        minimal="worker.failed.at" not in fields and "worker.model" not in fields,
    )
