"""Reading an HTTP response's body with ``twisted.web.client``.

``twisted.web.client.readBody`` warns (a DeprecationWarning) for a response whose
transport cannot abort, as every small page's body already read is: :func:`read_body`
collects the body the same way without it. The SDK reads the brokerlist with it; the
operators' tools read the processes' pages with it.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, protocol

__all__ = ["read_body"]


class _Body(protocol.Protocol):
    """Collects a response's body."""

    def __init__(self, done: defer.Deferred[bytes]) -> None:
        self.done = done
        self.parts: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self.parts.append(data)

    def connectionLost(self, reason: Any = None) -> None:
        from twisted.web.client import ResponseDone
        from twisted.web.http import PotentialDataLoss

        if self.done.called:
            return
        if reason is None or reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.parts))
        else:
            self.done.errback(reason)


def read_body(response: Any) -> defer.Deferred[bytes]:
    """The body of ``response``; cancelling stops reading it (closes the connection)."""

    def cancel(_: defer.Deferred[bytes]) -> None:
        transport: Any = reader.transport  # the response's producer
        if transport is not None:
            transport.stopProducing()

    done: defer.Deferred[bytes] = defer.Deferred(cancel)
    reader = _Body(done)
    response.deliverBody(reader)
    return done
