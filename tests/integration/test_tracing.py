"""Issue 17 part 4: the worker's spans in its inputs' traces, exported over OTLP/HTTP.

A `worker run` process (real broker) with the standard OTEL_* variables pointing at an OTLP/HTTP
receiver in this test (harness/otlp.py, POST /v1/traces, protobuf). Records come in with W3C
traceparent (some with tracestate and baggage), some without, some that become dead letters; a
route copies every result. After a clean stop the export must show: each result, routed copy and
dead letter carries a traceparent of its input's trace naming the worker's span for that record,
whose parent is the input's span; each window's span links to its records' contexts; the inference
span is the window span's child with engine and precision; the messaging attributes.
"""

from __future__ import annotations

import json
import secrets
from collections import defaultdict

import pytest

from harness.clients import consume_all, produce
from harness.otlp import OtlpReceiver
from harness.processes import start_worker_process, terminate, worker_env
from harness.topics import create_topics

pytestmark = pytest.mark.integration

TRACED, UNTRACED, EMPTY = 40, 8, 4  # EMPTY: empty values, dead-lettered as empty_text
ENGINES = {"torch", "onnxruntime", "openvino"}


def parse(traceparent: str) -> tuple[str, str]:
    version, trace_id, span_id, flags = traceparent.split("-")
    # Sampled; 03 also says the SDK made the trace id random (W3C Trace Context level 2).
    assert version == "00" and len(trace_id) == 32 and len(span_id) == 16 and int(flags, 16) & 1
    return trace_id, span_id


def test_the_workers_spans_are_children_of_its_inputs_and_parents_of_its_outputs(
        kafka_bootstrap, topics, tiny_model_dir, nsmc_rows, tmp_path):
    routed_topic = f"all-{topics['input']}"
    create_topics(kafka_bootstrap, {routed_topic: 1})
    inputs: dict[str, dict[str, str]] = {}  # key -> the trace headers it was produced with
    records = []
    docs = [doc for _, doc, _ in nsmc_rows]
    for i in range(TRACED + UNTRACED + EMPTY):
        key = f"k{i}"
        headers: dict[str, str] = {}
        if i < TRACED + EMPTY // 2:  # half the dead letters have a context too
            headers["traceparent"] = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"
            if i % 3 == 0:
                headers["tracestate"] = f"upstream=s{i}"
            if i % 4 == 0:
                headers["baggage"] = f"tenant=t{i}"
        value = b"" if i >= TRACED + UNTRACED else docs[i % len(docs)].encode()
        inputs[key] = headers
        records.append((key.encode(), value, [(n, v.encode()) for n, v in headers.items()]))
    produce(kafka_bootstrap, topics["input"], records)

    with OtlpReceiver() as receiver:
        env = worker_env(
            kafka_bootstrap, topics, tiny_model_dir,
            WORKER_ROUTES=json.dumps([{"name": "all", "topic": routed_topic}]),
            WORKER_BATCH_MAX_MESSAGES="8",
            WORKER_ENGINE="torch",  # no engine measurement: the spans are the point here
            OTEL_TRACES_EXPORTER="otlp",
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,  # the exporter adds /v1/traces
            OTEL_SERVICE_NAME="comment-classifier",
            OTEL_BSP_SCHEDULE_DELAY="200",
        )
        log = tmp_path / "worker.log"
        process = start_worker_process(env, log)
        try:
            results = consume_all(kafka_bootstrap, topics["output"], expected=TRACED + UNTRACED, timeout_s=180)
            routed = consume_all(kafka_bootstrap, routed_topic, expected=TRACED + UNTRACED, timeout_s=30)
            dead = consume_all(kafka_bootstrap, topics["dlq"], expected=EMPTY, timeout_s=30)
            assert process.poll() is None, log.read_text()
        finally:
            code, _ = terminate(process, 60)
        assert code == 0, log.read_text()[-4000:]
        assert len(results) == len(routed) == TRACED + UNTRACED and len(dead) == EMPTY, log.read_text()[-4000:]
        spans = receiver.spans  # the worker flushes its exporter before it exits

    by_id = {s.span_id: s for s in spans}
    assert all(s.resource.get("service.name") == "comment-classifier" for s in spans)
    group = env["WORKER_GROUP_ID"]

    record_spans = set()
    for message in [*results, *routed, *dead]:
        key = message.key.decode()
        sent = inputs[key]
        trace_id, span_id = parse(message.headers["traceparent"])
        span = by_id[span_id]  # the worker's own span for this record, exported
        record_spans.add(span_id)
        assert span.trace_id == trace_id and span.name == f"process {topics['input']}"
        assert span.kind == "SPAN_KIND_CONSUMER"
        if "traceparent" in sent:
            assert (trace_id, span.parent_span_id) == parse(sent["traceparent"])  # child of the input's span
        else:
            assert span.parent_span_id == ""  # the record started its trace here
        for header in ("tracestate", "baggage"):
            assert message.headers.get(header) == sent.get(header), (key, header)
        source = message.json()["source"] if message.value else None
        attributes = span.attributes
        assert attributes["messaging.system"] == "kafka"
        assert attributes["messaging.operation.type"] == "process"
        assert attributes["messaging.destination.name"] == topics["input"]
        assert attributes["messaging.consumer.group.name"] == group
        assert attributes["messaging.kafka.message.key"] == key
        if source is not None:
            assert attributes["messaging.destination.partition.id"] == str(source["partition"])
            assert attributes["messaging.kafka.offset"] == source["offset"]
        else:  # a dead letter: where it came from is in its headers
            assert attributes["messaging.destination.partition.id"] == message.headers["worker.source.partition"]
            assert attributes["messaging.kafka.offset"] == int(message.headers["worker.source.offset"])
            assert span.status_code == "STATUS_CODE_ERROR"
            assert attributes["worker.dead_letter.reason"] == "empty_text"
    # The result and its routed copy come from one span.
    result_parent = {r.key: r.headers["traceparent"] for r in results}
    assert all(result_parent[r.key] == r.headers["traceparent"] for r in routed)
    assert len(record_spans) == TRACED + UNTRACED + EMPTY

    windows = {s.span_id: s for s in spans if "messaging.batch.message_count" in s.attributes
               and s.name.startswith("process")}
    assert windows and all(w.parent_span_id == "" and w.kind == "SPAN_KIND_CONSUMER" for w in windows.values())
    assert all(w.attributes["messaging.consumer.group.name"] == group for w in windows.values())
    linked = [link for w in windows.values() for link in w.links]
    expected_links = {parse(h["traceparent"]) for h in inputs.values() if "traceparent" in h}
    assert set(linked) == expected_links and len(linked) == len(expected_links)  # every record's context, once
    assert sum(w.attributes["messaging.batch.message_count"] for w in windows.values()) == len(inputs)
    # Each record's span links back to its window.
    for span_id in record_spans:
        (link,) = by_id[span_id].links
        assert link[1] in windows

    inference = [s for s in spans if s.name == "inference"]
    per_window = defaultdict(list)
    for span in inference:
        parent = windows[span.parent_span_id]  # a child of a window span, in the window's trace
        assert span.trace_id == parent.trace_id
        per_window[parent.span_id].append(span)
        assert span.attributes["worker.engine"] in ENGINES and span.attributes["worker.precision"]
        assert 0 < span.attributes["messaging.batch.message_count"] <= parent.attributes["messaging.batch.message_count"]
    assert all(len(children) == 1 for children in per_window.values())
    assert sum(s.attributes["messaging.batch.message_count"] for s in inference) == TRACED + UNTRACED
