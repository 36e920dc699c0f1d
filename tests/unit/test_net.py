"""Addresses a role binds and the ones it advertises (mmo.net): never a wildcard, never a name
of an interface, and a broker URL's parts (mmo.client.transports)."""

from __future__ import annotations

import pytest

from mmo.client.transports import broker_url, split_url
from mmo.config import ConfigError
from mmo.net import advertised_host, bind_address, interface_address, with_host


def test_by_default_a_role_binds_and_advertises_loopback() -> None:
    """Told nothing, a role binds 127.0.0.1 and advertises it."""
    assert bind_address(None, None) == advertised_host(None, None) == "127.0.0.1"


def test_advertising_an_address_alone_binds_it() -> None:
    """--advertise-host 10.0.0.5 alone binds 10.0.0.5 too (an IP can be bound)."""
    assert bind_address(None, "10.0.0.5") == advertised_host(None, "10.0.0.5") == "10.0.0.5"


@pytest.mark.parametrize("wildcard", ["0.0.0.0", "::", "*"])
def test_a_wildcard_bind_needs_an_address_to_advertise(wildcard: str) -> None:
    """Binding every interface, a role must be told what to advertise; then it is that."""
    with pytest.raises(ConfigError, match="advertise-host"):
        advertised_host(wildcard, None)
    assert bind_address(wildcard, "10.0.0.5") == wildcard
    assert advertised_host(wildcard, "10.0.0.5") == "10.0.0.5"


def test_a_host_name_is_advertised_but_cannot_be_bound_alone() -> None:
    """A DNS name is fine to advertise, with bind-host given; alone it is a ConfigError."""
    assert advertised_host("0.0.0.0", "game1.example.net") == "game1.example.net"
    with pytest.raises(ConfigError, match="bind-host"):
        bind_address(None, "game1.example.net")


def test_an_interface_name_is_advertised_as_its_address() -> None:
    """An interface name (bound by ZeroMQ as such) is advertised as its IPv4 address."""
    assert interface_address("lo") == "127.0.0.1"
    assert interface_address("no-such-interface") is None
    assert advertised_host("lo", None) == "127.0.0.1"
    assert advertised_host("0.0.0.0", "lo") == "127.0.0.1"


def test_with_host_keeps_the_port_a_wildcard_bind_got() -> None:
    """tcp://0.0.0.0:41234 is advertised as tcp://HOST:41234 (IPv6 hosts in brackets)."""
    assert with_host("tcp://0.0.0.0:41234", "10.0.0.5") == "tcp://10.0.0.5:41234"
    assert with_host("tcp://[::]:41234", "fd00::5") == "tcp://[fd00::5]:41234"
    assert with_host("ipc:///tmp/x", "10.0.0.5") == "ipc:///tmp/x"


@pytest.mark.parametrize(
    ("url", "parts"),
    [
        ("127.0.0.1:6101", ("tcp", "127.0.0.1", 6101)),
        ("tls://game.example.net:6101", ("tls", "game.example.net", 6101)),
        ("ws://127.0.0.1:6201/", ("ws", "127.0.0.1", 6201)),
        ("wss://[::1]:6201/", ("wss", "::1", 6201)),
    ],
)
def test_broker_urls(url: str, parts: tuple[str, str, int]) -> None:
    """A broker URL's scheme says transport and TLS; host:port alone is plain TCP."""
    assert split_url(url) == parts


@pytest.mark.parametrize("url", ["http://h:1", "tcp://h", "tls://:5", "ws://h:99999/", "h:x"])
def test_bad_broker_urls_are_refused(url: str) -> None:
    """Unknown schemes and missing or bad ports are ValueErrors naming the URL."""
    with pytest.raises(ValueError):
        split_url(url)


def test_broker_url_from_the_brokerlist() -> None:
    """A listed address becomes the URL of the chosen transport, in TLS if listed so."""
    assert broker_url("h:1", "tcp", False) == "tcp://h:1"
    assert broker_url("h:1", "tcp", True) == "tls://h:1"
    assert broker_url("h:2", "websocket", True) == "wss://h:2/"
