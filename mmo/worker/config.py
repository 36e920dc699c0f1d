"""Configuration of a logic worker process."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mmo.config import ConfigError, check_zmq_address
from mmo.data.urls import parse_cache_url, parse_database_url
from mmo.logic.memo import MEMO_TTL
from mmo.net import advertised_host


@dataclass(frozen=True)
class WorkerConfig:
    """Settings of ``twistd mmo-worker`` (TOML section ``[worker]``).

    Attributes:
        yellow: addresses of the yellows (registered with all, watched on one).
        handler: the handler class, ``module:Class``.
        service: the service name (default: the handler's ``service_name``).
        instance_id: this instance's id in the registry (default: ``$MMO_NAME``, which
            ``mmo-cluster`` sets to the child's name, else ``service-host-pid``).
        bind_host: interface the worker's sockets bind (ports are picked by the system;
            ``0.0.0.0`` for every interface, then ``advertise_host`` is needed); by
            default the advertised host if it is an IP or interface, else ``127.0.0.1``.
        advertise_host: the host (IP, host name, or interface name such as ``eth0``) the
            registry lists for the worker's sockets (default: ``bind_host``).
        heartbeat: seconds between registry heartbeats (gone after 3 missed).
        drain_timeout: seconds a graceful stop waits for calls in flight.
        call_timeout: default deadline of calls this worker makes, in seconds.
        database: the database URL (``sqlite:///data/mmo.db``, ``postgresql://...``;
            see :mod:`mmo.data.urls`), or None for none; its migrations are applied
            before the handler starts.
        cache: the cache URL (``memory://``, ``redis://...``, ``redis-shards://...``,
            ``sentinel://...``, ``twemproxy://...``), or None: then ``memory://`` when the
            database is SQLite (the embedded pair of one machine), else no cache.
        memo_ttl: seconds the outcome of a non-idempotent client request is kept, so
            that a resend of it (same session and seq) is answered without running
            again (:mod:`mmo.logic.memo`); 0 turns the memo off.
        memo_size: the most outcomes kept (the oldest go first).
        settings: the handler's settings (TOML table ``[worker.settings]``, or
            ``--set NAME=VALUE``), checked against its ``Settings`` class before start.
    """

    yellow: tuple[str, ...]
    handler: str
    service: str | None = None
    instance_id: str | None = None
    bind_host: str | None = None
    advertise_host: str | None = None
    heartbeat: float = 1.0
    drain_timeout: float = 10.0
    call_timeout: float = 5.0
    database: str | None = None
    cache: str | None = None
    memo_ttl: float = MEMO_TTL
    memo_size: int = 100_000
    settings: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Check values against each other."""
        if not self.yellow:
            raise ConfigError("yellow", "at least one yellow address is required")
        for address in self.yellow:
            check_zmq_address("yellow", address)
        if ":" not in self.handler:
            raise ConfigError("handler", f"expected module:Class, got {self.handler!r}")
        if not 0.05 <= self.heartbeat <= 20:
            raise ConfigError("heartbeat", "must be between 0.05 and 20 seconds")
        if self.drain_timeout < 0 or self.call_timeout <= 0:
            raise ConfigError("call-timeout", "timeouts must be positive")
        if self.memo_ttl < 0 or self.memo_size < 1:
            raise ConfigError("memo-ttl", "memo-ttl must be >= 0 (0: off), memo-size >= 1")
        advertised_host(self.bind_host, self.advertise_host)
        if self.database is not None:
            parse_database_url(self.database, "database")
        if self.cache is not None:
            parse_cache_url(self.cache, "cache")

    def cache_url(self) -> str | None:
        """The cache to use: ``cache``, else ``memory://`` beside a SQLite database."""
        if self.cache is not None:
            return self.cache
        if self.database is not None and parse_database_url(self.database).kind == "sqlite":
            return "memory://"
        return None
