"""Handlers for test rigs, with every method open to players: never deploy these.

The examples keep their internal methods to the cluster (the echo service's
sleeping and failing, the player and map services' ``player_id`` arguments,
which a player must not choose). A test that drives them through a broker, as
a load generator or a fault scenario does, runs these instead:
``--handler mmo.testing.handlers:ClientEcho``.
"""

from __future__ import annotations

from mmo.examples.echo import EchoService
from mmo.examples.maps import MapService
from mmo.examples.player import PlayerService
from mmo.logic.handler import ServiceHandler

__all__ = ["ClientEcho", "ClientMap", "ClientPlayer", "open_to_players"]


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
