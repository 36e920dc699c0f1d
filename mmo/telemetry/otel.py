"""Spans of traced requests, exported to OpenTelemetry (``--otel-endpoint``; needs the
``mmo[otel]`` extra: ``opentelemetry-sdk`` and its OTLP/HTTP exporter).

Every span :func:`mmo.telemetry.trace.span` records (one per hop of a traced request, at
the caller and at the callee) becomes an OpenTelemetry span of the request's trace id, of
kind CLIENT or SERVER, with the service, method, outcome and peer as attributes. Spans
leave in batches from the SDK's own thread (``BatchSpanProcessor``): the reactor never
waits for the collector.
"""

from __future__ import annotations

import hashlib
import random
import time
from typing import Any

from mmo.telemetry.trace import SPAN_SINKS

__all__ = ["export_spans", "otel_trace_id"]


def otel_trace_id(trace_id: str) -> int:
    """The 128-bit OpenTelemetry trace id of an mmo trace id (32 hex digits are taken as
    they are; a client's own id is hashed)."""
    if len(trace_id) == 32:
        try:
            value = int(trace_id, 16)
        except ValueError:
            pass
        else:
            if value:
                return value
    return int.from_bytes(hashlib.sha256(trace_id.encode()).digest()[:16], "big") or 1


def export_spans(
    endpoint: str | None,
    *,
    service: str,
    instance: str,
    exporter: Any = None,
) -> Any:
    """Export every span from now on to ``endpoint`` (OTLP/HTTP), or to ``exporter`` (a
    ``SpanExporter``, exported at once: tests use the SDK's in-memory one). Returns the
    tracer provider (``shutdown()`` flushes it)."""
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    resource = Resource.create({"service.name": service, "service.instance.id": instance})
    provider = TracerProvider(resource=resource)
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    else:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("mmo")
    kinds = {"client": trace.SpanKind.CLIENT, "server": trace.SpanKind.SERVER}

    def sink(span: dict[str, Any]) -> None:
        parent = trace.NonRecordingSpan(
            trace.SpanContext(
                trace_id=otel_trace_id(span["trace_id"]),
                span_id=random.getrandbits(64) or 1,
                is_remote=True,
                trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
            )
        )
        end = time.time_ns()
        start = end - int(span["duration_ms"] * 1e6)
        otel_span = tracer.start_span(
            f"{span['service']}.{span['method']}",
            context=trace.set_span_in_context(parent),
            kind=kinds.get(span["span"], trace.SpanKind.INTERNAL),
            start_time=start,
            attributes={
                "mmo.trace_id": span["trace_id"],
                "mmo.service": span["service"],
                "mmo.method": span["method"],
                "mmo.outcome": span["outcome"],
                "mmo.peer": span["peer"],
            },
        )
        if span["outcome"] != "ok":
            otel_span.set_status(trace.Status(trace.StatusCode.ERROR, span["outcome"]))
        otel_span.end(end_time=end)

    SPAN_SINKS.append(sink)
    provider.sink = sink  # type: ignore[attr-defined]
    return provider
