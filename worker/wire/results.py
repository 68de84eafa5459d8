"""The result record: which fields it carries, and rendering it within a byte budget. No I/O here.

A result value is strict RFC 8259 JSON in valid UTF-8. The input is echoed as ``input`` exactly as
decoded (:mod:`worker.wire.decoding` keeps strict JSON verbatim), and the whole record fits
:func:`worker.wire.sizes.budget`, or the caller gets a ``too_large`` Rejection. ``WORKER_RESULT_FIELDS``
(parsed here, read by :mod:`worker.settings`) picks the fields.
"""

from __future__ import annotations

import json
import math
from typing import Any, Sequence

from worker.wire.sizes import budget, header_size, pass_through_headers, record_size
from worker.wire.types import (
    INFERENCE_ERROR,
    TOO_LARGE,
    Comment,
    InputRecord,
    Prediction,
    Rejection,
    Rendered,
    wire_time,
)

# The fields of a result record (docs/output-format.md), in output order; WORKER_RESULT_FIELDS picks some.
# `labels` is written for multi-label predictions only, so a single-label result is as it always was.
RESULT_FIELDS = (
    "input", "text", "label", "score", "labels", "probabilities", "truncated", "tokens", "model", "source", "latency_ms",
    "classified_at",
)
ALWAYS_IN_RESULT = ("label", "score")
# `lean`: everything but the user's text (privacy; and the echo is most of a result's bytes).
LEAN_FIELDS = tuple(f for f in RESULT_FIELDS if f not in ("input", "text"))
FIELD_SHORTHANDS = {"all": RESULT_FIELDS, "lean": LEAN_FIELDS}


def parse_result_fields(spec: str) -> tuple[str, ...]:
    """``WORKER_RESULT_FIELDS``: comma-separated field names and/or ``all``/``lean``, in canonical order.

    ``label`` and ``score`` are always included. Raises ValueError naming an unknown field.
    """
    wanted: set[str] = set(ALWAYS_IN_RESULT)
    names = [part.strip() for part in spec.split(",") if part.strip()]
    if not names:
        raise ValueError("name at least one field, or all / lean")
    for name in names:
        if name in FIELD_SHORTHANDS:
            wanted.update(FIELD_SHORTHANDS[name])
        elif name in RESULT_FIELDS:
            wanted.add(name)
        else:
            raise ValueError(
                f"unknown field {name!r}; choose from {', '.join(RESULT_FIELDS)}, or all / lean"
            )
    return tuple(f for f in RESULT_FIELDS if f in wanted)


# One encoder, built once (json.dumps with options builds a new one per call). allow_nan=False: a NaN
# or Infinity that slipped past the checks fails here (encode_error) instead of writing a value strict
# parsers refuse.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _json_bytes(obj: Any) -> bytes:
    return _ENCODER.encode(obj).encode("utf-8")


def source_of(record: InputRecord) -> dict[str, Any]:
    return {"topic": record.topic, "partition": record.partition, "offset": record.offset}


def latency_ms(record: InputRecord, now_ms: float) -> float | None:
    if record.timestamp_ms is None or record.timestamp_ms <= 0:
        return None
    return round(max(0.0, now_ms - record.timestamp_ms), 3)


def non_finite(prediction: Prediction) -> bool:
    numbers = [prediction.score, *prediction.probabilities.values()]
    return not all(isinstance(n, (int, float)) and math.isfinite(n) for n in numbers)


def _assemble(input_json: bytes | None, text_json: bytes | None, small: dict[str, Any]) -> bytes:
    """The value: ``input`` and ``text`` spliced in as ready JSON bytes, then the small fields.

    One join, so a large value is copied once (each extra concatenation of a big value costs a fresh
    allocation and its page faults).
    """
    tail = _json_bytes(small)  # b'{"label":...}': never empty, label and score are always there
    parts = [b"{"]
    if input_json is not None:
        parts += [b'"input":', input_json, b","]
    if text_json is not None:
        parts += [b'"text":', text_json, b","]
    if len(parts) == 1:
        return tail
    parts.append(memoryview(tail)[1:])
    return b"".join(parts)


_TAIL_CHUNK = 4096  # code points measured at a time when cutting text from the end


def _longest_prefix(text: str, text_json: bytes, room: int) -> bytes:
    """The JSON string of the longest prefix of ``text`` (whole code points) taking at most ``room`` bytes.

    JSON escapes each code point on its own, so the JSON of a prefix is the full JSON (``text_json``)
    less the escaped bytes of the cut tail, closed by a quote. Measuring the tail from the end in chunks
    costs time in proportion to what is cut, not to the text's length.
    """
    excess = len(text_json) - room
    if excess <= 0:
        return text_json
    end = len(text)
    while end > 0:
        start = max(0, end - _TAIL_CHUNK)
        chunk_cost = len(_json_bytes(text[start:end])) - 2
        if chunk_cost < excess:
            excess -= chunk_cost
            end = start
            continue
        low, high = 1, end - start  # the shortest tail of this chunk whose cost covers the excess
        while low < high:
            middle = (low + high) // 2
            if len(_json_bytes(text[end - middle:end])) - 2 >= excess:
                high = middle
            else:
                low = middle + 1
        end -= low
        break
    kept = len(_json_bytes(text[end:])) - 2  # escaped bytes of the whole cut tail
    return text_json[: len(text_json) - 1 - kept] + b'"'


def render_result(
    comment: Comment,
    prediction: Prediction,
    *,
    model: dict[str, Any],
    now_ms: float,
    max_bytes: int,
    reserve_bytes: int = 0,
    fields: Sequence[str] = RESULT_FIELDS,
    flagged: Sequence[str] = (),
) -> Rendered | Rejection:
    """The result record within ``budget(max_bytes, reserve_bytes)``, or the Rejection saying why not.

    ``flagged`` are a multi-label prediction's categories at or above their thresholds, most probable
    first (:meth:`worker.wire.rules.Rules.flagged`): its ``labels`` field. Single-label results have none.

    Too large: ``input`` is left out first, then ``text`` is cut to a prefix (whole code points), and
    ``"cut": {"input": ..., "text": ..., "text_length": ...}`` says so. If even that cannot fit (a huge
    key or headers), the Rejection is ``too_large``. Non-finite probabilities give ``inference_error``.
    """
    record = comment.record
    if non_finite(prediction):
        return Rejection(record, INFERENCE_ERROR, f"model returned non-finite probabilities {prediction.probabilities}")
    headers = pass_through_headers(record.headers)
    limit = budget(max_bytes, reserve_bytes) - record_size(record.key, None, headers)
    small: dict[str, Any] = {}  # in output order
    if "label" in fields:
        small["label"] = str(prediction.label)
    if "score" in fields:
        small["score"] = float(prediction.score)
    if "labels" in fields and prediction.multi_label:
        small["labels"] = [str(c) for c in flagged]
    if "probabilities" in fields:
        small["probabilities"] = {str(k): float(v) for k, v in prediction.probabilities.items()}
    if "truncated" in fields:
        small["truncated"] = bool(prediction.truncated)
    if "tokens" in fields:
        small["tokens"] = int(prediction.tokens)
    if "model" in fields:
        small["model"] = model
    if "source" in fields:
        small["source"] = source_of(record)
    if "latency_ms" in fields:
        small["latency_ms"] = latency_ms(record, now_ms)
    if "classified_at" in fields:
        small["classified_at"] = wire_time(now_ms)
    # The text is encoded once: for the "text" field, and as the echo of plain-text input; lean
    # results (neither field) skip it, whatever the text's size.
    echo_text = "input" in fields and comment.raw_json is None
    text_json = _json_bytes(comment.text) if "text" in fields or echo_text else None
    input_json = (text_json if echo_text else comment.raw_json) if "input" in fields else None
    if "text" not in fields:
        text_json = None
    value = _assemble(input_json, text_json, small)
    if len(value) > limit and input_json is not None:
        input_json = None
        small["cut"] = {"input": True, "text": False, "text_length": len(comment.text)}
        value = _assemble(None, text_json, small)
    if len(value) > limit and text_json is not None:
        small["cut"] = {"input": "input" in fields, "text": True, "text_length": len(comment.text)}
        room = limit - len(_assemble(None, b"", small))  # bytes left for the text's JSON string
        if room >= 2:  # at least the quotes of an empty string
            value = _assemble(None, _longest_prefix(comment.text, text_json, room), small)
    if len(value) > limit:
        return Rejection(
            record,
            TOO_LARGE,
            f"result does not fit in {max_bytes} bytes even without its text: key "
            f"{len(record.key or b'')} bytes, {len(headers)} headers "
            f"{sum(header_size(n, v) for n, v in headers)} bytes",
        )
    return Rendered(record.key, value, headers, record, None, None, prediction)
