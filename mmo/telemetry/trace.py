"""Trace ids: which client request a piece of work serves.

A broker gives every client REQUEST and NOTIFY a trace id (or takes the client's own,
``Packet.trace``); it travels in the internal envelope (``Header.trace_id``) to the worker,
whose server sets it as :data:`CURRENT` while the handler runs. The calls, pushes and
broadcasts the handler makes carry it on (:func:`header_fields`), and every log event
emitted meanwhile has it (:func:`mmo.telemetry.logs.record`). Twisted copies the context
into ``inlineCallbacks`` generators and coroutines when they start, so the trace follows a
handler across its ``yield``\\ s; a callback added to a plain Deferred runs in the context of
whatever fires it.

A traced request (``Header.traced``: the client asked for it, or the broker sampled it)
also leaves a *span* log event at every hop: what ran where, when and how long, which
``mmo trace ID`` puts together from the log collector.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, NamedTuple

from twisted.logger import Logger

__all__ = [
    "CURRENT",
    "SPAN_SINKS",
    "Trace",
    "client_trace",
    "from_header",
    "header_fields",
    "new_trace_id",
    "span",
]


class Trace(NamedTuple):
    """The trace a piece of work belongs to.

    Attributes:
        id: 32 hex digits (a W3C / OpenTelemetry trace id), or the client's own id.
        traced: every hop records a span.
    """

    id: str
    traced: bool = False

    def fields(self) -> dict[str, Any]:
        """The ``Header`` fields carrying this trace."""
        return {"trace_id": self.id, "traced": True} if self.traced else {"trace_id": self.id}


#: The trace of the request being served, if any.
CURRENT: ContextVar[Trace | None] = ContextVar("mmo_trace", default=None)

# Unique across processes without a random draw per request: 16 random hex digits per
# process, then a counter.
_PREFIX = os.urandom(8).hex()
_COUNTER = itertools.count(1)
_CLIENT_TRACE = re.compile(r"[0-9A-Za-z_-]{1,64}")


def new_trace_id() -> str:
    """A new trace id: 32 hex digits, unique across processes."""
    return f"{_PREFIX}{next(_COUNTER) & 0xFFFFFFFFFFFFFFFF:016x}"


def client_trace(value: Any) -> str | None:
    """A client's own trace id if it is well formed (1-64 of ``[0-9A-Za-z_-]``), else None."""
    if isinstance(value, str) and _CLIENT_TRACE.fullmatch(value):
        return value
    return None


def header_fields(trace: Trace | None = None) -> dict[str, Any]:
    """The ``Header`` fields carrying ``trace`` (default: the current one)."""
    if trace is None:
        trace = CURRENT.get()
    return trace.fields() if trace is not None else {}


def from_header(header: Any) -> Trace | None:
    """The trace a received ``Header`` carries, if any."""
    trace_id = header.trace_id
    if trace_id is None:
        return None
    return Trace(trace_id, bool(header.traced))


_spans = Logger(namespace="mmo.trace")

#: Called with each span's record (a dict) as well as logged: the OpenTelemetry exporter
#: adds itself here when configured (:mod:`mmo.telemetry.otel`).
SPAN_SINKS: list[Callable[[dict[str, Any]], None]] = []


def span(
    trace: Trace, side: str, service: str, method: str, outcome: str, seconds: float, peer: str
) -> None:
    """Record one hop of a traced request: a ``client`` call made (``peer``: the instance
    called) or a ``server`` call served (``peer``: the caller), ending now after
    ``seconds``. It is a log event (namespace ``mmo.trace``) the log collector keeps and
    ``mmo trace ID`` reads."""
    fields = {
        "trace_id": trace.id,
        "span": side,
        "service": service,
        "method": method,
        "outcome": outcome,
        "duration_ms": round(seconds * 1000, 3),
        "peer": peer,
    }
    _spans.info("span {span} {service}.{method} {outcome} in {duration_ms} ms ({peer})", **fields)
    for sink in SPAN_SINKS:
        sink(fields)
