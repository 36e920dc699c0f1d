"""Players for ``tests/integration/test_netns.py``, run inside the players' host.

Run as ``ip netns exec <ns> python -m tests.integration.netns_player --brokerlist URL
--yellow ADDRESS``. One process plays every player of the test, each a real
:class:`mmo.client.Client` (reconnect + resume), and watches the registry the way an
operator's ``mmo services`` would (a :class:`~mmo.logic.Directory` holding the cluster's
CURVE keys from ``$MMO_CURVE_KEYS``).

The test drives it through pipes, one JSON object per line:

- stdin: commands ``{"id": n, "cmd": NAME, ...arguments}`` (see the ``cmd_<name>``
  methods of :class:`Driver`); several may run at once;
- stdout: each command's answer ``{"id": n, "ok": true, "result": ...}`` or
  ``{"id": n, "ok": false, "error": "Type: message"}``, and events ``{"event": NAME,
  "t": ..., ...}``: ``registry`` (an instance went UP or DOWN in the registry),
  ``resumed`` (a player's session was resumed on another connection), ``moved`` (a
  player dropped its connection to be moved elsewhere), ``closed`` (a player's client
  ended).

Every time is ``time.monotonic()`` of this machine: the same clock as the test's (network
namespaces share it). Logs go to stderr. The process is bounded: it exits when stdin
closes, on ``quit``, or after ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from twisted.internet import defer, stdio, task
from twisted.logger import Logger, globalLogBeginner, textFileLogObserver
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

from mmo.client import Client, ClientException, ClientRequestError, ClientTimeout
from mmo.client.errors import ClientDisconnected
from mmo.client.session import http_fetcher, parse_brokerlist
from mmo.logic import connect
from mmo.registry import Change
from mmo.wire import from_value

log = Logger()

#: Error kinds after which a probing player moves to another broker (when asked to).
MOVE_ON = ("UNAVAILABLE", "TIMEOUT")


def now() -> float:
    """The shared clock (``time.monotonic()``)."""
    return time.monotonic()


def error_kind(error: BaseException) -> str:
    """What a player saw: the broker's code (``"UNAVAILABLE"``, ``"TIMEOUT"``...), or
    ``"CLIENT_TIMEOUT"`` (no answer at all within the request's deadline),
    ``"DISCONNECTED"``, else the exception's class."""
    if isinstance(error, ClientRequestError):
        return error.name
    if isinstance(error, ClientTimeout):
        return "CLIENT_TIMEOUT"
    if isinstance(error, ClientDisconnected):
        return "DISCONNECTED"
    return type(error).__name__


def sleep(reactor: Any, seconds: float) -> defer.Deferred[None]:
    """Let the reactor run for ``seconds`` (pacing, not synchronisation)."""
    return task.deferLater(reactor, seconds, lambda: None)


@dataclass
class Outcome:
    """One probe request.

    Attributes:
        user: who sent it.
        broker: the broker the player was on when it was sent.
        t0: when it was sent.
        t1: when it ended (answered, failed or timed out).
        ok: answered with the right reply.
        kind: ``"OK"`` or the :func:`error_kind` of its failure.
        message: the error's text (cut short), for the report.
    """

    user: str
    broker: str | None
    t0: float
    t1: float = 0.0
    ok: bool = False
    kind: str = ""
    message: str = ""


class Player:
    """One player: a :class:`~mmo.client.Client` and what it received.

    Args:
        driver: the driver (for events and the reactor).
        user: the account (password ``pw-<user>``).
        broker: ``host:port`` of the broker its first connection goes to (None: the
            brokerlist's least loaded).
        timeout: default deadline of its requests (seconds).
    """

    def __init__(self, driver: Driver, user: str, broker: str | None, timeout: float) -> None:
        self.driver = driver
        self.user = user
        self.client = Client(
            driver.reactor, brokerlist=driver.brokerlist, broker=broker, request_timeout=timeout
        )
        #: chat.message contents heard, with how often.
        self.heard: Counter[str] = Counter()
        #: fight.* pushes, in order: (route, body).
        self.fight_pushes: list[tuple[str, Any]] = []
        #: (when, broker) of each resume.
        self.resumes: list[tuple[float, str | None]] = []
        self.client.on("*", self._pushed)
        self.client.on_resumed(self._resumed)
        self.client.on_closed(self._closed)

    def _pushed(self, route: str, body: Any) -> None:
        if route == "chat.message" and isinstance(body, dict):
            self.heard[str(body.get("content"))] += 1
        elif route.startswith("fight."):
            self.fight_pushes.append((route, body))

    def _resumed(self, reply: dict[str, Any]) -> None:
        t = now()
        self.resumes.append((t, self.client.broker_address))
        self.driver.event("resumed", user=self.user, broker=self.client.broker_address, t=t)

    def _closed(self, reason: ClientDisconnected | None) -> None:
        self.driver.event("closed", user=self.user, reason=str(reason))

    def drop(self) -> bool:
        """Drop the connection as a lost network would (the client then resumes the
        session through the brokerlist, avoiding this broker); whether one was up."""
        protocol = self.client.protocol
        if protocol is None or protocol.transport is None:
            return False
        self.driver.event("moved", user=self.user, broker=self.client.broker_address, t=now())
        protocol.transport.abortConnection()
        return True


class Driver:
    """Runs the commands; each ``cmd_<name>(**arguments)`` returns a result or a Deferred.

    Args:
        reactor: the reactor.
        brokerlist: the brokerlist's URL.
        yellow: the registry's address (for the observer's view).
        emit: writes one JSON line to stdout.
    """

    def __init__(
        self, reactor: Any, brokerlist: str, yellow: str, emit: Callable[[dict], None]
    ) -> None:
        self.reactor = reactor
        self.brokerlist = brokerlist
        self.emit = emit
        self.players: dict[str, Player] = {}
        self.directory = connect(yellow, caller_id="netns-observer")
        self.directory.view.listen(self._registry_changed)
        self._fetch = http_fetcher(reactor, timeout=3.0)
        self._probing = False
        self._probes: list[defer.Deferred[Any]] = []
        self._outcomes: list[Outcome] = []
        self._stopped = False

    def event(self, name: str, **fields: Any) -> None:
        """Write an event line."""
        self.emit({"event": name, "t": fields.pop("t", now()), **fields})

    def _registry_changed(self, change: int, instance: Any, reason: str) -> None:
        self.event(
            "registry",
            change="UP" if change == Change.UP else "DOWN",
            service=instance.service_name,
            instance=instance.instance_id,
            reason=reason,
        )

    # -- the registry and the brokerlist -----------------------------------------

    @defer.inlineCallbacks
    def cmd_brokerlist(self) -> Any:
        """``{"host:port": load}`` from the brokerlist."""
        data = yield self._fetch(self.brokerlist)
        return parse_brokerlist(data)

    def cmd_services(self) -> dict[str, list[dict[str, Any]]]:
        """The observer's view: ``{service: [{"instance", "endpoints", "address"}]}``."""
        out: dict[str, list[dict[str, Any]]] = {}
        for service, instances in sorted(self.directory.view.instances.items()):
            for instance in instances.values():
                meta = {k: from_value(v) for k, v in (instance.meta or {}).items()}
                out.setdefault(service, []).append(
                    {
                        "instance": instance.instance_id,
                        "endpoints": dict(instance.endpoints or {}),
                        "address": meta.get("address"),
                    }
                )
        return out

    # -- players -------------------------------------------------------------------

    @defer.inlineCallbacks
    def cmd_login(self, user: str, broker: str | None = None, timeout: float = 8.0) -> Any:
        """Connect ``user`` to ``broker`` (None: where the brokerlist says) and log in;
        ``{"session_id", "broker", "seconds"}``."""
        started = now()
        player = Player(self, user, broker, timeout)
        try:
            yield player.client.connect()
            reply = yield player.client.login(user=user, password=f"pw-{user}")
        except BaseException:
            player.client.close()
            raise
        self.players[user] = player
        return {
            "session_id": reply["session_id"],
            "broker": player.client.broker_address,
            "seconds": now() - started,
        }

    @defer.inlineCallbacks
    def cmd_try_login(self, user: str, broker: str, timeout: float = 8.0) -> Any:
        """:meth:`cmd_login`, reporting a failure instead of raising it:
        ``{"ok", "kind", "message", "seconds", "broker"}``."""
        started = now()
        try:
            reply = yield self.cmd_login(user, broker, timeout)
        except ClientException as e:
            return {"ok": False, "kind": error_kind(e), "message": str(e),
                    "seconds": now() - started, "broker": broker}  # fmt: skip
        return {"ok": True, "kind": "OK", "message": "", **reply}

    def cmd_where(self, users: list[str]) -> dict[str, Any]:
        """Each player's broker, client state, session id and resumes so far."""
        return {
            u: {
                "broker": self.players[u].client.broker_address,
                "state": self.players[u].client.state,
                "session_id": self.players[u].client.session_id,
                "resumes": self.players[u].resumes,
            }
            for u in users
        }

    @defer.inlineCallbacks
    def cmd_request(self, user: str, route: str, body: Any = None, timeout: float = 8.0) -> Any:
        """One request: ``{"ok", "kind", "reply", "seconds", "broker"}`` (never raises)."""
        player = self.players[user]
        started = now()
        try:
            reply = yield player.client.request(route, body or {}, timeout=timeout)
        except ClientException as e:
            return {"ok": False, "kind": error_kind(e), "message": str(e),
                    "seconds": now() - started, "broker": player.client.broker_address}  # fmt: skip
        return {"ok": True, "kind": "OK", "reply": reply, "seconds": now() - started,
                "broker": player.client.broker_address}  # fmt: skip

    @defer.inlineCallbacks
    def cmd_join(self, users: list[str], room: str) -> Any:
        """Every player in ``users`` joins ``room``; the members each reply listed."""
        replies = yield defer.gatherResults(
            [self.players[u].client.request("chat.join", {"room": room}) for u in users],
            consumeErrors=True,
        )
        return {u: r["members"] for u, r in zip(users, replies, strict=True)}

    @defer.inlineCallbacks
    def cmd_chat(
        self, senders: list[str], members: list[str], tag: str, count: int, settle: float = 5.0
    ) -> Any:
        """Each sender sends ``count`` messages (NOTIFY ``chat.send``) to its room; wait up
        to ``settle`` seconds for every member to hear every message, and a little more
        for duplicates to show.

        Returns:
            ``{"sent", "deliveries", "delivered", "missed", "dup", "seconds"}``: deliveries
            expected (messages x members), (member, message) pairs heard at least once,
            never heard, and heard more than once; seconds until all were heard.
        """
        contents = [f"{tag}:{s}:{i}" for s in senders for i in range(count)]
        started = now()
        for i in range(count):
            for sender in senders:
                self.players[sender].client.notify("chat.send", {"content": f"{tag}:{sender}:{i}"})

        def heard_all() -> bool:
            """Whether every member heard every message."""
            return all(self.players[m].heard[c] >= 1 for m in members for c in contents)

        while not heard_all() and now() - started < settle:
            yield sleep(self.reactor, 0.02)
        seconds = now() - started
        yield sleep(self.reactor, 0.5)  # a duplicate would arrive about as fast
        pairs = [(m, c) for m in members for c in contents]
        heard = [self.players[m].heard[c] for m, c in pairs]
        return {
            "sent": len(contents),
            "deliveries": len(pairs),
            "delivered": sum(1 for n in heard if n >= 1),
            "missed": sum(1 for n in heard if n == 0),
            "dup": sum(n - 1 for n in heard if n > 1),
            "seconds": seconds,
            "missed_by": sorted({m for (m, _), n in zip(pairs, heard, strict=True) if n == 0}),
        }

    @defer.inlineCallbacks
    def _fight_push(self, user: str, route: str, timeout: float) -> Any:
        player = self.players[user]
        deadline = now() + timeout
        while True:
            for i, (r, body) in enumerate(player.fight_pushes):
                if r == route:
                    del player.fight_pushes[: i + 1]
                    return body
            if now() > deadline:
                raise AssertionError(f"{user}: no {route} push within {timeout:g} s")
            yield sleep(self.reactor, 0.02)

    @defer.inlineCallbacks
    def cmd_fight_begin(self, users: list[str]) -> Any:
        """Two players matchmake (``fight.matchmake {"size": 2}``) and join the fight.

        Returns:
            ``{"fight_id", "instance", "users", "turn"}``: ``turn`` is who attacks first.
        """
        one, two = (self.players[u] for u in users)
        for player in (one, two):
            player.fight_pushes.clear()
        made = yield defer.gatherResults(
            [p.client.request("fight.matchmake", {"size": 2}) for p in (one, two)],
            consumeErrors=True,
        )
        if made[0] != made[1]:
            raise AssertionError(f"matchmade apart: {made}")
        fight_id = made[0]["fight_id"]
        for user in users:
            yield self._fight_push(user, "fight.start", 5.0)
        yield one.client.request("fight.join", {"fight_id": fight_id})
        state = yield two.client.request("fight.join", {"fight_id": fight_id})
        return {"fight_id": fight_id, "instance": made[0]["instance"], "users": users,
                "turn": state["turn"]}  # fmt: skip

    @defer.inlineCallbacks
    def cmd_fight_finish(self, fight: dict[str, Any], max_turns: int = 40) -> Any:
        """The players of ``fight`` (what :meth:`cmd_fight_begin` answered) attack on their
        turn until ``fight.end``.

        Returns:
            ``{"turns", "winner", "ends"}``; ``ends`` is the winner each player's
            ``fight.end`` push named.
        """
        fight_id, turn, end, turns = fight["fight_id"], fight["turn"], None, 0
        while end is None and turns < max_turns:
            event = yield self.players[turn].client.request("fight.attack", {"fight_id": fight_id})
            turns += 1
            if event.get("winner") is not None:
                end = event
            else:
                turn = event["turn"]
        if end is None:
            raise AssertionError(f"no winner after {max_turns} attacks")
        ends = {}
        for user in fight["users"]:
            pushed = yield self._fight_push(user, "fight.end", 5.0)
            ends[user] = pushed.get("winner")
        return {"turns": turns, "winner": end["winner"], "ends": ends}

    @defer.inlineCallbacks
    def cmd_fight(self, users: list[str]) -> Any:
        """A whole fight: :meth:`cmd_fight_begin`, then :meth:`cmd_fight_finish`; both
        answers in one, with the ``seconds`` it took."""
        started = now()
        fight = yield self.cmd_fight_begin(users)
        result = yield self.cmd_fight_finish(fight)
        return {**fight, **result, "seconds": now() - started}

    def cmd_fight_pushes(self, user: str) -> list[tuple[str, Any]]:
        """The ``fight.*`` pushes ``user`` received and no command has read yet."""
        return list(self.players[user].fight_pushes)

    @defer.inlineCallbacks
    def cmd_resumed(self, users: list[str], since: float, timeout: float = 15.0) -> Any:
        """Wait until each player's session was resumed at ``since`` or later;
        ``{user: {"t", "broker"}}`` of that resume."""
        deadline = now() + timeout

        def first(user: str) -> tuple[float, str | None] | None:
            """The user's first resume at ``since`` or later."""
            return next((r for r in self.players[user].resumes if r[0] >= since), None)

        while not all(first(u) for u in users):
            if now() > deadline:
                raise AssertionError(
                    f"not resumed within {timeout:g} s: {[u for u in users if not first(u)]}"
                )
            yield sleep(self.reactor, 0.02)
        out = {}
        for user in users:
            resume = first(user)
            assert resume is not None
            out[user] = {"t": resume[0], "broker": resume[1]}
        return out

    @defer.inlineCallbacks
    def cmd_drop(self, users: list[str], timeout: float = 15.0) -> Any:
        """Drop each player's connection; wait for the resumes (see :meth:`cmd_resumed`)."""
        since = now()
        for user in users:
            self.players[user].drop()
        resumed = yield self.cmd_resumed(users, since, timeout)
        return resumed

    # -- probes --------------------------------------------------------------------

    def cmd_probe_start(
        self,
        users: list[str],
        route: str = "chat.echo",
        interval: float = 0.25,
        timeout: float = 8.0,
        move_after: int = 0,
    ) -> dict[str, Any]:
        """Each player sends ``route`` every ``interval`` s (open loop: a slow answer does
        not hold the next request), each request with its own ``timeout`` deadline, until
        ``probe_stop``.

        Args:
            move_after: if > 0, a player whose last ``move_after`` requests failed with
                one of :data:`MOVE_ON` drops its connection once, so its client resumes
                the session on another broker (what a game does when its broker fails it).
        """
        self._probing = True
        self._outcomes = []
        self._probes = [
            self._probe(self.players[u], route, interval, timeout, move_after) for u in users
        ]
        return {"started": now()}

    @defer.inlineCallbacks
    def _probe(
        self, player: Player, route: str, interval: float, timeout: float, move_after: int
    ) -> Any:
        pending: list[defer.Deferred[Any]] = []
        failures = 0
        moved = False
        n = 0

        def ended(result: Any, outcome: Outcome, n: int) -> None:
            """Record how request ``n`` ended; move the player if it keeps failing."""
            nonlocal failures, moved
            outcome.t1 = now()
            if isinstance(result, Failure):
                error = result.value
                outcome.kind = error_kind(error)
                outcome.message = str(error)[:160]
                failures = failures + 1 if outcome.kind in MOVE_ON else 0
            else:
                outcome.ok = result == {"n": n, "user": player.user}
                outcome.kind = "OK" if outcome.ok else "WRONG_REPLY"
                failures = 0
            if move_after and failures >= move_after and not moved:
                moved = player.drop()

        while self._probing:
            n += 1
            outcome = Outcome(player.user, player.client.broker_address, now())
            self._outcomes.append(outcome)
            d = player.client.request(route, {"n": n, "user": player.user}, timeout=timeout)
            d.addBoth(ended, outcome, n)
            pending.append(d)
            yield sleep(self.reactor, interval)
        yield defer.DeferredList(pending)

    def cmd_probe_outcomes(self) -> list[dict[str, Any]]:
        """Every :class:`Outcome` so far (those still out have ``t1`` 0)."""
        return [asdict(o) for o in self._outcomes]

    @defer.inlineCallbacks
    def cmd_probe_stop(self) -> Any:
        """Stop probing, wait for the requests out to end; every :class:`Outcome`."""
        self._probing = False
        yield defer.DeferredList(self._probes)
        return [asdict(o) for o in self._outcomes]

    def cmd_quit(self) -> dict[str, Any]:
        """Close every client and stop."""
        self.reactor.callLater(0.1, self.stop)
        return {}

    def stop(self) -> None:
        """Close every client, then stop the reactor (once)."""
        if self._stopped:
            return
        self._stopped = True
        for player in self.players.values():
            player.client.close()
        self.directory.stopService()
        if self.reactor.running:
            self.reactor.stop()


class Commands(LineReceiver):
    """Reads commands from stdin, writes answers and events to stdout."""

    delimiter = b"\n"
    MAX_LENGTH = 1 << 20

    def __init__(self, make_driver: Callable[[Callable[[dict], None]], Driver]) -> None:
        self.driver = make_driver(self.write)

    def write(self, message: dict[str, Any]) -> None:
        """One JSON line to stdout."""
        if self.transport is not None:
            self.transport.write(json.dumps(message, default=str).encode() + b"\n")

    def lineReceived(self, line: bytes) -> None:
        """Run one command (they may overlap); answer it when it ends."""
        if not line.strip():
            return
        try:
            message = json.loads(line)
            ident = message.pop("id")
            method = getattr(self.driver, f"cmd_{message.pop('cmd')}")
        except (ValueError, KeyError, AttributeError, TypeError) as e:
            self.write({"id": None, "ok": False, "error": f"bad command {line!r}: {e}"})
            return
        d = defer.maybeDeferred(method, **message)
        d.addCallbacks(
            lambda result: self.write({"id": ident, "ok": True, "result": result}),
            lambda failure: self.write(
                {
                    "id": ident,
                    "ok": False,
                    "error": f"{type(failure.value).__name__}: {failure.getErrorMessage()}",
                }
            ),
        )

    def connectionLost(self, reason: Any = None) -> None:
        """stdin closed: the test is gone, so stop."""
        self.driver.stop()


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments and play until told to stop."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--brokerlist", required=True, help="the brokerlist's URL")
    parser.add_argument("--yellow", required=True, help="the registry's address")
    parser.add_argument("--max-seconds", type=float, default=170.0, help="stop after this")
    args = parser.parse_args(argv)
    from twisted.internet import reactor

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)])
    commands = Commands(lambda emit: Driver(reactor, args.brokerlist, args.yellow, emit))
    stdio.StandardIO(commands)

    def give_up() -> None:
        """The time bound: stop whatever is going on."""
        log.warn("netns_player: --max-seconds reached, stopping")
        commands.driver.stop()

    reactor.callLater(args.max_seconds, give_up)
    reactor.run()


if __name__ == "__main__":
    main()
