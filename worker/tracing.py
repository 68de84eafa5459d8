"""OpenTelemetry tracing: the worker's spans in its inputs' traces. Off, and free, unless ``OTEL_*`` asks for it.

Two implementations behind one small interface: :class:`NoTracing` (the default: nothing imported,
nothing created, ``enabled`` False so the loop skips the per-record work with one check per poll)
and :class:`OtelTracing`, built by :func:`build_tracing` when the standard variables ask for traces.
``opentelemetry`` is imported only there, so the worker runs without the ``[tracing]`` extra.

The spans follow the messaging semantic conventions (consumer side, ``process``):

- per record, a ``process <topic>`` span (kind CONSUMER), the child of the context its
  ``traceparent``/``tracestate`` (and ``baggage``) carry, or a new trace's root when it has none.
  Its id goes into the ``traceparent`` header of everything produced for the record (result,
  routed copies, dead letter), so the next service's spans are children of the worker's;
  ``tracestate`` and ``baggage`` travel on as the input had them;
- per window, a ``process <topic>`` span of the batch (``messaging.batch.message_count``) with a
  link to every record's context (a batch has many parents, so it has none);
- per window, an ``inference`` span, the child of the window's, started on the model's thread
  with the window's context passed explicitly (no thread-local context crosses threads).

The contrib confluent-kafka instrumentation wraps ``poll``/``produce`` on one thread and knows no
transactions or windows, so the propagators are used directly. The SDK reads its own variables
(exporter endpoint, headers, timeout, sampler, ``OTEL_BSP_*``, resource); :func:`tracing_requested`
decides only whether to build it at all.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, ContextManager, Mapping, Protocol, Sequence
from urllib.parse import urlsplit

from worker.errors import ConfigError
from worker.wire.types import Headers, InputRecord

log = logging.getLogger(__name__)

TRACEPARENT = "traceparent"
# A W3C traceparent is 55 ASCII bytes ("00-" + 32 hex + "-" + 16 hex + "-" + 2 hex).
TRACEPARENT_BYTES = 55
# Keys longer than this are left out of the span (messaging.kafka.message.key): an attribute is not a payload.
MAX_KEY_ATTRIBUTE_BYTES = 128
SERVICE_NAME = "koelectra-worker"
TRACER_NAME = "koelectra-worker"
# The exporters this worker ships (opentelemetry-exporter-otlp-proto-http, and the SDK's console one).
EXPORTERS = ("otlp", "console")


class RecordSpan(Protocol):
    """A record's ``process`` span, open while its messages are rendered."""

    @property
    def headers(self) -> Headers:
        """The headers to set on everything produced for the record (its ``traceparent``)."""

    def end(self, dead_letter_reason: str | None) -> None: ...


class Tracing(Protocol):
    """What the loop and the model's thread ask of tracing; :class:`NoTracing` answers every call for free."""

    enabled: bool

    def extract(self, record: InputRecord) -> Any:
        """The record's trace context (read from its headers) and when it arrived."""

    def start_window(self, records: Sequence[InputRecord], traces: Sequence[Any]) -> Any:
        """The window's span, linked to every record's context; None when tracing is off."""

    def inference(self, window: Any, info: Mapping[str, Any], batch_size: int) -> ContextManager[Any]:
        """The inference span of a window, as a child of the window's span (any thread)."""

    def start_record(self, window: Any, trace: Any, record: InputRecord) -> RecordSpan:
        """A record's span, the child of its input's context."""

    def end_window(self, window: Any) -> None: ...

    def shutdown(self, timeout_s: float) -> None:
        """Export what is left, within ``timeout_s``."""


class NoTracing:
    """Tracing off: no spans, no headers, nothing imported."""

    enabled = False

    def extract(self, record: InputRecord) -> Any:
        return None

    def start_window(self, records: Sequence[InputRecord], traces: Sequence[Any]) -> Any:
        return None

    def inference(self, window: Any, info: Mapping[str, Any], batch_size: int) -> ContextManager[Any]:
        return contextlib.nullcontext()

    def start_record(self, window: Any, trace: Any, record: InputRecord) -> RecordSpan:
        return _NO_RECORD_SPAN

    def end_window(self, window: Any) -> None:
        pass

    def shutdown(self, timeout_s: float) -> None:
        pass


class _NoRecordSpan:
    headers: Headers = []  # noqa: RUF012 - read only, shared by every no-op span

    def end(self, dead_letter_reason: str | None) -> None:
        pass


_NO_RECORD_SPAN = _NoRecordSpan()


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


def tracing_requested(env: Mapping[str, str]) -> bool:
    """True when the standard variables ask for traces: an exporter other than ``none``, or an OTLP endpoint.

    Unlike the SDK's own default (``otlp``), an unset ``OTEL_TRACES_EXPORTER`` without an endpoint
    means off, so a worker without any ``OTEL_*`` variable does no tracing work at all.
    """
    if _flag(env.get("OTEL_SDK_DISABLED")):
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return bool(env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def build_tracing(env: Mapping[str, str], consumer_group: str) -> Tracing:
    """The tracing the ``OTEL_*`` variables in ``env`` ask for. Raises ConfigError (one line) if it cannot be had."""
    if not tracing_requested(env):
        return NoTracing()
    exporters = [e.strip().lower() for e in env.get("OTEL_TRACES_EXPORTER", "otlp").split(",") if e.strip()]
    unknown = [e for e in exporters if e not in EXPORTERS]
    if unknown:
        raise ConfigError(f"invalid settings: OTEL_TRACES_EXPORTER: {', '.join(unknown)} is not one of "
                          f"{', '.join(EXPORTERS)}, none")
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf"
    if "otlp" in exporters and protocol.strip() != "http/protobuf":
        raise ConfigError(f"invalid settings: OTEL_EXPORTER_OTLP_PROTOCOL: {protocol!r}: this worker exports "
                          "OTLP over HTTP only (http/protobuf)")
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
    except ImportError as exc:
        raise ConfigError(f"OTEL_* variables ask for traces but OpenTelemetry is not installed ({exc.name}): "
                          "pip install 'koelectra-worker[tracing]'") from None
    span_exporters: list[SpanExporter] = []
    for exporter in exporters:
        if exporter == "otlp":
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            except ImportError:
                raise ConfigError("OTEL_TRACES_EXPORTER=otlp needs opentelemetry-exporter-otlp-proto-http: "
                                  "pip install 'koelectra-worker[tracing]'") from None
            span_exporters.append(OTLPSpanExporter())  # endpoint, headers, timeout, compression: OTEL_EXPORTER_OTLP_*
        else:
            span_exporters.append(ConsoleSpanExporter())
    # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; without either, the worker's own name.
    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": SERVICE_NAME}))
    provider = TracerProvider(resource=resource)  # the sampler: OTEL_TRACES_SAMPLER(_ARG)
    for span_exporter in span_exporters:
        provider.add_span_processor(BatchSpanProcessor(span_exporter))  # OTEL_BSP_* tune it
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "default"
    url = urlsplit(endpoint)
    if url.password is not None or url.username is not None:  # a user:password in the URL is not logged either
        endpoint = url._replace(netloc=url.netloc.rsplit("@", 1)[-1]).geturl()
    fields = {"exporters": exporters, "endpoint": endpoint if "otlp" in exporters else None,
              "service": resource.attributes.get("service.name")}
    log.info("tracing on", extra={"fields": fields})  # never the exporter's headers: they may hold a key
    return OtelTracing(provider, consumer_group)


@dataclass(frozen=True)
class RecordTrace:
    """A record's extracted context and when it arrived (ns since the epoch, the spans' clock)."""

    context: Any
    arrived_ns: int


class _OtelRecordSpan:
    def __init__(self, span: Any, headers: Headers) -> None:
        self._span = span
        self.headers = headers

    def end(self, dead_letter_reason: str | None) -> None:
        if dead_letter_reason is not None:
            from opentelemetry.trace import Status, StatusCode

            self._span.set_attribute("worker.dead_letter.reason", dead_letter_reason)
            self._span.set_status(Status(StatusCode.ERROR, dead_letter_reason))
        self._span.end()


class _HeadersGetter:
    """Reads a Kafka record's headers for the propagators (names as W3C spells them; values bytes)."""

    def get(self, carrier: Headers, key: str) -> list[str] | None:
        values = [v.decode("utf-8", "replace") for n, v in carrier if n.lower() == key and v is not None]
        return values or None

    def keys(self, carrier: Headers) -> list[str]:
        return [n for n, _ in carrier]


class OtelTracing:
    """Spans through an OpenTelemetry SDK TracerProvider (not installed as the global one)."""

    enabled = True

    def __init__(self, provider: Any, consumer_group: str) -> None:
        from opentelemetry import propagate, trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._provider = provider
        self._tracer = provider.get_tracer(TRACER_NAME)
        self._trace = trace
        self._propagate = propagate  # OTEL_PROPAGATORS (default tracecontext,baggage) reads the input
        self._traceparent = TraceContextTextMapPropagator()  # writes the output's traceparent only
        self._getter = _HeadersGetter()
        self._group = consumer_group

    def extract(self, record: InputRecord) -> RecordTrace:
        return RecordTrace(self._propagate.extract(record.headers, getter=self._getter), time.time_ns())

    def _attributes(self, topic: str | None) -> dict[str, Any]:
        attributes: dict[str, Any] = {
            "messaging.system": "kafka",
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.consumer.group.name": self._group,
        }
        if topic is not None:
            attributes["messaging.destination.name"] = topic
        return attributes

    def start_window(self, records: Sequence[InputRecord], traces: Sequence[RecordTrace | None]) -> Any:
        from opentelemetry.trace import Link, SpanKind

        traces = [t for t in traces if t is not None]
        links = []
        for trace in traces:
            context = self._trace.get_current_span(trace.context).get_span_context()
            if context.is_valid:
                links.append(Link(context))
        topics = {r.topic for r in records}
        topic = next(iter(topics)) if len(topics) == 1 else None
        attributes = self._attributes(topic)
        attributes["messaging.batch.message_count"] = len(records)
        started = min((t.arrived_ns for t in traces), default=None)
        # A batch has many parents: it is a root, linked to each (messaging conventions, batch processing).
        return self._tracer.start_span(
            f"process {topic}" if topic else "process", context=self._trace.set_span_in_context(self._trace.INVALID_SPAN),
            kind=SpanKind.CONSUMER, links=links, attributes=attributes, start_time=started,
        )

    @contextlib.contextmanager
    def inference(self, window: Any, info: Mapping[str, Any], batch_size: int) -> Any:
        if window is None:
            yield None
            return
        attributes = {
            "worker.engine": str(info.get("engine", "?")),
            "worker.precision": str(info.get("precision", "?")),
            "worker.device": str(info.get("device", "?")),
            "worker.model": str(info.get("model", "?")),
            "messaging.batch.message_count": batch_size,
        }
        with self._tracer.start_as_current_span(
            "inference", context=self._trace.set_span_in_context(window), attributes=attributes,
            record_exception=True, set_status_on_exception=True,
        ) as span:
            yield span

    def start_record(self, window: Any, trace: RecordTrace | None, record: InputRecord) -> _OtelRecordSpan:
        from opentelemetry.trace import Link, SpanKind

        attributes = self._attributes(record.topic)
        attributes["messaging.destination.partition.id"] = str(record.partition)
        attributes["messaging.kafka.offset"] = record.offset
        if record.key is not None and len(record.key) <= MAX_KEY_ATTRIBUTE_BYTES:
            attributes["messaging.kafka.message.key"] = record.key.decode("utf-8", "backslashreplace")
        if record.value is not None:
            attributes["messaging.message.body.size"] = len(record.value)
        links = [Link(window.get_span_context())] if window is not None else None
        span = self._tracer.start_span(
            f"process {record.topic}", context=trace.context if trace else None, kind=SpanKind.CONSUMER,
            attributes=attributes, links=links, start_time=trace.arrived_ns if trace else None,
        )
        carrier: dict[str, str] = {}
        self._traceparent.inject(carrier, context=self._trace.set_span_in_context(span))
        value = carrier.get(TRACEPARENT)
        # An unsampled span (OTEL_TRACES_SAMPLER) still has an id; a non-recording one from an
        # invalid context has none, and then the input's own traceparent goes on unchanged.
        headers: Headers = [(TRACEPARENT, value.encode("ascii"))] if value else []
        return _OtelRecordSpan(span, headers)

    def end_window(self, window: Any) -> None:
        if window is not None:
            window.end()

    def shutdown(self, timeout_s: float) -> None:
        """Flush and stop the exporter within ``timeout_s`` (an unreachable collector must not hold the exit)."""
        deadline = time.monotonic() + max(0.0, timeout_s)
        self._provider.force_flush(int(max(0.0, timeout_s) * 1000))
        stopper = threading.Thread(target=self._provider.shutdown, name="tracing-shutdown", daemon=True)
        stopper.start()
        stopper.join(max(0.0, deadline - time.monotonic()))
