"""Configuration of a bridge process (``twistd mmo-bridge``, TOML section ``[bridge]``)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from mmo.config import ConfigError, check_zmq_address
from mmo.net import advertised_host

#: A cluster's name: what prefixes its services elsewhere (``eu:auction``).
CLUSTER_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


@dataclass(frozen=True)
class BridgeConfig:
    """Settings of one bridge process of a cluster (docs/bridge.md).

    Attributes:
        yellow: addresses of this cluster's yellows.
        cluster: this cluster's name; its exported services are ``CLUSTER:SERVICE`` in
            the others.
        listen: the ZeroMQ address the other clusters' bridges connect to
            (``tcp://0.0.0.0:7100``).
        peers: the other clusters' bridges, by cluster name: their addresses,
            comma-separated (several bridges of one cluster: fail-over).
        exports: the services of this cluster the others may call, push to and
            subscribe to.
        channels: prefixes of the channels whose broadcasts cross to the others
            (``realm:`` makes ``realm:world`` one channel across clusters).
        link_keys: a keys directory (``mmo keys DIR``) for the links between clusters:
            its keypair is this bridge's, ``authorized/NAME.key`` the public key of the
            bridges of cluster NAME (the only ones it accepts and talks to). Unset: the
            links run in the clear, which only ``--insecure`` or ``MMO_DEMO=1`` allow.
        instance_id: this bridge's instance id (default ``$MMO_NAME``, else
            ``bridge-host-pid``).
        bind_host, advertise_host: the interface the sockets it serves this cluster on
            bind, and the host the registry lists (as ``mmo-worker``'s).
        heartbeat: seconds between registry heartbeats and link hellos.
        link_timeout: seconds without a word from a peer bridge before its link is
            taken for dead (its calls in flight fail, or go to another bridge).
        hop_margin: seconds a forwarded call's deadline loses at each bridge (for the
            answer's way back).
    """

    yellow: tuple[str, ...]
    cluster: str
    listen: str
    peers: dict[str, str] = field(default_factory=dict)
    exports: tuple[str, ...] = ()
    channels: tuple[str, ...] = ()
    link_keys: str | None = None
    instance_id: str | None = None
    bind_host: str | None = None
    advertise_host: str | None = None
    heartbeat: float = 1.0
    link_timeout: float = 3.0
    hop_margin: float = 0.05

    def validate(self) -> None:
        """Check values against each other."""
        if not self.yellow:
            raise ConfigError("yellow", "at least one yellow address is required")
        for address in self.yellow:
            check_zmq_address("yellow", address)
        if not CLUSTER_NAME.match(self.cluster):
            raise ConfigError("cluster", f"{self.cluster!r}: lowercase letters, digits, - or _")
        check_zmq_address("listen", self.listen)
        if not self.peers:
            raise ConfigError("peer", "at least one other cluster's bridge (NAME=ADDRESS)")
        for name in self.peers:
            if not CLUSTER_NAME.match(name) or name == self.cluster:
                raise ConfigError("peer", f"{name!r} is not another cluster's name")
            addresses = self.peer_addresses(name)
            if not addresses:
                raise ConfigError("peer", f"{name}: no address")
            for address in addresses:
                check_zmq_address("peer", address)
        for service in self.exports:
            if not service or ":" in service:
                raise ConfigError("export", f"{service!r} is not a service of this cluster")
        if not 0.05 <= self.heartbeat <= 20:
            raise ConfigError("heartbeat", "must be between 0.05 and 20 seconds")
        if self.link_timeout < 2 * self.heartbeat:
            raise ConfigError("link-timeout", "must be at least two heartbeats")
        if not 0 <= self.hop_margin < 1:
            raise ConfigError("hop-margin", "must be between 0 and 1 second")
        advertised_host(self.bind_host, self.advertise_host)

    def peer_addresses(self, cluster: str) -> list[str]:
        """The addresses of cluster ``cluster``'s bridges."""
        return [a.strip() for a in self.peers.get(cluster, "").split(",") if a.strip()]
