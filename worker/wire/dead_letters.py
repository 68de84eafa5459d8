"""The dead-letter record: the original record plus ``worker.*`` headers saying what went wrong.

:func:`render_dead_letter` keeps the original key, value and headers, cut to fit the byte budget
(:func:`worker.wire.sizes.budget`), and never raises; :func:`minimal_dead_letter` is the smallest
dead letter there is. The ``worker.*`` header names are written here and nowhere else
(``worker.route`` of a routed copy is :data:`worker.wire.routing.ROUTE_HEADER`). No I/O here.
"""

from __future__ import annotations

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
