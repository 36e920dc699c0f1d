"""The demo: a local cluster, a caller, and chat bots talking through two brokers.

``python -m mmo.demo`` (or ``./dev demo``) starts the cluster of
``etc/cluster.toml`` (yellow, log collector, session, sso, chat, two echo workers, fight
pool, two brokers, brokerlist) as supervised child processes on 127.0.0.1 (on free ports),
each with an operator listener (metrics, health), then:

* part 1, the logic layer: calls through ``get_service``, load balancing, each
  kind of error, push and pub-sub, a worker killed with ``kill -9`` under load;
* part 2, the edge: chat bots log in through the brokerlist, join a room, talk,
  see each other's messages; a session instance and a broker are killed and the
  bots resume their sessions through the others, still in the room; a new player
  registers an account (``sso.register``, stored in the sso worker's SQLite) and
  logs in;
* part 3, operations: every process in Prometheus' discovery (the yellow's ``/sd``) and
  ready, a request traced across processes (``mmo trace``), ``mmo status`` while a
  caller sends requests, a rolling reload of the echo workers under calls (``mmo
  reload``), echo scaled up under load, the warnings ``mmo logs`` finds in the
  collected logs, and the admin console;
* part 4, two realms: a second cluster starts beside the first, a bridge on each side
  links them (``twistd mmo-bridge``, docs/bridge.md), one realm calls the other's echo,
  and a player of each chats in one room shared across both.

The cluster runs on the embedded defaults (SQLite, in-process caches: no servers),
but for the session records: when ``redis-server`` is installed the demo starts one
of its own (a private port, no persistence, stopped at the end) and runs two session
instances sharing their records in it, so one of them can be killed. Without it, one
session instance keeps the records in its memory and only the broker is killed.

It prints what happens, stops everything it started, and exits 0 when every
step went as expected.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import signal
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from twisted.application.service import MultiService
from twisted.internet import defer, task, utils

from mmo.cluster.config import ClusterConfig
from mmo.cluster.service import make_cluster_service
from mmo.errors import DeadlineExceeded, MmoError, NoLiveInstance, RemoteError, UnknownMethod
from mmo.logic import connect
from mmo.ops import OpsConfig
from mmo.tap import inherit_ops
from mmo.testing.processes import free_port
from mmo.types import InlineCallbacks

ECHO = "mmo.examples.echo:EchoService"


BOTS = ["alice", "bob", "carol", "dave"]


def cluster_config(
    yellow: str,
    brokers: list[int],
    http: int,
    data: Path,
    sessions_cache: str | None = None,
    yellow_metrics: int = 0,
    admin: int = 0,
    websockets: list[int] | None = None,
) -> ClusterConfig:
    """The cluster of etc/cluster.toml, on the given ports, its SQLite file and collected
    logs in ``data``; with ``sessions_cache``, two session instances whose records live in
    that cache; the yellow's operator listener on ``yellow_metrics``, the admin console on
    ``admin``; with ``websockets``, each broker's WebSocket listener on its port there (the
    browser game's, served by the brokerlist at ``/game/``)."""

    def worker(name: str, handler: str, count: int = 1, *extra: str) -> dict[str, Any]:
        args = ["--yellow", yellow, "--handler", handler, *extra]
        return {"name": name, "role": "mmo-worker", "count": count, "args": args}

    listen = [f"tcp:{port}:interface=127.0.0.1" for port in brokers]
    return ClusterConfig(
        process=(
            {
                "name": "yellow",
                "role": "mmo-yellow",
                "args": ["--listen", yellow, "--metrics", f"127.0.0.1:{yellow_metrics}"],
            },
            {
                "name": "logs",
                "role": "mmo-logs",
                "args": ["--yellow", yellow, "--dir", str(data / "logs")],
            },
            (
                worker("session", "mmo.sessions:SessionService", 2, "--cache", sessions_cache)
                if sessions_cache
                else worker("session", "mmo.sessions:SessionService")
            ),
            # The embedded defaults: accounts in SQLite, an in-process cache; the bots'
            # accounts made at start.
            worker(
                "sso",
                "mmo.examples.sso:SSOService",
                1,
                *("--database", f"sqlite:///{data}/mmo.db"),
                *("--set", "accounts=" + ",".join(f"{b}:pw-{b}" for b in BOTS)),
            ),
            worker("chat", "mmo.examples.chat:ChatService"),
            worker("echo", ECHO, count=2),
            {
                "name": "fight",
                "role": "mmo-fight",
                "args": [
                    "--yellow",
                    yellow,
                    "--handler",
                    "mmo.examples.fight:TurnFight",
                    "--cap",
                    "10",
                    "--drain-timeout",
                    "5",
                ],
            },
            *(
                {
                    "name": f"broker-{i + 1}",
                    "role": "mmo-broker",
                    "args": [
                        "--yellow",
                        yellow,
                        "--listen",
                        address,
                        "--route",
                        "fight=fight-worker",
                        *(
                            ("--websocket", f"tcp:{websockets[i]}:interface=127.0.0.1")
                            if websockets
                            else ()
                        ),
                    ],
                }
                for i, address in enumerate(listen)
            ),
            {
                "name": "admin",
                "role": "mmo-admin",
                "args": [
                    *("--yellow", yellow, "--listen", f"tcp:{admin}:interface=127.0.0.1"),
                    *("--target", f"127.0.0.1:{yellow_metrics}"),
                ],
            },
            {
                "name": "brokerlist",
                "role": "mmo-brokerlist",
                "args": ["--yellow", yellow, "--listen", f"tcp:{http}:interface=127.0.0.1"],
            },
        ),
        stop_timeout=10.0,
        yellow=yellow,
        # The echo workers follow their calls in flight: 2 at rest, up to 3 under load
        # (the load of step 17b, not the calls of the earlier steps: 8 at most each).
        scale={
            "echo": {
                "min": 2,
                "max": 3,
                "signal": "outstanding",
                "target": 10,
                "interval": 1,
                "up_cooldown": 2,
                "down_cooldown": 60,
            }
        },
    )


class Demo:
    """Runs the steps, printing each; remembers whether all went as expected."""

    def __init__(self, reactor: Any, log_path: Path) -> None:
        self.reactor = reactor
        self.log_path = log_path
        self.ok = True

    def say(self, text: str) -> None:
        """Print a line at once."""
        print(text, flush=True)

    def check(self, what: str, good: bool, detail: str = "") -> None:
        """Print a step's outcome."""
        self.ok = self.ok and good
        self.say(f"  [{'ok' if good else 'UNEXPECTED'}] {what}{': ' + detail if detail else ''}")

    def sleep(self, seconds: float) -> defer.Deferred[None]:
        """Let time pass."""
        return task.deferLater(self.reactor, seconds, lambda: None)

    @defer.inlineCallbacks
    def run(self, keep: bool) -> InlineCallbacks[None]:
        """Start the cluster, run the steps, stop the cluster."""
        yellow = f"tcp://127.0.0.1:{free_port()}"
        self.brokers = [free_port(), free_port()]
        websockets = [free_port(), free_port()]
        self.http = free_port()
        self.yellow = yellow
        self.yellow_metrics = free_port()
        self.admin = free_port()
        log_file = open(self.log_path, "w")  # noqa: SIM115 - closed below

        def sink(name: str, line: str) -> None:
            log_file.write(f"[{name}] {line}\n")
            log_file.flush()

        data = Path(tempfile.mkdtemp(prefix="mmo-demo-"))
        redis = None
        if shutil.which("redis-server"):
            from mmo.testing.data import ThrowawayRedis

            redis = ThrowawayRedis(data / "redis").start()
        self.shared_sessions = redis is not None
        config = cluster_config(
            yellow,
            self.brokers,
            self.http,
            data,
            redis.url if redis is not None else None,
            self.yellow_metrics,
            self.admin,
            websockets,
        )
        # As mmo-cluster --metrics does: every child gets an operator listener.
        ops = OpsConfig(metrics="127.0.0.1:0")
        cluster = make_cluster_service(
            config, reactor=self.reactor, sink=sink, child_args=lambda a: inherit_ops(ops, a)
        )
        self.say(f"mmo demo: yellow at {yellow}; process logs in {self.log_path}")
        self.say(
            f"the admin console: http://127.0.0.1:{self.admin}/ (admin / "
            f"{os.environ.get('MMO_ADMIN_PASSWORD', 'admin')}; --keep to keep it running)"
        )
        self.say(
            f"the game, in a browser: http://127.0.0.1:{self.http}/game/ "
            f"(alice / pw-alice, bob / pw-bob, ...; docs/game.md)"
        )
        if redis is not None:
            self.say(f"session records in a Redis of the demo's own at {redis.url}")
        cluster.startService()
        directory = connect(yellow, reactor=self.reactor)
        try:
            self.say("\n=== part 1: the logic layer (a caller using get_service) ===")
            yield self.steps(directory, cluster)
            self.say("\n=== part 2: the edge (chat bots through two brokers) ===")
            yield self.chat(directory, cluster)
            self.say("\n=== part 3: operations (metrics, health, logs, traces) ===")
            yield self.operations(directory)
            self.say("\n=== part 4: two realms (a bridge between clusters) ===")
            yield self.realms(data, sink)
            if keep:
                self.say("\ncluster running; Ctrl-C to stop")
                yield defer.Deferred()  # until interrupted
        finally:
            yield directory.stopService()
            self.say("\nstopping the cluster ...")
            yield cluster.stopService()
            if redis is not None:
                redis.stop()
            log_file.close()
            # Its SQLite file, Redis, collected logs: the demo's own, gone with it.
            shutil.rmtree(data, ignore_errors=True)
            self.say("stopped.")

    @defer.inlineCallbacks
    def steps(self, directory: Any, cluster: Any) -> InlineCallbacks[None]:
        """What the caller does, step by step."""
        view = directory.view
        yield view.wait_for(lambda: len(view.get("echo")) == 2, timeout=30)
        self.say("\n1. the registry knows:")
        for inst in view.get("echo"):
            self.say(f"   {inst.instance_id}: {inst.endpoints['rep']}")

        echo = directory.get_service("echo", "REP")
        self.say("\n2. a call through get_service:")
        reply = yield echo.echo(player="harry", level=7, items=["wand", "owl"])
        self.check("echo(player=..., level=..., items=...)", reply["player"] == "harry", str(reply))

        self.say("\n3. load balancing (least outstanding first), 20 concurrent calls:")
        # Connected links are preferred: let the link to each instance come up first.
        for _ in range(100):
            links = directory.links("echo")
            if len(links) == 2 and all(links.values()):
                break
            yield self.sleep(0.05)
        whos = yield defer.gatherResults([echo.whoami() for _ in range(20)])
        counts: Counter[str] = Counter(whos)
        self.check("spread over both instances", len(counts) == 2, repr(dict(counts)))

        self.say("\n4. errors, each distinct:")
        for label, deferred, kind in [
            ("fail(message='boom')", echo.fail(message="boom"), RemoteError),
            ("nosuch()", echo.nosuch(), UnknownMethod),
            (
                "sleep(seconds=2) with a 0.3 s deadline",
                echo.call("sleep", {"seconds": 2}, timeout=0.3),
                DeadlineExceeded,
            ),
            (
                "inventory.count() with no inventory service",
                directory.get_service("inventory").count(item="potion"),
                NoLiveInstance,
            ),
        ]:
            try:
                yield deferred
                self.check(label, False, "no error")
            except MmoError as e:
                self.check(label, isinstance(e, kind), f"{type(e).__name__}: {e}")

        self.say("\n5. push-pull and pub-sub: 6 notes pushed, events they publish:")
        events: list[Any] = []
        directory.get_service("echo", "PUB").subscribe("noted", lambda t, p: events.append(p))
        pusher = directory.get_service("echo", "PULL")
        yield self.sleep(0.3)  # let the subscription connect: PUB drops what nobody holds
        for n in range(6):
            yield pusher.note(n=n)
        yield view.wait_for(lambda: len(events) >= 6, timeout=5).addErrback(lambda _: None)
        for event in events:
            self.say(f"   event noted: {event}")
        self.check("every pushed note published", len(events) == 6)

        yield self.kill_under_load(directory, cluster)

    @defer.inlineCallbacks
    def kill_under_load(self, directory: Any, cluster: Any) -> InlineCallbacks[None]:
        """kill -9 a worker while idempotent calls run; the supervisor restarts it."""
        self.say("\n6. kill -9 one worker while 8 callers loop on an idempotent call:")
        self.say("   (the supervisor restarts it; idempotent calls move to the other worker)")
        echo = directory.get_service("echo", "REP")
        ok, errors, running = [0], [], [True]

        @defer.inlineCallbacks
        def caller() -> InlineCallbacks[None]:
            while running[0]:
                try:
                    yield echo.sleep(seconds=0.01)
                    ok[0] += 1
                except MmoError as e:
                    errors.append(e)

        loops = [caller() for _ in range(8)]
        yield self.sleep(1.0)
        victim = _child(cluster, "echo-1")
        old_pid = victim.pid
        os.kill(old_pid, signal.SIGKILL)
        self.say(f"   killed echo-1 (pid {old_pid})")
        yield self.sleep(3.0)
        running[0] = False
        yield defer.gatherResults(loops)
        self.check(f"{ok[0]} calls answered, {len(errors)} failed", ok[0] > 0 and not errors)
        view = directory.view
        yield view.wait_for(
            lambda: "echo-1" in {i.instance_id for i in view.get("echo")}, timeout=20
        )
        self.check(
            "the supervisor restarted echo-1",
            victim.pid not in (None, old_pid),
            f"new pid {victim.pid}",
        )

    @defer.inlineCallbacks
    def chat(self, directory: Any, cluster: Any) -> InlineCallbacks[None]:
        """Chat bots log in through the brokerlist, talk, and survive a broker's death."""
        from mmo.client import Client
        from mmo.client.session import http_fetcher

        url = f"http://127.0.0.1:{self.http}/"
        view = directory.view
        yield view.wait_for(lambda: len(view.get("broker")) == 2, timeout=30)
        yield self.sleep(0.5)
        listing = yield http_fetcher(self.reactor)(url)
        self.say(f"\n7. the brokerlist at {url} says:\n   {listing.decode()}")
        self.say("   four bots log in (alternating brokers) and join the room 'tavern':")
        bots: dict[str, Client] = {}
        heard: dict[str, list[str]] = {bot: [] for bot in BOTS}
        for i, bot in enumerate(BOTS):
            # Alternate the first broker so the room spans both.
            client = Client(self.reactor, brokerlist=url, broker=f"127.0.0.1:{self.brokers[i % 2]}")
            yield client.connect()
            reply = yield client.login(user=bot, password=f"pw-{bot}")

            def show(route: str, body: Any, bot: str = bot) -> None:
                if route == "chat.message":
                    line = f"[{body['room']}] {body['from']}: {body['content']}"
                else:
                    line = f"* {body['user']} {route.split('.')[1]}"
                heard[bot].append(line)
                if bot == "alice":
                    self.say(f"   alice sees  {line}")

            client.on("chat.message", show)
            client.on("chat.joined", show)
            client.on("chat.left", show)
            bots[bot] = client
            self.say(
                f"   {bot} logged in on {client.broker_address} (session {reply['session_id']})"
            )
        for bot, client in bots.items():
            joined = yield client.request("chat.join", {"room": "tavern"})
            if bot == BOTS[-1]:
                self.check("everyone is in the tavern", joined["members"] == sorted(BOTS))
        self.say("\n8. each bot says hello (a NOTIFY chat.send; the chat worker broadcasts to the")
        self.say("   room; each broker fans out to the members it holds):")
        for bot, client in bots.items():
            client.notify("chat.send", {"content": f"hello from {bot}"})
        yield self.wait_heard(heard, lambda lines: sum("hello from" in x for x in lines) == 4)
        self.check(
            "every bot heard all 4 hellos exactly once",
            all(sum("hello from" in x for x in heard[b]) == 4 for b in BOTS),
        )

        victim = _child(cluster, "broker-1")
        on_it = [b for b, c in bots.items() if c.broker_address == f"127.0.0.1:{self.brokers[0]}"]
        sessions = {b: bots[b].session_id for b in BOTS}
        if self.shared_sessions:
            session = _child(cluster, "session-1")
            self.say(
                f"\n9. kill -9 session-1 (pid {session.pid}): session-2 answers for every"
                " session (their records are in Redis); the bots play on:"
            )
            os.kill(session.pid, signal.SIGKILL)
            bots["alice"].notify("chat.send", {"content": "did something just die?"})
            yield self.wait_heard(heard, lambda lines: any("just die" in x for x in lines))
            self.check(
                "everyone heard alice", all(any("just die" in x for x in heard[b]) for b in BOTS)
            )
        else:
            self.say("\n9. (no redis-server installed: one session instance, not killed)")
        self.say(f"   kill -9 broker-1 (pid {victim.pid}); its bots {on_it} reconnect:")
        resumed: list[defer.Deferred[None]] = [defer.Deferred() for _ in on_it]
        for bot, d in zip(on_it, resumed, strict=True):
            bots[bot].on_resumed(lambda *a, d=d: None if d.called else d.callback(None))
        os.kill(victim.pid, signal.SIGKILL)
        started = self.reactor.seconds()
        yield defer.gatherResults([d.addTimeout(30, self.reactor) for d in resumed])
        for bot in on_it:
            self.say(
                f"   {bot} resumed on {bots[bot].broker_address} within "
                f"{self.reactor.seconds() - started:.2f}s, session {bots[bot].session_id}"
            )
        self.check(
            "same sessions after the crash",
            all(bots[b].session_id == sessions[b] for b in BOTS),
        )
        bots["bob"].notify("chat.send", {"content": "anyone still here?"})
        yield self.wait_heard(heard, lambda lines: any("still here" in x for x in lines))
        self.check(
            "still in the room: everyone heard bob",
            all(sum("still here" in x for x in heard[b]) == 1 for b in BOTS),
        )
        yield self.boundaries(bots["carol"])
        self.say("\n11. dave logs out; the others see him leave:")
        yield bots["dave"].logout()
        yield self.wait_heard(
            {b: heard[b] for b in BOTS[:3]}, lambda lines: any("dave left" in x for x in lines)
        )
        self.check("alice saw dave leave", any("dave left" in x for x in heard["alice"]))
        yield self.fight(bots["alice"], bots["bob"])
        for client in bots.values():
            yield client.close()
        yield self.register(url)

    @defer.inlineCallbacks
    def register(self, url: str) -> InlineCallbacks[None]:
        """A new player makes an account through a broker (``sso.register``), then logs in."""
        from mmo.client import Client
        from mmo.client.errors import ClientException

        self.say("\n13. erin, a new player, registers an account through a broker (sso.register,")
        self.say("    kept in the sso worker's database) and logs in with it:")
        client = Client(self.reactor, brokerlist=url)
        try:
            yield client.connect()
            reply = yield client.register(user="erin", password="pw-erin")
            self.check("erin registered", reply == {"user_id": "erin"}, repr(reply))
            reply = yield client.login(user="erin", password="pw-erin")
            self.check(
                f"erin logged in on {client.broker_address}",
                client.user_id == "erin",
                f"session {reply['session_id']}",
            )
        except ClientException as e:
            self.check("erin registered and logged in", False, f"{type(e).__name__}: {e}")
        finally:
            yield client.close()

    @defer.inlineCallbacks
    def boundaries(self, player: Any) -> InlineCallbacks[None]:
        """A player tries what players may not: internal and demo-only routes."""
        from mmo.client.errors import ClientRequestError

        self.say("\n10. carol tries routes no handler declares for players (each is refused")
        self.say("    exactly like a route that does not exist; the worker never sees it):")
        for route, body in [
            ("session.open", {"user_id": "alice"}),
            ("session.find", {"user_id": "alice"}),
            ("echo.whoami", {}),
            ("sso.login", {"user": "alice", "password": "guess"}),
            ("chat.members", {"room": "somewhere-else"}),
        ]:
            try:
                reply = yield player.request(route, body)
                self.check(f"{route} refused", False, f"answered {reply!r}")
            except ClientRequestError as e:
                self.check(f"{route} refused", True, str(e))

    @defer.inlineCallbacks
    def fight(self, *players: Any) -> InlineCallbacks[None]:
        """Two bots matchmake, join the fight process they are bound to, and take turns."""
        self.say("\n12. alice and bob ask for a fight (the dispatcher picks a fight process")
        self.say("    with room, binds their fight.* routes to it; they take turns):")
        ended: defer.Deferred[Any] = defer.Deferred()

        def on_turn(route: str, body: Any, client: Any) -> None:
            if body.get("turn") == client.user_id:
                client.request("fight.attack", {}).addErrback(lambda _: None)
            if "by" in body and client is players[0]:
                self.say(
                    f"    {body['by']} hits {body['target']} for {body['damage']}: hp {body['hp']}"
                )

        def on_end(route: str, body: Any) -> None:
            if not ended.called:
                ended.callback(body)

        for client in players:
            client.on("fight.turn", lambda r, b, c=client: on_turn(r, b, c))
            client.on("fight.end", on_end)
        matched = yield defer.gatherResults(
            [c.request("fight.matchmake", {"size": 2}, timeout=15) for c in players]
        )
        fight_id = matched[0]["fight_id"]
        self.say(f"    fight {fight_id} on {matched[0]['instance']}")
        for client in players:
            yield client.request("fight.join", {"fight_id": fight_id})
        result = yield ended.addTimeout(30, self.reactor)
        self.check(
            "the fight ended with a winner", bool(result.get("winner")), result.get("winner")
        )

    @defer.inlineCallbacks
    def wait_heard(
        self, heard: dict[str, list[str]], done: Any, timeout: float = 10.0
    ) -> InlineCallbacks[None]:
        """Wait until ``done(lines)`` holds for every bot (or the timeout)."""
        deadline = self.reactor.seconds() + timeout
        while self.reactor.seconds() < deadline:
            if all(done(lines) for lines in heard.values()):
                return
            yield self.sleep(0.05)

    @defer.inlineCallbacks
    def operations(self, directory: Any) -> InlineCallbacks[None]:
        """What an operator sees: every process in Prometheus' discovery and ready, one
        request traced across processes, the cluster's status, the collected logs."""
        from mmo.client import Client
        from mmo.client.session import http_fetcher

        sd = f"http://127.0.0.1:{self.yellow_metrics}/sd"
        targets = json.loads((yield http_fetcher(self.reactor)(sd)))
        roles = Counter(t["labels"]["role"] for t in targets)
        self.say(f"\n14. Prometheus' discovery at {sd} lists {len(targets)} processes:")
        self.say(f"    {dict(sorted(roles.items()))}")
        self.check("every role has an operator listener", len(roles) >= 6)
        # The processes restarted in part 2 (kill -9) may still be listed at their old
        # address for a heartbeat or two: ask again until all are ready (or 20 s passed).
        for _ in range(40):
            targets = json.loads((yield http_fetcher(self.reactor)(sd)))
            not_ready = []
            for target in targets:
                url = f"http://{target['targets'][0]}/readyz"
                try:
                    ready = json.loads((yield http_fetcher(self.reactor)(url)))["ready"]
                except Exception as e:  # a 503 (not ready) or no answer
                    ready = e
                if ready is not True:
                    not_ready.append(f"{target['labels']['mmo_instance']}: {ready}")
            if not not_ready:
                break
            yield self.sleep(0.5)
        self.check(
            "every process answers /readyz: ready",
            not not_ready,
            repr(not_ready) if not_ready else "",
        )

        self.say("\n15. alice asks to join 'ops' with a trace id of her own, 'demo-trace-1';")
        self.say("    `mmo trace demo-trace-1` shows its path across the processes:")
        client = Client(self.reactor, brokerlist=f"http://127.0.0.1:{self.http}/")
        try:
            yield client.connect()
            yield client.login(user="alice", password="pw-alice")
            yield client.request("chat.join", {"room": "ops"}, trace="demo-trace-1")
        finally:
            yield client.close()
        yield self.sleep(0.5)  # the processes ship their logs within a moment
        code, out = yield self.tool("trace", "demo-trace-1")
        self.say(_indent(out))
        good = code == 0 and "chat.join" in out
        self.check("mmo trace shows the hops", good, "" if good else out[-300:])

        self.say("\n16. `mmo status`: the cluster on one screen, while a caller sends echo calls")
        self.say("    (rates over one second):")
        echo = directory.get_service("echo")
        caller = task.LoopingCall(lambda: echo.echo(n=1).addErrback(lambda _: None))
        caller.clock = self.reactor
        caller.start(0.01)
        try:
            yellow = f"127.0.0.1:{self.yellow_metrics}"  # the registry does not list itself
            code, out = yield self.tool("status", "--interval", "1", "--target", yellow)
        finally:
            caller.stop()
        self.say(_indent(out))
        good = code == 0 and "broker" in out
        self.check("mmo status answers", good, "" if good else out[-300:])

        self.say("\n17. `mmo reload echo`: both echo workers replaced, one at a time, by processes")
        self.say("    running the code now on disk, while a caller sends echo calls:")
        sent: list[int] = [0]
        failed: list[Any] = []

        def call() -> None:
            sent[0] += 1
            echo.echo(n=sent[0]).addErrback(failed.append)

        caller = task.LoopingCall(call)
        caller.clock = self.reactor
        caller.start(0.02)
        try:
            code, out = yield self.tool("reload", "echo")
        finally:
            caller.stop()
        yield self.sleep(0.5)  # the last calls answered
        self.say(_indent(out))
        self.check(
            f"rolled with {sent[0]} calls sent, {len(failed)} failed",
            code == 0 and not failed,
            "" if code == 0 and not failed else f"{out[-300:]} {failed[:1]}",
        )

        self.say("\n17b. auto-scaling: 40 slow echo calls kept in flight (echo.sleep 0.2 s);")
        self.say("    the policy for echo (2 to 3 instances, 10 calls in flight each) grows it:")
        view = directory.view
        loaded: list[bool] = [True]
        errors: list[Any] = []

        def keep_busy() -> None:
            if loaded[0]:
                d = echo.sleep(seconds=0.2)
                d.addErrback(errors.append)
                d.addBoth(lambda _: keep_busy())

        before = len(view.get("echo"))
        started = self.reactor.seconds()
        for _ in range(40):
            keep_busy()
        try:
            yield view.wait_for(lambda: len(view.get("echo")) >= 3, timeout=30)
            grew = self.reactor.seconds() - started
        except defer.TimeoutError:
            grew = None
        finally:
            loaded[0] = False
        names = sorted(i.instance_id for i in view.get("echo"))
        self.check(
            f"scaled up to {len(names)} echo instances ({', '.join(names)})"
            + (f" {grew:.1f} s after the load began" if grew is not None else ""),
            grew is not None and before < 3 and not errors,
            "" if grew is not None and not errors else f"{names} {errors[:1]}",
        )

        self.say("\n17c. `mmo logs --level warn --since 10m`: what went wrong, from every process:")
        code, out = yield self.tool("logs", "--level", "warn", "--since", "10m", "--limit", "8")
        self.say(_indent(out or "(nothing)"))
        self.check("mmo logs answers", code == 0, "" if code == 0 else out[-300:])

        console = f"http://127.0.0.1:{self.admin}/login"
        self.say(f"\n18. the admin console answers at {console} (docs/admin.md)")
        try:
            page = yield http_fetcher(self.reactor)(console)
            self.check("the console's login page", b'name="password"' in page)
        except Exception as e:
            self.check("the console's login page", False, str(e))

    @defer.inlineCallbacks
    def realms(self, data: Path, sink: Any) -> InlineCallbacks[None]:
        """A second cluster, realm ``us``, joined to this one (``eu``) by a bridge on each
        side (CURVE links, each trusting the other's key only); a player of each realm in
        one room, ``world``, shared by the bridges; the market-less realm calls the other's
        echo through its bridge."""
        from mmo.client import Client
        from mmo.zmq.curve import create_keys

        keys = {realm: data / f"{realm}-bridge" for realm in ("eu", "us")}
        for directory in keys.values():
            create_keys(directory)
        for realm, other in (("eu", "us"), ("us", "eu")):
            shutil.copyfile(
                keys[other] / "cluster.key", keys[realm] / "authorized" / f"{other}.key"
            )
        us_yellow = f"tcp://127.0.0.1:{free_port()}"
        us_broker = free_port()
        links = {realm: f"tcp://127.0.0.1:{free_port()}" for realm in ("eu", "us")}

        def bridge(realm: str, yellow: str, other: str, *extra: str) -> dict[str, Any]:
            args = ["--yellow", yellow, "--cluster", realm, "--listen", links[realm],
                    "--peer", f"{other}={links[other]}", "--channel", "room:",
                    "--link-keys", str(keys[realm]), *extra]  # fmt: skip
            return {"name": f"bridge-{realm}", "role": "mmo-bridge", "args": args}

        def worker(name: str, handler: str, *extra: str) -> dict[str, Any]:
            args = ["--yellow", us_yellow, "--handler", handler, *extra]
            return {"name": f"us-{name}", "role": "mmo-worker", "args": args}

        us_realm = ClusterConfig(
            process=(
                {"name": "us-yellow", "role": "mmo-yellow", "args": ["--listen", us_yellow]},
                worker("session", "mmo.sessions:SessionService"),
                worker("sso", "mmo.examples.sso:SSOService", "--set", "accounts=frank:pw-frank"),
                worker("chat", "mmo.examples.chat:ChatService"),
                {"name": "us-broker", "role": "mmo-broker", "args": [
                    "--yellow", us_yellow, "--listen", f"tcp:{us_broker}:interface=127.0.0.1"]},
                bridge("eu", self.yellow, "us", "--export", "echo"),
                bridge("us", us_yellow, "eu"),
            ),
            stop_timeout=10.0,
        )  # fmt: skip
        self.say(
            f"\n19. realm 'us' starts beside this one ('eu'): its own yellow ({us_yellow}), "
            "session, sso,\n    chat and broker; a bridge on each side links the realms "
            f"({links['eu']} <-> {links['us']}, CURVE),\n    'eu' exporting echo, both sharing "
            "the channels room:*"
        )
        started = make_cluster_service(us_realm, reactor=self.reactor, sink=sink)
        started.startService()
        us = connect(us_yellow, reactor=self.reactor)
        players: list[Any] = []
        try:
            # Its broker (it registers once it listens) and the import of eu's echo.
            yield us.view.wait_for(
                lambda: bool(us.view.get("eu:echo") and us.view.get("broker")), timeout=30
            )
            reply = yield us.get_service("eu:echo").echo(realm="us")
            self.check("a call from us to eu:echo through the bridges", reply == {"realm": "us"})
            heard: dict[str, list[str]] = {"bob": [], "frank": []}
            for user, port in (("bob", self.brokers[0]), ("frank", us_broker)):
                client = Client(self.reactor, broker=f"127.0.0.1:{port}")
                yield client.connect()
                yield client.login(user=user, password=f"pw-{user}")
                client.on("chat.message", functools.partial(_heard, heard[user]))
                yield client.request("chat.join", {"room": "world"})
                players.append(client)
            self.say("20. bob (realm eu) and frank (realm us) join 'world' and say hello:")
            hellos = {"bob: hello from bob", "frank: hello from frank"}

            def both(lines: list[str]) -> bool:
                return hellos <= set(lines)

            for _ in range(40):  # again until heard: the bridges link within a heartbeat or two
                for client, user in zip(players, heard, strict=True):
                    client.notify("chat.send", {"content": f"hello from {user}"})
                yield self.wait_heard(heard, both, timeout=0.5)
                if all(both(lines) for lines in heard.values()):
                    break
            for user, lines in heard.items():
                self.say(f"   {user} heard: {sorted(set(lines))}")
            self.check(
                "each realm's player heard the other's", all(both(x) for x in heard.values())
            )
        finally:
            yield defer.gatherResults([c.close() for c in players], consumeErrors=True)
            yield us.stopService()
            yield started.stopService()

    @defer.inlineCallbacks
    def tool(self, *args: str) -> InlineCallbacks[tuple[int, str]]:
        """Run ``mmo ARGS --yellow <the demo's>`` as an operator would: its exit status and
        output."""
        argv = ["-c", "from mmo.cli import main; main()", *args, "--yellow", self.yellow]
        out, err, code = yield utils.getProcessOutputAndValue(
            sys.executable, argv, env=dict(os.environ), reactor=self.reactor
        )
        return code, (out + err).decode(errors="replace").rstrip()


def _heard(lines: list[str], route: str, body: Any) -> None:
    """Keep a chat message as ``from: content``."""
    lines.append(f"{body['from']}: {body['content']}")


def _indent(text: str) -> str:
    return "\n".join(f"    {line}" for line in text.splitlines())


def _child(cluster: Any, name: str) -> Any:
    for tier in cluster:
        for child in tier if isinstance(tier, MultiService) else ():
            if child.name == name:
                return child
    raise KeyError(name)


def main(argv: list[str] | None = None) -> None:
    """Run the demo; exit 0 if every step went as expected."""
    parser = argparse.ArgumentParser(prog="python -m mmo.demo", description=__doc__)
    parser.add_argument("--keep", action="store_true", help="keep the cluster running at the end")
    args = parser.parse_args(argv)
    log_path = Path(tempfile.gettempdir()) / f"mmo-demo-{os.getpid()}.log"
    # The children inherit it: the demo auth key.
    os.environ.setdefault("MMO_DEMO", "1")

    def run(reactor: Any) -> defer.Deferred[None]:
        demo = Demo(reactor, log_path)
        d = demo.run(args.keep)

        def verdict(_: Any) -> None:
            if not demo.ok:
                raise SystemExit(1)

        return d.addCallback(verdict)

    task.react(run)
    sys.exit(0)


if __name__ == "__main__":
    main()
