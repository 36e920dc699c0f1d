"""The serving side's telemetry: requests counted by method and outcome, the trace of a
request current while its handler runs (across its yields), spans of traced requests, and
their export to OpenTelemetry."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer, task
from twisted.logger import globalLogPublisher

from mmo.errors import BadRequest
from mmo.logic import Context, ServiceHandler
from mmo.logic.server import HandlerServer
from mmo.telemetry import trace
from mmo.telemetry.trace import CURRENT
from mmo.testing import FakeZmqSocket, handler_factory
from mmo.wire import encode, encode_value
from mmo.wire.gen.mmo.ttypes import Header, Kind

from .test_memo import answers, serving


class Seen(ServiceHandler):
    """Remembers the trace current when each call starts and after a pause."""

    default_service = "seen"

    def __init__(self, runtime: Any) -> None:
        super().__init__(runtime)
        self.traces: list[Any] = []

    @defer.inlineCallbacks
    def on_pause(self, ctx: Context) -> Any:
        self.traces.append(CURRENT.get())
        yield task.deferLater(self.clock, 1.0, lambda: None)  # type: ignore[arg-type]
        self.traces.append(CURRENT.get())
        return "done"

    def on_refuse(self, ctx: Context) -> None:
        raise BadRequest("no")


@pytest.fixture
def seen() -> tuple[HandlerServer, FakeZmqSocket, task.Clock]:
    clock = task.Clock()
    server, wire = serving(handler_factory(Seen, clock=clock))
    return server, wire, clock


def request(server: HandlerServer, call_id: int, method: str, **fields: Any) -> None:
    header = Header(
        kind=Kind.REQUEST,
        call_id=call_id,
        service_name="seen",
        method=method,
        timeout_ms=5000,
        caller="broker-1",
        **fields,
    )
    server._request([b"ident", encode(header), encode_value({})])


@pytest.fixture
def logged() -> Any:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def test_the_trace_is_current_while_the_handler_runs_across_its_yields(seen: Any) -> None:
    server, wire, clock = seen
    request(server, 1, "pause", trace_id="t-1")
    request(server, 2, "pause")
    assert CURRENT.get() is None  # not left behind in the server's own context
    clock.advance(1.0)
    assert answers(wire) == [(1, "done"), (2, "done")]
    handler = server.handler
    assert [t.id if t else None for t in handler.traces] == ["t-1", None, "t-1", None]


def test_requests_are_counted_by_method_and_outcome(seen: Any) -> None:
    server, _wire, clock = seen
    request(server, 1, "pause")
    request(server, 2, "refuse")
    request(server, 3, "nope")
    clock.advance(1.0)
    latencies = server.latencies
    assert latencies.count(method="pause", outcome="ok") == 1
    assert latencies.count(method="refuse", outcome="bad_request") == 1
    # A method the handler does not have is one series, whatever its name.
    assert latencies.count(method="(unknown)", outcome="unknown_method") == 1
    (pause,) = [s for labels, s in latencies.series.items() if labels[1] == "pause"]
    assert pause[-1] == pytest.approx(1.0)  # the time it took, on the server's clock


def test_a_traced_request_leaves_spans_and_they_are_exported(seen: Any, logged: Any) -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from mmo.telemetry.otel import export_spans, otel_trace_id

    exporter = InMemorySpanExporter()
    provider = export_spans(None, service="seen", instance="seen-1", exporter=exporter)
    try:
        server, _wire, clock = seen
        request(server, 1, "pause", trace_id="t-2", traced=True)
        request(server, 2, "pause", trace_id="t-3")  # not traced: no span
        clock.advance(1.0)
    finally:
        trace.SPAN_SINKS.remove(provider.sink)
        provider.shutdown()
    spans = [e for e in logged if e.get("log_namespace") == "mmo.trace"]
    assert [(e["trace_id"], e["span"], e["method"], e["outcome"]) for e in spans] == [
        ("t-2", "server", "pause", "ok")
    ]
    assert spans[0]["peer"] == "broker-1" and spans[0]["duration_ms"] == pytest.approx(1000)
    (exported,) = exporter.get_finished_spans()
    assert exported.name == "seen.pause"
    assert exported.context.trace_id == otel_trace_id("t-2")
    assert exported.attributes["mmo.outcome"] == "ok"
    assert exported.resource.attributes["service.instance.id"] == "seen-1"
    assert otel_trace_id("ab" * 16) == int("ab" * 16, 16)
