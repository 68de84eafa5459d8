"""worker/tracing.py: off and free without OTEL_* variables; with them, the spans and headers of docs/tracing.md.

The span structure end to end (a worker process, the real broker, an OTLP/HTTP endpoint) is
tests/integration/test_tracing.py; here the pieces, with the SDK's in-memory exporter.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from worker.errors import ConfigError
from worker.pipeline.intake import Entry
from worker.pipeline.render import DEAD_LETTER, RESULT, ROUTED, Renderer, with_trace
from worker.tracing import NoTracing, OtelTracing, build_tracing, tracing_requested
from worker.wire.routing import Route
from worker.wire.rules import Rules
from worker.wire.types import Comment, InputRecord, Prediction, Rejection

REPO = Path(__file__).resolve().parents[2]
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{SPAN_ID}-01"


def test_without_otel_variables_nothing_is_imported_or_built():
    """A worker without OTEL_* variables imports no OpenTelemetry module and gets the no-op tracing."""
    code = (
        "import sys\n"
        "import worker.cli, worker.app, worker.pipeline.infer\n"
        "from worker.settings import otel_environment\n"
        "from worker.tracing import NoTracing, build_tracing\n"
        "tracing = build_tracing(otel_environment(), 'group')\n"
        "assert isinstance(tracing, NoTracing) and not tracing.enabled, tracing\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('opentelemetry'))\n"
        "assert not loaded, loaded\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(("env", "requested"), [
    ({}, False),
    ({"OTEL_SERVICE_NAME": "worker"}, False),  # a name alone asks for nothing
    ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, False),
    ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, True),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, True),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, False),
])
def test_the_standard_variables_turn_tracing_on(env, requested):
    assert tracing_requested(env) is requested
    if not requested:
        assert isinstance(build_tracing(env, "group"), NoTracing)


@pytest.mark.parametrize(("env", "names"), [
    ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
])
def test_what_cannot_be_had_is_one_config_error(env, names):
    with pytest.raises(ConfigError, match=names):
        build_tracing(env, "group")


def test_a_missing_sdk_is_one_config_error_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)  # makes the import fail
    with pytest.raises(ConfigError, match=r"koelectra-worker\[tracing\]"):
        build_tracing({"OTEL_TRACES_EXPORTER": "otlp"}, "group")


@pytest.fixture
def traced():
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield OtelTracing(provider, "the-group"), exporter
    provider.shutdown()


def record(offset, headers=(), key=b"k", value=b"text"):
    return InputRecord("comments", 2, offset, key, value, list(headers))


def prediction():
    return Prediction("positive", 0.9, {"negative": 0.1, "positive": 0.9}, False, 3)


def test_spans_parents_links_and_the_outgoing_traceparent(traced):
    tracing, exporter = traced
    records = [
        record(10, [("traceparent", TRACEPARENT.encode()), ("tracestate", b"vendor=1"), ("baggage", b"user=7")]),
        record(11),  # no context: its span starts a trace
    ]
    traces = [tracing.extract(r) for r in records]
    window = tracing.start_window(records, traces)
    with tracing.inference(window, {"engine": "onnxruntime", "precision": "int8"}, 2):
        pass
    spans = [tracing.start_record(window, t, r) for t, r in zip(traces, records)]
    for span in spans:
        span.end(None)
    tracing.end_window(window)

    finished = {s.context.span_id: s for s in exporter.get_finished_spans()}
    window_span = next(s for s in finished.values() if s.attributes.get("messaging.batch.message_count") == 2
                       and s.name.startswith("process"))
    assert window_span.parent is None
    assert [(format(link.context.trace_id, "032x"), format(link.context.span_id, "016x"))
            for link in window_span.links] == [(TRACE_ID, SPAN_ID)]  # the record without a context has none
    inference = next(s for s in finished.values() if s.name == "inference")
    assert inference.parent.span_id == window_span.context.span_id
    assert inference.attributes["worker.engine"] == "onnxruntime" and inference.attributes["worker.precision"] == "int8"

    first, second = (dict(s.headers)["traceparent"].decode() for s in spans)
    version, trace_id, span_id, flags = first.split("-")
    assert (version, trace_id, flags) == ("00", TRACE_ID, "01") and span_id != SPAN_ID
    mine = finished[int(span_id, 16)]
    assert format(mine.parent.span_id, "016x") == SPAN_ID and mine.parent.is_remote
    assert mine.name == "process comments" and mine.kind.name == "CONSUMER"
    assert dict(mine.attributes) == {
        "messaging.system": "kafka", "messaging.operation.type": "process", "messaging.operation.name": "process",
        "messaging.consumer.group.name": "the-group", "messaging.destination.name": "comments",
        "messaging.destination.partition.id": "2", "messaging.kafka.offset": 10, "messaging.kafka.message.key": "k",
        "messaging.message.body.size": 4,
    }
    assert mine.context.trace_state.get("vendor") == "1"
    root = finished[int(second.split("-")[2], 16)]
    assert root.parent is None and second.split("-")[1] == format(root.context.trace_id, "032x")


def test_a_dead_letter_ends_its_span_with_the_reason(traced):
    tracing, exporter = traced
    r = record(5, [("traceparent", TRACEPARENT.encode())])
    span = tracing.start_record(None, tracing.extract(r), r)
    span.end("empty_text")
    (finished,) = exporter.get_finished_spans()
    assert finished.status.status_code.name == "ERROR" and finished.attributes["worker.dead_letter.reason"] == "empty_text"


def test_every_message_carries_the_workers_traceparent_in_place_of_the_inputs():
    mine = [("traceparent", b"00-" + TRACE_ID.encode() + b"-1111111111111111-01")]
    source = record(1, [("TraceParent", TRACEPARENT.encode()), ("tracestate", b"v=1"), ("baggage", b"b=2")])
    renderer = Renderer("out", "dlq", {"id": "m", "revision": "r"},
                        Rules(routes=(Route(name="all", topic="all-topic"),)))
    delivery = renderer.render(Entry(Comment(source, "text"), prediction=prediction()), 0, mine)
    assert [m.kind for m in delivery.messages] == [RESULT, ROUTED]
    for message in delivery.messages:
        traceparents = [v for n, v in message.headers if n.lower() == "traceparent"]
        assert traceparents == [mine[0][1]]
        assert ("tracestate", b"v=1") in message.headers and ("baggage", b"b=2") in message.headers
    dead = renderer.render(Entry(Rejection(source, "empty_text", "no text")), 0, mine)
    (message,) = dead.messages
    assert message.kind == DEAD_LETTER and [v for n, v in message.headers if n.lower() == "traceparent"] == [mine[0][1]]
    replacement = renderer.replacement(delivery, 0, "refused", 0)
    assert replacement is not None and ("traceparent", mine[0][1]) in replacement.headers
    # Tracing off: the input's headers go on as they came.
    assert with_trace(source.headers, []) == source.headers


def test_the_traceparent_fits_the_budget_of_a_record_at_the_limit():
    """A record that just fits without the header becomes a cut dead letter, never an oversized message."""
    mine = [("traceparent", b"00-" + TRACE_ID.encode() + b"-1111111111111111-01")]
    renderer = Renderer("out", "dlq", {"id": "m", "revision": "r"}, max_message_bytes=1000)
    source = record(1, value="가".encode() * 400)
    delivery = renderer.render(Entry(Rejection(source, "too_large", "big")), 0, mine)
    (message,) = delivery.messages
    from worker.wire.sizes import record_size

    assert record_size(message.key, message.value, message.headers) <= 1000
    assert ("traceparent", mine[0][1]) in message.headers


@pytest.mark.parametrize("delivery", ["at_least_once", "exactly_once"])
def test_the_loop_puts_each_records_span_into_what_it_produces(traced, delivery):
    """The real Worker over the fake Kafka port, tracing on: every output names its record's span."""
    from tests.unit.test_loop import T, finish, make_worker

    tracing, exporter = traced
    worker, fake = make_worker(partitions=2, delivery=delivery, batch_max_messages=3,
                               routes=[{"name": "all", "topic": "all"}])
    worker.tracing = tracing  # before start(): the model's thread takes it from the worker
    sent = {}
    for partition in (0, 1):
        log = fake.input.setdefault(partition, [])
        for offset, value in enumerate(["좋다".encode(), b"", "별로".encode()]):
            parent = (f"{partition}{offset}".rjust(32, "a"), f"{partition}{offset}".rjust(16, "b"))
            headers = [("traceparent", f"00-{parent[0]}-{parent[1]}-01".encode())]
            log.append(InputRecord(T, partition, offset, f"{partition}-{offset}".encode(), value, headers, 1_000))
            sent[f"{partition}-{offset}".encode()] = parent
    finish(worker, fake)

    spans = {format(s.context.span_id, "016x"): s for s in exporter.get_finished_spans()}
    outputs = [*fake.visible("out"), *fake.visible("all"), *fake.visible("dlq")]
    assert len(outputs) == 4 + 4 + 2
    for message in outputs:
        (traceparent,) = [v.decode() for n, v in message.headers if n == "traceparent"]
        _, trace_id, span_id, _ = traceparent.split("-")
        span = spans[span_id]
        assert (trace_id, format(span.parent.span_id, "016x")) == sent[message.key]
        assert span.attributes["messaging.kafka.offset"] == int(message.key.split(b"-")[1])
    windows = [s for s in spans.values() if "messaging.batch.message_count" in s.attributes and s.name != "inference"]
    linked = {(format(link.context.trace_id, "032x"), format(link.context.span_id, "016x"))
              for w in windows for link in w.links}
    assert linked == set(sent.values())
    inference = [s for s in spans.values() if s.name == "inference"]
    assert inference and all(format(s.parent.span_id, "016x") in {format(w.context.span_id, "016x") for w in windows}
                             for s in inference)
