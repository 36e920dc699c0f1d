"""A broker's metrics, from what it already counts (:meth:`Broker.stats`), read when
Prometheus scrapes: nothing is added to the paths of packets but four integers.

The names and labels are listed in docs/operations.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from mmo.telemetry.metrics import Metric, counter, gauge

if TYPE_CHECKING:
    from mmo.broker.core import Broker

__all__ = ["broker_metrics"]

# Counters (mmo.broker.counters) by the family and label value they are exported as;
# any other counter is exported as mmo_broker_events_total{event=NAME}.
_FAMILIES: dict[str, tuple[str, str, str]] = {
    "logins": ("logins", "outcome", "ok"),
    "login_failures": ("logins", "outcome", "failed"),
    "login_timeouts": ("logins", "outcome", "timeout"),
    "resumes": ("resumes", "outcome", "ok"),
    "resume_failures": ("resumes", "outcome", "failed"),
    "resume_bad_tokens": ("resumes", "outcome", "bad_token"),
    "refused_full": ("refusals", "reason", "full"),
    "refused_draining": ("refusals", "reason", "draining"),
    "refused_per_address": ("refusals", "reason", "per_address"),
    "not_logged_in": ("refusals", "reason", "not_logged_in"),
    "unknown_route": ("refusals", "reason", "unknown_route"),
    "rate_limited": ("refusals", "reason", "rate_limited"),
    "bad_packets": ("refusals", "reason", "bad_packet"),
    "too_large": ("refusals", "reason", "too_large"),
    "channel_name_too_long": ("refusals", "reason", "channel_name_too_long"),
    "channels_over_limit": ("refusals", "reason", "channels_over_limit"),
    "broadcasts_over_sender_budget": ("refusals", "reason", "sender_budget"),
    "broadcasts_over_channel_budget": ("refusals", "reason", "channel_budget"),
    "slow_consumers": ("closes", "reason", "slow_reader"),
    "floods": ("closes", "reason", "flood"),
    "idle_kicks": ("closes", "reason", "idle"),
    "kicks": ("closes", "reason", "kicked"),
    "requests": ("forwarded", "kind", "request"),
    "notifies": ("forwarded", "kind", "notify"),
    "notify_errors": ("request_errors", "code", "notify"),
}
_HELP = {
    "logins": "Logins, by outcome (ok, failed: refused by the auth service, timeout).",
    "resumes": "Session resumes, by outcome (ok, failed, bad_token).",
    "refusals": "Packets, connections and joins refused, by reason.",
    "closes": "Connections the broker closed, by reason (slow_reader, flood, idle, kicked).",
    "forwarded": "Players' packets forwarded to services, by kind (request, notify).",
    "request_errors": "Forwarded packets that came back as an error, by the ClientError code.",
    "events": "Other events the broker counts, by name.",
}
_LABELS = {"events": "event"}


def broker_metrics(broker: Broker) -> Iterator[Metric]:
    """The broker's metrics (a metrics source)."""
    table = broker.table
    yield gauge("mmo_broker_connections", "Client connections open.", (), len(table.connections))
    yield gauge("mmo_broker_sessions", "Logged-in sessions.", (), len(table.sessions))
    yield gauge("mmo_broker_channels", "Channels with members here.", (), len(table.channels))
    yield gauge(
        "mmo_broker_requests_in_flight",
        "Players' requests forwarded and not answered yet.",
        (),
        broker.in_flight.count,
    )
    yield gauge(
        "mmo_broker_outbound_queue_bytes",
        "Bytes waiting for clients to read them, over every connection.",
        (),
        sum(conn.carrier.queued() for conn in table.connections),
    )
    direction = ("direction",)
    yield counter(
        "mmo_broker_packets",
        "Client packets read (in) and written (out).",
        direction,
        [(("in",), broker.packets_in), (("out",), broker.packets_out)],
    )
    yield counter(
        "mmo_broker_bytes",
        "Bytes of client packets read (in) and written (out), without framing.",
        direction,
        [(("in",), broker.bytes_in), (("out",), broker.bytes_out)],
    )
    counters = broker.counters
    yield counter(
        "mmo_broker_connections_opened",
        "Client connections accepted.",
        (),
        counters["connections_opened"],
    )
    yield counter(
        "mmo_broker_broadcasts", "Broadcasts fanned out here.", (), counters["broadcasts"]
    )
    yield counter(
        "mmo_broker_broadcast_deliveries",
        "Packets delivered by broadcasts (fan-out: per broadcast, this over broadcasts).",
        (),
        counters["broadcast_deliveries"],
    )
    yield counter(
        "mmo_broker_pushes",
        "Packets pushed to sessions, by pushes and broadcasts.",
        (),
        counters["pushes"],
    )
    families: dict[str, list[tuple[tuple[str, ...], float]]] = {name: [] for name in _HELP}
    for name, n in counters.items():
        if name in ("connections_opened", "broadcasts", "broadcast_deliveries", "pushes"):
            continue
        if name in _FAMILIES:
            family, _, value = _FAMILIES[name]
        elif name.startswith("errors_"):
            family, value = "request_errors", name[len("errors_") :]
        else:
            family, value = "events", name
        families[family].append(((value,), n))
    for family, values in families.items():
        label = _LABELS.get(family) or next(
            (lbl for f, lbl, _ in _FAMILIES.values() if f == family), "code"
        )
        yield counter(f"mmo_broker_{family}", _HELP[family], (label,), values)
