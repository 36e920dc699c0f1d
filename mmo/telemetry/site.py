"""The operator listener: ``/metrics`` (Prometheus), ``/healthz`` (alive) and ``/readyz``
(ready to serve, with a JSON body saying why not) on one HTTP port per process.

Metrics are collected in the reactor thread, when scraped: prometheus_client's own
Twisted resource collects in a thread of the reactor's pool, and the sources here are
structures the reactor owns.
"""

from __future__ import annotations

import json
import os
from typing import Any

from prometheus_client.exposition import choose_encoder
from twisted.application.service import Service
from twisted.internet.interfaces import IListeningPort
from twisted.web import resource, server
from typing_extensions import override

from mmo.telemetry.metrics import Telemetry

__all__ = ["OpsListener", "parse_listen"]


def parse_listen(value: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``PORT``, ``HOST:PORT`` or ``[IPv6]:PORT`` as ``(host, port)``; a bare port listens
    on ``default_host`` (loopback). Raises ValueError when it is neither."""
    host, sep, port = value.strip().rpartition(":")
    host = host.strip("[]") if sep else default_host
    if not port.isdigit() or not 0 <= int(port) <= 65535 or not host:
        raise ValueError(f"expected PORT or HOST:PORT, got {value!r}")
    return host, int(port)


class _Page(resource.Resource):
    isLeaf = True

    def __init__(self, render: Any) -> None:
        super().__init__()
        self._render = render

    def render_GET(self, request: server.Request) -> bytes:
        status, content_type, body = self._render(request)
        request.setResponseCode(status)
        request.setHeader(b"content-type", content_type)
        request.setHeader(b"cache-control", b"no-store")
        return body


def _json(status: int, value: Any) -> tuple[int, bytes, bytes]:
    return status, b"application/json", json.dumps(value, sort_keys=True).encode() + b"\n"


class OpsListener(Service):
    """Serves a :class:`Telemetry` over HTTP; sets its ``address`` once listening (so a
    registration started after it can publish it).

    Args:
        telemetry: what to serve.
        host, port: where to listen (port 0: one the system picks).
        advertise_host: the host others scrape it at (default: ``host``).
    """

    def __init__(
        self,
        telemetry: Telemetry,
        host: str,
        port: int,
        *,
        advertise_host: str | None = None,
        reactor: Any = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.telemetry = telemetry
        self.host = host
        self.port = port
        self.advertise_host = advertise_host or host
        self.reactor = reactor
        self.started_at = reactor.seconds()
        self.listening: IListeningPort | None = None
        root = resource.Resource()
        root.putChild(b"metrics", _Page(self._metrics))
        root.putChild(b"healthz", _Page(self._healthz))
        root.putChild(b"readyz", _Page(self._readyz))
        self.root = root

    @override
    def startService(self) -> None:
        """Listen, and say where (a port taken is an error of the start)."""
        super().startService()
        for name, child in self.telemetry.resources.items():
            self.root.putChild(name, child)
        site = server.Site(self.root)
        site.noisy = False
        site.displayTracebacks = False
        site.log = lambda request: None  # type: ignore[method-assign] # no line per scrape
        self.listening = self.reactor.listenTCP(self.port, site, interface=self.host)
        port = getattr(self.listening.getHost(), "port", self.port)
        host = self.advertise_host
        self.telemetry.listening(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")

    @override
    def stopService(self) -> Any:
        """Stop listening."""
        super().stopService()
        if self.listening is not None:
            listening, self.listening = self.listening, None
            return listening.stopListening()
        return None

    def _metrics(self, request: server.Request) -> tuple[int, bytes, bytes]:
        accept = request.getHeader(b"accept") or b""
        encoder, content_type = choose_encoder(accept.decode("latin-1"))
        return 200, content_type.encode(), encoder(self.telemetry.registry)

    def _healthz(self, request: server.Request) -> tuple[int, bytes, bytes]:
        t = self.telemetry
        return _json(
            200,
            {
                "alive": True,
                "role": t.role,
                "instance": t.instance,
                "pid": os.getpid(),
                "uptime": round(self.reactor.seconds() - self.started_at, 3),
            },
        )

    def _readyz(self, request: server.Request) -> tuple[int, bytes, bytes]:
        t = self.telemetry
        ready, checks = t.readiness()
        body = {"ready": ready, "role": t.role, "instance": t.instance, "checks": checks}
        return _json(200 if ready else 503, body)
