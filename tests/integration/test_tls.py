"""Players over TLS: brokers with a certificate from a throwaway CA, the brokerlist saying
which addresses speak TLS, and the SDK (and ``mmo chat``) checking the broker against the CA.

Two brokers: one given ``--tls-cert``/``--tls-key`` (TCP + TLS and WSS, on ports the
system picks: the registry gets the real ones), one with a Twisted ``ssl:`` endpoint.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import trustme
from twisted.internet import reactor

from mmo.client import Client
from mmo.client.errors import ClientConnectError
from mmo.testing import free_port
from mmo.testing.rawclient import RawClient
from mmo.wire import WireError

from .conftest import until, wait_until
from .edge import EdgeCluster

pytestmark = pytest.mark.timeout(120)

MMO = [sys.executable, "-c", "from mmo.cli import main; main()"]


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A throwaway CA, a broker certificate for 127.0.0.1 and localhost, and another CA."""
    where = tmp_path_factory.mktemp("tls")
    authority = trustme.CA()
    cert = authority.issue_cert("127.0.0.1", "localhost")
    paths = {
        "ca": where / "ca.pem",
        "cert": where / "broker-chain.pem",
        "key": where / "broker-key.pem",
        "other_ca": where / "other-ca.pem",
    }
    authority.cert_pem.write_to_path(str(paths["ca"]))
    cert.private_key_pem.write_to_path(str(paths["key"]))
    paths["cert"].write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    trustme.CA().cert_pem.write_to_path(str(paths["other_ca"]))
    return paths


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory, ca: dict[str, Path]) -> Iterator[EdgeCluster]:
    """The edge cluster's workers, a broker with --tls-cert (TCP and WebSocket on port 0)
    and a broker with an ``ssl:`` endpoint."""
    cluster = EdgeCluster(tmp_path_factory.mktemp("tls-edge"), brokers=0)
    try:
        common = ["--yellow", cluster.yellow, "--route", "fight=fight-worker"]
        cluster._start(
            "broker-tls",
            "mmo-broker",
            [
                *common,
                *("--instance-id", "broker-tls"),
                *("--listen", "tcp:0:interface=127.0.0.1"),
                *("--websocket", "tcp:0:interface=127.0.0.1"),
                *("--tls-cert", str(ca["cert"]), "--tls-key", str(ca["key"])),
            ],
            {},
        )
        ssl_port = free_port()
        cluster.ssl_port = ssl_port  # type: ignore[attr-defined]
        endpoint = f"ssl:{ssl_port}:interface=127.0.0.1:privateKey={ca['key']}:certKey={ca['cert']}"
        cluster._start(
            "broker-ssl",
            "mmo-broker",
            [*common, "--instance-id", "broker-ssl", "--listen", endpoint],
            {},
        )

        def listed() -> bool:
            try:
                listing = cluster.brokerlist()
            except OSError:
                return False  # not serving yet
            return len(listing["brokerList"]) == 2 and bool(listing["websocketList"])

        try:
            wait_until(listed, what="both brokers listed", interval=0.2)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{cluster.logs()}") from None
        yield cluster
    finally:
        cluster.stop()


def test_the_brokerlist_lists_real_ports_and_which_speak_tls(edge: EdgeCluster) -> None:
    """Brokers listening on port 0 and on an ``ssl:`` endpoint are listed with the ports
    they got (never 0 or a scheme name), and every one of those addresses as TLS."""
    listing = edge.brokerlist()
    addresses = [*listing["brokerList"], *listing["websocketList"]]
    assert len(addresses) == 3
    for address in addresses:
        host, _, port = address.rpartition(":")
        assert host == "127.0.0.1" and port.isdigit() and int(port) > 0, address
    assert f"127.0.0.1:{edge.ssl_port}" in listing["brokerList"]  # type: ignore[attr-defined]
    assert sorted(listing["tls"]) == sorted(addresses)


@pytest_twisted.inlineCallbacks
def test_the_sdk_logs_in_over_tls_and_wss_checking_the_ca(
    edge: EdgeCluster, ca: dict[str, Path]
) -> Any:
    """Over TCP + TLS and over WSS, each broker chosen from the brokerlist, the SDK checks
    the certificate against the CA, logs in, and chats: one message reaches both players."""
    clients = [
        Client(reactor, brokerlist=edge.brokerlist_url, ca_file=str(ca["ca"])),
        Client(
            reactor, brokerlist=edge.brokerlist_url, ca_file=str(ca["ca"]), transport="websocket"
        ),
    ]
    heard: list[list[Any]] = [[], []]
    try:
        for n, (client, user) in enumerate(zip(clients, ["alice", "bob"], strict=True)):
            yield client.connect()
            yield client.login(user=user, password=f"pw-{user}")
            client.on("chat.message", lambda route, body, n=n: heard[n].append(body["content"]))
            yield client.request("chat.join", {"room": "secure"})
        clients[0].notify("chat.send", {"content": "over tls"})
        yield until(lambda: all(heard), what="both players hearing the message")
        assert heard == [["over tls"], ["over tls"]]
    finally:
        for client in clients:
            yield client.close()


@pytest_twisted.inlineCallbacks
def test_a_broker_the_ca_did_not_sign_is_refused(edge: EdgeCluster, ca: dict[str, Path]) -> Any:
    """A client trusting another CA refuses the broker's certificate, over TLS and WSS: it
    never logs in."""
    for transport in ("tcp", "websocket"):
        client = Client(
            reactor,
            brokerlist=edge.brokerlist_url,
            ca_file=str(ca["other_ca"]),
            transport=transport,
        )
        with pytest.raises(ClientConnectError):
            yield client.connect()
        assert client.state == "closed"


def test_mmo_chat_over_tls(edge: EdgeCluster, ca: dict[str, Path]) -> None:
    """``mmo chat --ca-file`` logs in through the brokerlist over TLS and sees its own line."""
    chat = subprocess.run(
        [
            *(*MMO, "chat", "--brokerlist", edge.brokerlist_url, "--ca-file", str(ca["ca"])),
            *("--user", "carol", "--password", "pw-carol", "--room", "hall"),
        ],
        input="hello over tls\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert chat.returncode == 0, chat.stdout + chat.stderr
    assert "carol: hello over tls" in chat.stdout, chat.stdout


def test_a_plain_client_cannot_log_in_on_a_tls_port(edge: EdgeCluster) -> None:
    """The plain client wire sent to a TLS port gets no login (the handshake fails and the
    connection ends), and the broker goes on serving."""
    for address in edge.brokerlist()["brokerList"]:
        client = RawClient(int(address.rpartition(":")[2]), timeout=3)
        try:
            with pytest.raises((ConnectionError, TimeoutError, AssertionError, WireError)):
                client.login("dave", "pw-dave")
        finally:
            client.close()
    assert len(edge.brokerlist()["brokerList"]) == 2
