"""The Python game-client SDK: reach an mmo cluster through its brokers.

:class:`Client` is the object a game (or a test) uses: connect through the brokerlist,
log in, request, notify, receive pushes, and survive a broker's death by resuming the
session elsewhere. :class:`ClientProtocol` is one connection, for those who manage
connections themselves. The wire is described in ``docs/edge.md``.
"""

from mmo.client.errors import (
    ClientConnectError,
    ClientDisconnected,
    ClientException,
    ClientRequestError,
    ClientTimeout,
)
from mmo.client.protocol import ANY_ROUTE, ClientProtocol, Listeners
from mmo.client.session import Client, parse_brokerlist, pick_broker

__all__ = [
    "ANY_ROUTE",
    "Client",
    "ClientConnectError",
    "ClientDisconnected",
    "ClientException",
    "ClientProtocol",
    "ClientRequestError",
    "ClientTimeout",
    "Listeners",
    "parse_brokerlist",
    "pick_broker",
]
