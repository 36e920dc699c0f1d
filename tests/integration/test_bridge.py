"""Two clusters on one machine joined by bridges (``twistd mmo-bridge``): ``eu`` (one
bridge, exporting its ``market``) and ``us`` (two bridges, for fail-over); each cluster
with its own yellow, session, sso, chat and market workers, a broker and a brokerlist.
Channels ``room:*`` are shared. The links between the clusters run over CURVE, each
cluster's bridges trusting the other's bridge key only.

One set of clusters serves the file; the last test kills a bridge.
"""

from __future__ import annotations

import functools
import itertools
import shutil
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted  # type: ignore[import-untyped]
import zmq
import zmq.auth
from twisted.internet import defer, reactor

from mmo.client import Client
from mmo.client.errors import ClientRequestError
from mmo.errors import DeadlineExceeded, NoLiveInstance, RemoteError
from mmo.testing import free_port
from mmo.wire import decode, encode, encode_value, from_value
from mmo.wire.gen.mmo.ttypes import ErrorCode, Header, Kind
from mmo.zmq.curve import create_keys

from .conftest import instances, sleep, until
from .edge import WORKERS, EdgeCluster

pytestmark = pytest.mark.timeout(150)

MARKET = "mmo.testing.handlers:Market"
#: Players by cluster (accounts of the edge cluster's sso).
PLAYERS = {"eu": ("alice", "bob"), "us": ("carol", "dave")}
ROOM = "world"


class Realms:
    """The two clusters and their bridges."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.keys = {name: tmp / f"{name}-link" for name in ("eu", "us")}
        for directory in self.keys.values():
            create_keys(directory)
            (directory.parent / directory.name.replace("-link", "")).mkdir()
        for name, other in (("eu", "us"), ("us", "eu")):
            shutil.copyfile(
                self.keys[other] / "cluster.key", self.keys[name] / "authorized" / f"{other}.key"
            )
        workers = {name: WORKERS[name] for name in ("session", "sso", "chat")}
        self.edges = {
            name: EdgeCluster(tmp / name, brokers=1, workers={**workers, "market": MARKET})
            for name in ("eu", "us")
        }
        self.listen = {"eu-bridge-1": free_port(), "us-bridge-1": free_port(),
                       "us-bridge-2": free_port()}  # fmt: skip
        us = ",".join(f"tcp://127.0.0.1:{self.listen[b]}" for b in ("us-bridge-1", "us-bridge-2"))
        self.bridge("eu", "eu-bridge-1", f"us={us}", "--export", "market")
        for name in ("us-bridge-1", "us-bridge-2"):
            self.bridge("us", name, f"eu=tcp://127.0.0.1:{self.listen['eu-bridge-1']}")

    def bridge(self, cluster: str, name: str, peer: str, *extra: str) -> None:
        """Start bridge ``name`` of ``cluster``."""
        edge = self.edges[cluster]
        edge._start(
            name,
            "mmo-bridge",
            ["--yellow", edge.yellow, "--cluster", cluster, "--instance-id", name,
             "--listen", f"tcp://127.0.0.1:{self.listen[name]}", "--peer", peer,
             "--channel", "room:", "--link-keys", str(self.keys[cluster]),
             "--metrics", "127.0.0.1:0", *extra],
            edge.env,
        )  # fmt: skip

    def port(self, cluster: str) -> int:
        """The port of ``cluster``'s broker."""
        return self.edges[cluster].ports[0]

    def logs(self) -> str:
        return "\n".join(edge.logs() for edge in self.edges.values())

    def stop(self) -> None:
        for edge in self.edges.values():
            edge.stop()


@pytest.fixture(scope="module")
def realms(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Realms]:
    made = Realms(tmp_path_factory.mktemp("bridge"))
    try:
        for edge in made.edges.values():
            edge.wait_ready()
        yield made
    except BaseException:
        print(made.logs())
        raise
    finally:
        made.stop()


@defer.inlineCallbacks
def linked(directory_factory: Any, realms: Realms, cluster: str, role: str = "tool") -> Any:
    """A directory of ``cluster`` once ``eu:market`` is served by every live bridge of
    ``us`` (or, from ``eu``, once the market itself is)."""
    directory = directory_factory([realms.edges[cluster].yellow], caller_role=role)
    if cluster == "us":
        yield until(
            lambda: (
                instances(directory, "eu:market")
                and instances(directory, "eu:market") == instances(directory, "bridge")
            ),
            what="eu:market served by every us bridge",
        )
    else:
        yield until(lambda: instances(directory, "market"), what="the market")
    return directory


@defer.inlineCallbacks
def player(realms: Realms, cluster: str, user: str) -> Any:
    """A logged-in client of ``user`` on ``cluster``'s broker."""
    edge = realms.edges[cluster]
    client = Client(
        reactor,
        brokerlist=edge.brokerlist_url,
        broker=f"127.0.0.1:{realms.port(cluster)}",
        request_timeout=10.0,
    )
    yield client.connect()
    yield client.login(user=user, password=f"pw-{user}")
    return client


@pytest_twisted.inlineCallbacks
def test_calls_pushes_and_events_cross_with_their_deadlines_and_error_types(
    realms: Realms, directory_factory: Any
) -> None:
    us = yield linked(directory_factory, realms, "us")
    eu = yield linked(directory_factory, realms, "eu")

    reply = yield us.call("eu:market", "bid", {"item": "sword", "amount": 3}, timeout=5)
    assert reply == {"item": "sword", "amount": 3, "user": None, "broker": None,
                     "caller_role": "bridge"}  # fmt: skip
    with pytest.raises(RemoteError) as failed:
        yield us.call("eu:market", "fail", {}, timeout=5)
    assert (failed.value.type, failed.value.message) == ("LookupError", "no such lot")
    started = reactor.seconds()
    with pytest.raises(DeadlineExceeded):
        yield us.call("eu:market", "sleep", {"seconds": 5.0}, timeout=1.0)
    assert reactor.seconds() - started < 2.0  # the caller's own deadline, not the sleep

    for i in range(3):
        us.push("eu:market", "note", {"text": f"n{i}"})
    notes = yield until(
        lambda: eu.call("market", "notes", {}).addCallback(lambda n: n if len(n) >= 3 else None),
        what="the three notes in eu",
    )
    # Pushes go round-robin to the us bridges (as to any service's instances): no order.
    assert sorted(notes) == ["n0", "n1", "n2"]

    heard: list[Any] = []
    us.subscribe("eu:market", "lot", lambda topic, payload: heard.append(payload))
    # A subscription reaches the publisher a moment after it is made: announce until heard.
    yield until(
        lambda: eu.call("market", "announce", {"topic": "lot", "payload": {"n": -1}})
        .addCallback(lambda _: bool(heard)),
        what="an event of eu heard in us",
    )  # fmt: skip
    yield sleep(0.5)  # pacing: the announcements in flight arrive
    del heard[:]
    for n in range(5):
        yield eu.call("market", "announce", {"topic": "lot", "payload": {"n": n}})
    yield until(lambda: len(heard) >= 5, what="five events in us")
    yield sleep(0.5)  # pacing: a duplicate would show
    assert heard == [{"n": n} for n in range(5)]  # once each (one active bridge), in order

    # What eu does not export does not exist in us.
    with pytest.raises(NoLiveInstance):
        yield us.call("eu:chat", "members", {"room": ROOM}, timeout=2)

    # The bridges count what they passed (their operator listeners, found in the registry).
    sent = 0.0
    for bridge in us.view.get("bridge"):
        metrics = from_value(bridge.meta["metrics"])
        with urllib.request.urlopen(f"http://{metrics}/metrics", timeout=5) as response:
            text = response.read().decode()
        sent += sum(
            float(line.split()[-1])
            for line in text.splitlines()
            if line.startswith('mmo_bridge_messages_total{kind="calls_out"}')
        )
    assert sent >= 3  # bid, fail, sleep (and the announcements' notes went the other way)


@pytest_twisted.inlineCallbacks
def test_a_player_of_one_cluster_bids_in_the_others_market(realms: Realms) -> None:
    """A player of ``us`` calls the route ``eu:market.bid`` through their broker: the
    market of ``eu`` sees who they are and where (``us:broker-1``), and its push to them
    crosses back; a method ``eu`` does not open to players is no route at all."""
    carol = yield player(realms, "us", "carol")
    pushed: list[Any] = []
    carol.on("market.bid", lambda route, body: pushed.append(body))
    try:
        reply = yield until(
            lambda: carol.request("eu:market.bid", {"item": "shield", "amount": 7}).addErrback(
                lambda f: None if f.check(ClientRequestError) else f
            ),
            what="the bid through the us broker",
        )
        assert reply["user"] == "carol" and reply["broker"] == "us:broker-1", reply
        assert reply["caller_role"] == "bridge"
        yield until(lambda: pushed, what="the market's push to carol")
        assert pushed == [{"item": "shield", "amount": 7}]
        with pytest.raises(ClientRequestError) as refused:
            yield carol.request("eu:market.fail", {})
        assert refused.value.name == "UNKNOWN_ROUTE", refused.value
    finally:
        yield carol.close()


class Room:
    """Players of both clusters in one chat room; what each member heard of each sender."""

    def __init__(self, clients: dict[str, Client]) -> None:
        self.clients = clients
        self.heard: dict[tuple[str, str], list[int]] = defaultdict(list)
        self.sent: dict[str, float] = {}
        for user, client in clients.items():
            client.on("chat.message", functools.partial(self._heard, user))

    def _heard(self, member: str, route: str, body: Any) -> None:
        sender, _, n = str(body.get("content", "")).rpartition(":")
        if sender:
            self.heard[(member, sender)].append(int(n))

    def counts(self) -> Counter[tuple[str, str]]:
        """(member, message) -> times heard."""
        return Counter(
            (member, f"{sender}:{n}") for (member, sender), ns in self.heard.items() for n in ns
        )

    def missing(self) -> list[tuple[str, str]]:
        heard = self.counts()
        return [(m, c) for c in self.sent for m in self.clients if not heard[(m, c)]]


@defer.inlineCallbacks
def room_of_both(realms: Realms) -> Any:
    """Every player logged in on their cluster's broker and in the room :data:`ROOM`."""
    clients: dict[str, Client] = {}
    for cluster, users in PLAYERS.items():
        for user in users:
            clients[user] = yield player(realms, cluster, user)
            yield clients[user].request("chat.join", {"room": ROOM})
    return clients


@pytest_twisted.inlineCallbacks
def test_a_room_across_clusters_hears_every_message_once_in_order(realms: Realms) -> None:
    clients = yield room_of_both(realms)
    room = Room(clients)
    try:
        # The room is one channel across both clusters: wait until a message crosses.
        yield until(
            lambda: _say(room, "alice", "probe") or room.heard.get(("carol", "alice")),
            what="a message of eu heard in us",
            interval=0.2,
        )
        yield sleep(0.5)
        room.heard.clear()
        room.sent.clear()
        for n in range(1, 21):
            for user in clients:
                _say(room, user, n)
            yield sleep(0.1)  # each sender within the brokers' broadcast budget
        yield until(lambda: not room.missing(), what="every message to every member")
        yield sleep(0.5)  # pacing: a duplicate would show
    finally:
        yield defer.gatherResults([c.close() for c in clients.values()], consumeErrors=True)
    assert max(room.counts().values()) == 1
    for (member, sender), ns in room.heard.items():
        assert ns == sorted(ns), (member, sender, ns)


def _say(room: Room, user: str, n: Any) -> None:
    content = f"{user}:{n}" if n != "probe" else f"{user}:0"
    room.clients[user].notify("chat.send", {"content": content})
    room.sent.setdefault(content, reactor.seconds())


def test_links_take_only_the_peers_key_and_serve_only_exports(realms: Realms) -> None:
    """A client of the eu bridge's link without the us bridges' key hears nothing; with
    it, a call of a service eu does not export is refused (FORBIDDEN), an exported one
    answered."""
    address = f"tcp://127.0.0.1:{realms.listen['eu-bridge-1']}"
    eu_public, _ = zmq.auth.load_certificate(realms.keys["eu"] / "cluster.key")
    context = zmq.Context()
    try:
        stranger = zmq.auth.create_certificates(str(realms.tmp), "stranger")
        rogue = _dealer(context, address, zmq.auth.load_certificate(stranger[1]), eu_public)
        rogue.send_multipart([b"H", b'{"cluster": "us", "instance": "rogue"}'])
        assert not rogue.poll(2000), "the bridge answered a key it does not trust"

        us_keys = zmq.auth.load_certificate(realms.keys["us"] / "cluster.key_secret")
        trusted = _dealer(context, address, us_keys, eu_public)
        trusted.send_multipart([b"H", b'{"cluster": "us", "instance": "test"}'])
        assert trusted.poll(5000) and trusted.recv_multipart()[0] == b"H"
        answers = {}
        for call_id, service, method in ((1, "chat", "members"), (2, "market", "notes")):
            header = Header(kind=Kind.REQUEST, call_id=call_id, service_name=service,
                            method=method, timeout_ms=3000)  # fmt: skip
            trusted.send_multipart([b"C", encode(header), encode_value({"room": ROOM}
                                    if service == "chat" else {})])  # fmt: skip
        deadline = time.monotonic() + 10
        while len(answers) < 2 and time.monotonic() < deadline:
            if trusted.poll(500):
                frames = trusted.recv_multipart()
                if frames[0] == b"R":
                    header = decode(Header, frames[1])
                    answers[header.call_id] = header
        assert answers[1].kind == Kind.ERROR and answers[1].error_code == ErrorCode.FORBIDDEN
        assert "does not export 'chat'" in answers[1].error_message
        assert answers[2].kind == Kind.REPLY
    finally:
        context.destroy(linger=0)
    eu_log = realms.edges["eu"].processes["eu-bridge-1"].log_tail(200)
    assert "refused a call of 'chat' from cluster us (test): not exported" in eu_log, eu_log


def _dealer(context: zmq.Context[Any], address: str, keys: Any, server: bytes) -> Any:
    public, secret = keys
    sock = context.socket(zmq.DEALER)
    sock.linger = 0
    sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = public, secret, server
    sock.connect(address)
    return sock


@pytest_twisted.inlineCallbacks
def test_kill_the_active_bridge_under_load(realms: Realms, directory_factory: Any) -> None:
    """kill -9 the active bridge of ``us`` while players of both clusters chat in one room
    and ``us`` calls ``eu:market``: the other bridge takes over; no message is heard
    twice or out of order, calls (idempotent) do not fail, and what is lost is lost
    around the failover only. The figures are printed (docs/reliability.md)."""
    us = yield linked(directory_factory, realms, "us")
    clients = yield room_of_both(realms)
    room = Room(clients)
    calls: list[tuple[float, float, str]] = []
    running = True

    @defer.inlineCallbacks
    def call_loop() -> Any:
        while running:
            start = reactor.seconds()
            try:
                yield us.call("eu:market", "sleep", {"seconds": 0.01}, timeout=8)
                calls.append((start, reactor.seconds(), "ok"))
            except Exception as e:
                calls.append((start, reactor.seconds(), type(e).__name__))

    @defer.inlineCallbacks
    def chat_loop(user: str) -> Any:
        for n in itertools.count(1):
            if not running:
                return
            _say(room, user, n)
            yield sleep(0.1)

    loops = [call_loop(), call_loop(), *(chat_loop(u) for u in ("alice", "carol"))]
    try:
        yield until(lambda: len(calls) > 50 and room.heard.get(("dave", "alice")), what="load")
        killed_at = reactor.seconds()
        realms.edges["us"].processes["us-bridge-1"].kill()
        yield until(lambda: instances(us, "bridge") == {"us-bridge-2"}, what="us-bridge-1 expired")
        yield sleep(3.0)  # pacing: the load goes on through us-bridge-2
    finally:
        running = False
        yield defer.gatherResults(loops)
    sent_last = max(room.sent.values())
    yield until(lambda: not [c for m, c in room.missing() if room.sent[c] > sent_last - 1.0],
                what="the last messages delivered")  # fmt: skip
    yield defer.gatherResults([c.close() for c in clients.values()], consumeErrors=True)

    missing = room.missing()
    lost_at = sorted(room.sent[c] - killed_at for _, c in missing)
    failed = [c for c in calls if c[2] != "ok"]
    slow = [c for c in calls if c[1] - c[0] > 1.0]
    back = max([c[1] for c in slow] or [killed_at]) - killed_at
    print(
        f"\nBRIDGE kill -9 of the active bridge: calls={len(calls)} failed={len(failed)} "
        f"slow(>1s)={len(slow)} calls_back={back:.2f}s messages={len(room.sent)} "
        f"member_deliveries_lost={len(missing)} "
        f"lost_window={lost_at[0] if lost_at else 0:.2f}..{lost_at[-1] if lost_at else 0:.2f}s "
        f"dup={sum(1 for n in room.counts().values() if n > 1)}"
    )
    assert failed == [], failed[:5]
    assert max(room.counts().values()) == 1
    for (member, sender), ns in room.heard.items():
        assert ns == sorted(ns), (member, sender, ns)
    # Lost only across the clusters, and only around the failover.
    for member, content in missing:
        sender = content.rpartition(":")[0]
        assert _cluster_of(member) != _cluster_of(sender), (member, content)
        assert -1.0 <= room.sent[content] - killed_at <= 10.0, (member, content)


def _cluster_of(user: str) -> str:
    return next(c for c, users in PLAYERS.items() if user in users)


@pytest_twisted.inlineCallbacks
def test_with_no_bridge_left_calls_fail_fast_with_no_live_instance(
    realms: Realms, directory_factory: Any
) -> None:
    """kill -9 the bridge of ``eu``: calls from ``us`` to ``eu:market`` fail at once with
    NoLiveInstance (its imports are withdrawn), none waits for its deadline."""
    us = yield linked(directory_factory, realms, "us")
    realms.edges["eu"].processes["eu-bridge-1"].kill()
    outcomes: list[tuple[float, str]] = []

    @defer.inlineCallbacks
    def attempt() -> Any:
        start = reactor.seconds()
        try:
            yield us.call("eu:market", "sleep", {"seconds": 0.01}, timeout=8)
            outcomes.append((reactor.seconds() - start, "ok"))
        except Exception as e:
            outcomes.append((reactor.seconds() - start, type(e).__name__))
        return outcomes[-1][1] == "NoLiveInstance" and not instances(us, "eu:market")

    yield until(attempt, what="eu:market withdrawn from us", interval=0.1)
    print(f"\nBRIDGE eu's bridge killed: {len(outcomes)} calls until withdrawn, slowest "
          f"{max(t for t, _ in outcomes):.3f}s: {Counter(o for _, o in outcomes)}")  # fmt: skip
    assert all(t < 1.0 for t, _ in outcomes), outcomes
    assert {o for _, o in outcomes} <= {"ok", "NoLiveInstance"}, outcomes
