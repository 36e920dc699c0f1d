"""How a client reaches a broker: TCP, TCP + TLS, WebSocket or secure WebSocket.

A broker is named by a URL whose scheme says how: ``tcp://host:port`` (4-byte length +
packet), ``tls://host:port`` (the same inside TLS), ``ws://host:port/`` and
``wss://host:port/`` (one packet per binary WebSocket message). :func:`connector`
makes the :data:`~mmo.client.session.Connector` that understands all four; TLS checks
the broker's certificate against a CA file, or the system's trust store, and its name
(or IP address) against the URL's host.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.internet import defer, ssl
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.interfaces import IHandshakeListener
from twisted.python.failure import Failure
from zope.interface import alsoProvides

from mmo.client.errors import ClientConnectError
from mmo.client.protocol import ClientProtocol

__all__ = ["SCHEMES", "broker_url", "connector", "split_address", "split_url", "trust_root"]

#: The schemes a broker URL may have: transport and whether it is inside TLS.
SCHEMES = {
    "tcp": ("tcp", False),
    "tls": ("tcp", True),
    "ws": ("websocket", False),
    "wss": ("websocket", True),
}


def split_url(url: str) -> tuple[str, str, int]:
    """``(scheme, host, port)`` of a broker URL (``tcp://`` when it has no scheme).

    Raises:
        ValueError: an unknown scheme, or no ``host:port``.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "tcp", url
    if scheme not in SCHEMES:
        raise ValueError(f"unknown broker scheme {scheme!r} in {url!r}: use {', '.join(SCHEMES)}")
    try:
        host, port = split_address(rest.split("/", 1)[0])
    except ValueError:
        raise ValueError(f"expected host:port in {url!r}") from None
    return scheme, host, port


def split_address(address: str) -> tuple[str, int]:
    """Split ``"host:port"`` (the brokerlist's keys) into host and port.

    Raises:
        ValueError: not ``host:port`` with a port in 1..65535.
    """
    host, colon, port_text = address.rpartition(":")
    host = host.strip("[]")
    if not colon or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"expected host:port, got {address!r}")
    return host, int(port_text)


def broker_url(address: str, transport: str, tls: bool) -> str:
    """The URL of broker ``address`` (``host:port``) for ``transport`` (``"tcp"`` or
    ``"websocket"``), inside TLS or not."""
    if transport == "websocket":
        return f"{'wss' if tls else 'ws'}://{address}/"
    return f"{'tls' if tls else 'tcp'}://{address}"


def trust_root(ca_file: str | None) -> Any:
    """What TLS checks brokers' certificates against: the CA certificates in the PEM
    file ``ca_file``, or the system's trust store when None.

    Raises:
        OSError, ValueError: the file cannot be read, or holds no PEM certificate.
    """
    if ca_file is None:
        return ssl.platformTrust()
    with open(ca_file, "rb") as f:
        pem = f.read()
    marker = b"-----BEGIN CERTIFICATE-----"
    certificates = [ssl.Certificate.loadPEM(marker + part) for part in pem.split(marker)[1:]]
    if not certificates:
        raise ValueError(f"{ca_file}: no PEM certificate in it")
    return ssl.trustRootFromCertificates(certificates)


class _WebSocketCarrier:
    """The ``twisted.web.websocket`` protocol that hands messages to a client protocol."""

    def __init__(self, inner: ClientProtocol) -> None:
        self.inner = inner
        #: Fires with the client protocol once it is connected (the WebSocket is open).
        self.ready: defer.Deferred[ClientProtocol] = defer.Deferred()

    def negotiationStarted(self, transport: Any) -> None:
        """The handshake began: the client protocol writes through this transport."""
        self.transport = transport

    def negotiationFinished(self) -> None:
        """The WebSocket is open: connect the client protocol to it, one packet per
        binary message."""
        self.inner.send_frame = self.transport.sendBytesMessage
        self.inner.makeConnection(_WebSocketTransport(self.transport))
        if not self.ready.called:
            self.ready.callback(self.inner)

    def failed(self, failure: Failure) -> None:
        """The WebSocket could not be opened (refused, rejected, TLS): say so."""
        if not self.ready.called:
            self.ready.errback(failure)

    def bytesMessageReceived(self, data: bytes) -> None:
        """One packet."""
        self.inner.stringReceived(bytes(data))

    def textMessageReceived(self, data: str) -> None:
        """Brokers send binary messages only: a text one ends the connection."""
        self.transport.loseConnection()

    def pongReceived(self, payload: bytes) -> None:
        """Unused: the client wire has its own heartbeats."""

    def connectionLost(self, reason: Failure) -> None:
        """Tell the client protocol."""
        if self.inner.transport is not None:
            self.inner.connectionLost(reason)


class _WebSocketTransport:
    """The transport a WebSocket-carried :class:`ClientProtocol` sees: it closes the
    WebSocket and names the peer (packets go out through ``send_frame``)."""

    disconnecting = False

    def __init__(self, websocket: Any) -> None:
        self.websocket = websocket

    def loseConnection(self) -> None:
        """Close the WebSocket."""
        self.disconnecting = True
        self.websocket.loseConnection()

    abortConnection = loseConnection

    def getPeer(self) -> Any:
        """The broker's address."""
        return self.websocket.getPeer()


def connector(reactor: Any, timeout: float = 5.0, ca_file: str | None = None) -> Any:
    """A connector for broker URLs of every scheme (see the module doc).

    Args:
        reactor: the reactor.
        timeout: seconds allowed to connect (and, for WebSocket, to finish the handshake).
        ca_file: PEM file of the CA certificates TLS trusts (None: the system's store).
    """
    trust: list[Any] = []

    def root() -> Any:
        # Read once, when TLS is first used (a client that never uses it needs no CA).
        if not trust:
            trust.append(trust_root(ca_file))
        return trust[0]

    def connect(url: str, protocol: ClientProtocol) -> defer.Deferred[ClientProtocol]:
        try:
            scheme, host, port = split_url(url)
            transport, tls = SCHEMES[scheme]
            if transport == "websocket":
                d = _connect_websocket(reactor, url, protocol, timeout, root() if tls else None)
            else:
                endpoint: Any = TCP4ClientEndpoint(reactor, host, port, timeout=timeout)
                if tls:
                    options = ssl.optionsForClientTLS(host, trustRoot=root())
                    endpoint = wrapClientTLS(options, endpoint)
                    d = _handshaken(reactor, url, protocol, timeout)
                    connectProtocol(endpoint, protocol).addErrback(_fail, d)
                else:
                    d = connectProtocol(endpoint, protocol)
        except (ValueError, OSError) as e:
            return defer.fail(ClientConnectError(f"cannot connect to {url}: {e}"))

        def failed(failure: Failure) -> Any:
            if failure.check(defer.CancelledError, ClientConnectError):
                return failure
            raise ClientConnectError(f"cannot connect to {url}: {failure.getErrorMessage()}")

        return d.addErrback(failed)

    return connect


def _fail(failure: Failure, d: defer.Deferred[Any]) -> None:
    if not d.called:
        d.errback(failure)


def _handshaken(
    reactor: Any, url: str, protocol: ClientProtocol, timeout: float
) -> defer.Deferred[ClientProtocol]:
    """A Deferred firing with ``protocol`` once its TLS handshake is done (the certificate
    checked), failing if the connection ends first: a TCP connection alone proves nothing."""
    done: defer.Deferred[ClientProtocol] = defer.Deferred()

    def completed() -> None:
        if not done.called:
            done.callback(protocol)

    def lost(reason: Any) -> None:
        if not done.called:
            done.errback(ClientConnectError(f"TLS with {url} failed: {reason}"))

    # The TLS layer tells the protocol it wraps when the handshake is done (and the
    # broker's certificate verified); a failed one ends the connection instead.
    cast(Any, protocol).handshakeCompleted = completed
    alsoProvides(protocol, IHandshakeListener)
    protocol.when_closed().addCallback(lost)
    done.addTimeout(timeout, reactor)
    return done


def _connect_websocket(
    reactor: Any, url: str, protocol: ClientProtocol, timeout: float, trust: Any
) -> defer.Deferred[ClientProtocol]:
    from twisted.web.client import BrowserLikePolicyForHTTPS
    from twisted.web.websocket import WebSocketClientEndpoint

    policy = BrowserLikePolicyForHTTPS(trustRoot=trust) if trust is not None else None
    kwargs: dict[str, Any] = {"connectTimeout": int(max(1, timeout))}
    if policy is not None:
        kwargs["tlsPolicy"] = policy
    endpoint = WebSocketClientEndpoint.new(reactor, url, **kwargs)
    carrier = _WebSocketCarrier(protocol)

    class _Factory:
        def buildProtocol(self, uri: str) -> _WebSocketCarrier:
            return carrier

    # The endpoint's Deferred fires just before the carrier hears the handshake is done:
    # what the caller waits for is the carrier's, once the client protocol is connected.
    opened: defer.Deferred[Any] = defer.ensureDeferred(endpoint.connect(_Factory()))
    opened.addErrback(carrier.failed)
    carrier.ready.addTimeout(timeout, reactor)
    return carrier.ready
