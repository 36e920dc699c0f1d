"""Handlers for test rigs, with every method open to players: never deploy these.

The examples keep their internal methods to the cluster (the echo service's
sleeping and failing, the player and map services' ``player_id`` arguments,
which a player must not choose). A test that drives them through a broker, as
a load generator or a fault scenario does, runs these instead:
``--handler mmo.testing.handlers:ClientEcho``.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, task
from twisted.logger import Logger

from mmo.examples.echo import EchoService
from mmo.examples.maps import MapService
from mmo.examples.player import PlayerService
from mmo.logic.handler import Context, ServiceHandler, client_method, idempotent

__all__ = ["ClientEcho", "ClientMap", "ClientPlayer", "Market", "Relay", "open_to_players"]

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


class Market(ServiceHandler):
    """A market of one cluster that others reach through a bridge (the tests of
    :mod:`mmo.bridge`): bids from players (answered, and pushed back to the bidder's
    session wherever it is), a failure with a type of its own, notes pushed to it,
    events it announces, and a slow method for deadlines."""

    default_service = "market"

    def __init__(self, runtime: Any) -> None:
        super().__init__(runtime)
        self.notes: list[str] = []

    @client_method
    def on_bid(self, ctx: Context, item: str, amount: int) -> dict[str, Any]:
        """A player's bid: who made it from where; the bidder is pushed ``market.bid``."""
        session = ctx.session
        if session is not None:
            self.sessions.push(session, "market.bid", {"item": item, "amount": amount})
        return {
            "item": item,
            "amount": amount,
            "user": session.user_id if session else None,
            "broker": session.broker if session else None,
            "caller_role": ctx.caller_role,
        }

    def on_fail(self, ctx: Context) -> None:
        """Fail with an error type of the handler's own."""
        raise LookupError("no such lot")

    def on_note(self, ctx: Context, text: str) -> None:
        """Keep ``text`` (a push target)."""
        self.notes.append(text)

    @idempotent
    def on_notes(self, ctx: Context) -> list[str]:
        """What was noted, in order."""
        return list(self.notes)

    def on_announce(self, ctx: Context, topic: str, payload: Any) -> None:
        """Publish ``payload`` on ``topic`` to the service's subscribers."""
        self.runtime.publish(topic, payload)

    @idempotent
    def on_sleep(self, ctx: Context, seconds: float) -> defer.Deferred[float]:
        """Answer ``seconds`` after that long."""
        return task.deferLater(self.clock, seconds, lambda: seconds)  # type: ignore[arg-type]
