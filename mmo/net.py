"""Addresses: what a role binds, and what it tells others to connect to.

A role binds one address (``bind-host``: an IP, or ``0.0.0.0`` / ``::`` for every
interface) and advertises another (``advertise-host``: the address other machines
reach it by, an IP or host name, or the name of a network interface such as
``eth0``, whose IPv4 address is used). The registry and the brokerlist only ever
hold advertised addresses, never a wildcard.
"""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct

from mmo.config import ConfigError

__all__ = [
    "LOOPBACK",
    "WILDCARDS",
    "addresses",
    "advertised_host",
    "bind_address",
    "interface_address",
    "with_host",
]

#: What a role binds when told nothing: nothing beyond this machine.
LOOPBACK = "127.0.0.1"

#: Bind addresses meaning "every interface": never something to connect to.
WILDCARDS = frozenset({"0.0.0.0", "::", "*", ""})

_SIOCGIFADDR = 0x8915


def interface_address(name: str) -> str | None:
    """The IPv4 address of network interface ``name`` (Linux), or None if there is no
    such interface or it has no IPv4 address."""
    if name not in {n for _, n in socket.if_nameindex()}:
        return None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            packed = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
        except OSError:
            return None
    return socket.inet_ntoa(packed[20:24])


def bind_address(bind: str | None, advertise: str | None) -> str:
    """The interface a role binds: ``bind`` if given; else the advertised host when that
    is an IP or an interface name (``--advertise-host 10.0.0.5`` alone binds it); else
    :data:`LOOPBACK`.

    Raises:
        ConfigError: only a host name is advertised (it cannot be bound): give bind-host.
    """
    if bind is not None:
        return bind
    if advertise is None:
        return LOOPBACK
    if _is_ip(advertise) or interface_address(advertise) is not None:
        return advertise
    raise ConfigError(
        "bind-host",
        f"advertise-host {advertise!r} is a host name, which cannot be bound: give bind-host "
        "too (an IP or interface of this machine, or 0.0.0.0 for every interface)",
    )


def advertised_host(bind: str | None, advertise: str | None, key: str = "advertise-host") -> str:
    """The host a role tells others to connect to (see :func:`addresses`)."""
    return addresses(bind, advertise, key)[1]


def addresses(
    bind: str | None, advertise: str | None, key: str = "advertise-host"
) -> tuple[str, str]:
    """``(bind host, advertised host)`` of a role: the interface it binds
    (:func:`bind_address`) and the host it tells others to connect to.

    Args:
        bind: what it was told to bind (None: see :func:`bind_address`).
        advertise: what it was told to advertise (a host, an IP, or an interface name),
            or None: then the bound host, unless that is a wildcard.
        key: the setting named in errors.

    Raises:
        ConfigError: only a host name is advertised (see :func:`bind_address`), or a
            wildcard would be advertised.
    """
    bind_host = bind_address(bind, advertise)
    chosen = advertise if advertise is not None else bind_host
    if chosen in WILDCARDS:
        raise ConfigError(
            key,
            f"binding {bind_host or '*'!r} (every interface) needs an address others can "
            "reach: give advertise-host (an IP, a host name, or an interface such as eth0)",
        )
    if not _is_ip(chosen):
        # ZeroMQ binds an interface by name too: advertise its address, never its name.
        address = interface_address(chosen)
        if address is not None:
            return bind_host, address
    return bind_host, chosen


def with_host(endpoint: str, host: str) -> str:
    """A ZeroMQ ``tcp://HOST:PORT`` endpoint with its host replaced by ``host`` (the
    port a wildcard bind got, advertised under a reachable host)."""
    scheme, sep, rest = endpoint.partition("://")
    if scheme != "tcp" or not sep:
        return endpoint
    port = rest.rpartition(":")[2]
    shown = f"[{host}]" if ":" in host else host
    return f"tcp://{shown}:{port}"


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True
