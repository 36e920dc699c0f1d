"""Configuration of a broker process."""

from __future__ import annotations

from dataclasses import dataclass, field

from mmo.config import ConfigError, check_zmq_address
from mmo.net import WILDCARDS, advertised_host


@dataclass(frozen=True)
class BrokerConfig:
    """Settings of ``twistd mmo-broker`` (TOML section ``[broker]``; see docs/edge.md).

    Attributes:
        yellow: addresses of the yellows.
        listen: Twisted endpoint for TCP clients (4-byte length + Thrift packet): any
            server endpoint description (``tcp:6100:interface=...``, ``ssl:...``,
            ``tcp6:...``); port 0 picks a free one (the registry gets the real one).
        websocket: Twisted endpoint for WebSocket clients (one packet per binary message).
        bind_host: the interface the internal ZeroMQ endpoint binds (logic's pushes come
            in there): default the advertised host if it is an IP or interface, else
            127.0.0.1; ``0.0.0.0`` for every interface.
        advertise_host: the host (or interface name) the registry lists for the internal
            endpoint, which other machines' workers connect to (default: ``bind_host``).
        public_host: the host clients are told to connect to (brokerlist): default the
            interface a listener listens on, or ``advertise_host`` if that is every one.
        tls_cert: a PEM certificate (chain) file; with ``tls_key``, both client listeners
            speak TLS (TCP + TLS, and WSS), and the brokerlist says so.
        tls_key: the PEM private key file of ``tls_cert``.
        instance_id: the broker's id in the registry.
        login_route: the route of the login request (service.method).
        anonymous_routes: routes served before login, without a session.
        routes: route prefix -> service name, where they differ.
        max_frame: largest client frame accepted, in bytes.
        login_timeout: seconds a new connection has to log in.
        heartbeat: seconds between client heartbeats (told to the client).
        idle_timeout: seconds without a packet before the connection is closed.
        rate: packets per second a session may send on average.
        burst: packets a session may send at once.
        max_outbound: bytes queued for one client before it is disconnected.
        capacity: sessions this broker takes; load = sessions / capacity.
        max_per_address: connections one client address (IP) may hold open at once;
            more are refused (``ERROR UNAVAILABLE``, close). 0: no cap.
        request_timeout: deadline of a forwarded request, in seconds.
        registry_heartbeat: seconds between registry heartbeats.
        drain_timeout: seconds a graceful stop waits for requests in flight.
        listen_routes: the routes TCP clients may use, as shell-style patterns
            (``chat.*``); ``*`` is every route the handlers declare for players.
            Patterns only narrow: what no handler declares stays refused.
        websocket_routes: the same for WebSocket clients.
        max_channels: channels one session may be in; a join past it is refused.
        max_channel_name: longest channel name, in bytes.
        channel_budget: bytes per second one channel's broadcasts may fan out to
            its members at this broker (burst: one second's worth); over it,
            broadcasts to that channel are dropped.
        sender_rate: broadcasts per second made for one sender (the session logic
            names as the cause of a broadcast) that this broker fans out.
        sender_burst: broadcasts one sender may cause at once.
        trace_sample: the share of players' requests traced at every hop (a span per
            hop, for ``mmo trace``), 0 to 1; a request carrying the client's own trace
            id is always traced.
        serve: service -> handler (``module:Class``) hosted in the broker's process
            (co-located: its players' requests for it are served in process, no
            ZeroMQ on the way; it is registered like any worker, instance
            ``<broker id>.<service>``, so others reach it too, and other instances of
            the service take calls when it is busy: docs/benchmarks.md).
    """

    yellow: tuple[str, ...]
    listen: str = "tcp:6100:interface=127.0.0.1"
    websocket: str | None = None
    bind_host: str | None = None
    advertise_host: str | None = None
    public_host: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    instance_id: str | None = None
    login_route: str = "sso.login"
    anonymous_routes: tuple[str, ...] = ("sso.register",)
    routes: dict[str, str] = field(default_factory=dict)
    max_frame: int = 4096
    login_timeout: float = 5.0
    heartbeat: float = 10.0
    idle_timeout: float = 30.0
    rate: float = 100.0
    burst: int = 200
    max_outbound: int = 1024 * 1024
    capacity: int = 10_000
    max_per_address: int = 256
    request_timeout: float = 5.0
    registry_heartbeat: float = 1.0
    drain_timeout: float = 5.0
    listen_routes: tuple[str, ...] = ("*",)
    websocket_routes: tuple[str, ...] = ("*",)
    max_channels: int = 32
    max_channel_name: int = 128
    channel_budget: int = 2 * 1024 * 1024
    sender_rate: float = 20.0
    sender_burst: int = 40
    trace_sample: float = 0.0
    serve: dict[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        """Check values against each other."""
        if not 0.0 <= self.trace_sample <= 1.0:
            raise ConfigError("trace-sample", "must be between 0 and 1")
        if not self.yellow:
            raise ConfigError("yellow", "at least one yellow address is required")
        for address in self.yellow:
            check_zmq_address("yellow", address)
        if "." not in self.login_route:
            raise ConfigError("login-route", "must be service.method")
        if not 64 <= self.max_frame <= 16 * 1024 * 1024:
            raise ConfigError("max-frame", "must be between 64 bytes and 16 MiB")
        for key in ("login_timeout", "heartbeat", "idle_timeout", "rate", "request_timeout"):
            if getattr(self, key) <= 0:
                raise ConfigError(key.replace("_", "-"), "must be positive")
        if self.idle_timeout <= self.heartbeat:
            raise ConfigError("idle-timeout", "must be longer than heartbeat")
        if self.burst < 1 or self.capacity < 1 or self.max_outbound < self.max_frame:
            raise ConfigError("burst", "burst and capacity >= 1, max-outbound >= max-frame")
        if self.max_per_address < 0:
            raise ConfigError("max-per-address", "must be >= 0 (0: no cap)")
        for prefix, service in self.routes.items():
            if not isinstance(service, str) or not service:
                raise ConfigError(f"routes.{prefix}", "must name a service")
        for service, handler in self.serve.items():
            if not service or not isinstance(handler, str) or ":" not in handler:
                raise ConfigError(f"serve.{service}", "SERVICE=module:HandlerClass")
        for key in ("listen_routes", "websocket_routes"):
            patterns = getattr(self, key)
            if not patterns or not all(patterns):
                raise ConfigError(key.replace("_", "-"), "give one or more patterns (* for all)")
        advertised_host(self.bind_host, self.advertise_host)
        if self.public_host in WILDCARDS:
            raise ConfigError("public-host", "must be an address clients can reach")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("tls-cert", "give both tls-cert and tls-key, or neither")
        if self.max_channels < 1 or self.max_channel_name < 1:
            raise ConfigError("max-channels", "max-channels and max-channel-name must be >= 1")
        if self.channel_budget < 1 or self.sender_rate <= 0 or self.sender_burst < 1:
            raise ConfigError(
                "channel-budget", "channel-budget >= 1 byte/s, sender-rate > 0, sender-burst >= 1"
            )
