"""Handlers for test rigs, with every method open to players: never deploy these.

The examples keep their internal methods to the cluster (the echo service's
sleeping and failing, the player and map services' ``player_id`` arguments,
which a player must not choose). A test that drives them through a broker, as
a load generator or a fault scenario does, runs these instead:
``--handler mmo.testing.handlers:ClientEcho``.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from mmo.examples.echo import EchoService
from mmo.examples.maps import MapService
from mmo.examples.player import PlayerService
from mmo.logic.handler import Context, ServiceHandler

__all__ = ["ClientEcho", "ClientMap", "ClientPlayer", "Relay", "open_to_players"]

_log = Logger()


def open_to_players(handler_class: type[ServiceHandler], name: str) -> type[ServiceHandler]:
    """A subclass of ``handler_class`` named ``name`` whose every method players may call."""
    return type(
        name,
        (handler_class,),
        {
            "__module__": __name__,
            "__doc__": f"{handler_class.__name__} with every method open to players (tests only).",
            "client_methods": frozenset(handler_class.method_names()),
        },
    )


ClientEcho = open_to_players(EchoService, "ClientEcho")
ClientPlayer = open_to_players(PlayerService, "ClientPlayer")
ClientMap = open_to_players(MapService, "ClientMap")


class Relay(ServiceHandler):
    """Logs what it is asked to relay, has the echo service echo it (a nested call), and
    logs the answer: a request that crosses broker, worker and another service, for the
    tests of traces and logs."""

    default_service = "relay"
    client_methods = ("relay",)

    @defer.inlineCallbacks
    def on_relay(self, ctx: Context, text: str = "") -> Any:
        """Echo ``text`` through the echo service."""
        _log.info("relay: asked to relay {text!r}", text=text)
        reply = yield self.get_service("echo").echo(text=text)
        _log.info("relay: echo answered {reply!r}", reply=reply)
        return reply
