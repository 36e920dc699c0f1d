"""Players and rogue processes attack a real cluster; every attack must fail.

The cluster is the demo's (session, sso, chat, the demo echo, the fight dispatcher, two
brokers) with CURVE on, plus ``rig``, a test echo open to players for the log-flood test.
Players are raw TCP clients (:class:`~mmo.testing.rawclient.RawClient`), each attacker
from its own loopback address; what the cluster ends up holding is read back as a cluster
member would (a :class:`~mmo.logic.Directory` holding the keys). Each attack is one test,
named after what it tries; docs/security.md lists them with the limits they hold.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.defer import Deferred

from mmo.logic import Directory, connect
from mmo.logic.sessions import Sessions
from mmo.testing import TwistdProcess
from mmo.testing.rawclient import RawClient, Received
from mmo.wire.gen.mmo.ttypes import ClientError, PacketKind, Session

from .conftest import POLL_TIMEOUT, sleep, until
from .edge import ACCOUNTS, EdgeCluster
from .rogue import CATCH_ENV

pytestmark = pytest.mark.timeout(120)

#: Accounts for the crowd of the broadcast test (besides the edge cluster's own).
CROWD = [f"m{n}" for n in range(21)]
WORKERS = {
    "session": "mmo.sessions:SessionService",
    "sso": "mmo.examples.sso:SSOService",
    "chat": "mmo.examples.chat:ChatService",
    "echo": "mmo.examples.echo:EchoService",  # the demo's: nothing in it is for players
}
MMO = [sys.executable, "-c", "from mmo.cli import main; main()"]


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgeCluster]:
    """The demo's cluster with CURVE on (the test run's keys), plus the fight dispatcher
    and ``rig`` (a test echo open to players, with the service name ``rig``)."""
    accounts = ",".join([ACCOUNTS, *(f"{u}:pw-{u}" for u in CROWD)])
    cluster = EdgeCluster(
        tmp_path_factory.mktemp("attacks"), brokers=2, workers=WORKERS, accounts=accounts
    )
    try:
        cluster.start_worker("rig", "mmo.testing.handlers:ClientEcho", ("--service", "rig"))
        cluster._start(
            "fight",
            "mmo-fight",
            [
                "--yellow",
                cluster.yellow,
                "--handler",
                "mmo.examples.fight:TurnFight",
                "--cap",
                "10",
                "--min-spare",
                "0",
            ],
            cluster.env,
        )
        cluster.wait_ready()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def member(edge: EdgeCluster) -> Iterator[Directory]:
    """A cluster member's view (it holds the CURVE keys): reads what the cluster keeps."""
    directory = connect(edge.yellow, caller_id="attack-test")
    view = directory.view
    ready = {"session", "sso", "chat", "echo", "rig", "fight", "broker"}
    pytest_twisted.blockon(view.wait_for(lambda: ready <= set(view.instances), timeout=30))
    yield directory
    pytest_twisted.blockon(directory.stopService())


def ask(member: Directory, service: str, method: str, **kwargs: Any) -> Deferred[Any]:
    """A member's call (the tests that make them run on the reactor: ``yield ask(...)``;
    the raw clients they drive block it meanwhile, which the member's links survive)."""
    return member.call(service, method, kwargs, timeout=5)


def player(edge: EdgeCluster, user: str, source: str = "127.0.0.1", broker: int = 0) -> RawClient:
    """A logged-in player ``user`` (password ``pw-<user>``) from ``source``."""
    client = RawClient(edge.ports[broker], source=source)
    client.login(user, f"pw-{user}")
    return client


def collect(
    client: RawClient,
    enough: Callable[[list[Received]], bool] | None = None,
    quiet: float = 0.5,
) -> list[Received]:
    """The packets ``client`` receives: until ``enough(packets)`` holds (if given; failing
    after :data:`POLL_TIMEOUT` s), then for ``quiet`` more seconds, watching that nothing
    more comes (a check that only a fixed time can make)."""
    got: list[Received] = []
    client.sock.settimeout(0.1)
    try:
        deadline = time.monotonic() + POLL_TIMEOUT
        while enough is not None and not enough(got):
            if time.monotonic() > deadline:
                raise AssertionError(f"not enough packets within {POLL_TIMEOUT:g} s: {got}")
            with contextlib.suppress(TimeoutError):
                got.append(client.recv())
        deadline = time.monotonic() + quiet
        while time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                got.append(client.recv())
    finally:
        client.sock.settimeout(5.0)
    return got


def count(n: int, route: str | None = None) -> Callable[[list[Received]], bool]:
    """``enough`` for :func:`collect`: ``n`` packets (on ``route``, if given)."""
    return lambda got: sum(1 for p in got if route in (None, p.route)) >= n


def refused(packet: Received, route: str) -> bool:
    """Whether ``packet`` is the refusal of a route that does not exist."""
    return (
        packet.kind == PacketKind.ERROR
        and packet.code == ClientError.UNKNOWN_ROUTE
        and (packet.message or "").endswith(f"no such route {route!r}")
    )


INTERNAL_ROUTES = [
    ("session.open", {"user_id": "bob", "broker": "x"}),
    ("session.track", {"session_id": "x", "joined": ["room:secret"]}),
    ("session.closed", {"session_id": "x"}),
    ("session.find", {"user_id": "bob"}),
    ("session.get", {"session_id": "x"}),
    ("echo.whoami", {}),
    ("echo.note", {"junk": "x" * 100}),
    ("echo.echo", {}),
    ("fight.allocate", {"players": ["erin"]}),
    ("fight.status", {}),
    ("broker.push", {}),
    ("broker.kick", {}),
    ("sso.login", {"user": "bob", "password": "guess"}),
    ("sso.register", {"user": "eve2", "password": "x"}),
    ("chat.nosuch", {}),
    ("nosuch.thing", {}),
]


@pytest_twisted.inlineCallbacks
def test_internal_and_demo_routes_do_not_exist_for_players(
    edge: EdgeCluster, member: Directory
) -> None:
    """Session internals, the demo echo, the dispatcher, the brokers' own endpoint and the
    login routes after login: as a REQUEST or a NOTIFY, each is refused exactly like a route
    that does not exist, and nothing reaches a worker."""
    eve = player(edge, "erin", "127.0.0.20")
    try:
        for route, body in INTERNAL_ROUTES:
            assert refused(eve.request(route, body), route), route
        for route, body in INTERNAL_ROUTES:
            eve.send(PacketKind.NOTIFY, route, body)
        answers = collect(eve, count(len(INTERNAL_ROUTES)))
        assert [a.seq for a in answers] == [None] * len(INTERNAL_ROUTES)
        assert all(refused(a, r) for a, (r, _) in zip(answers, INTERNAL_ROUTES, strict=True))
    finally:
        eve.close()
    assert (yield ask(member, "echo", "notes")) == [], "a player's echo.note was recorded"
    assert (yield ask(member, "session", "find", user_id="bob")) == []


@pytest_twisted.inlineCallbacks
def test_impersonation_fails(edge: EdgeCluster, member: Directory) -> None:
    """Eve cannot open a session for bob, resume one with a forged token, or chat as bob:
    identity comes from the session, and a body naming another user is refused."""
    bob = player(edge, "bob", "127.0.0.21", broker=1)
    eve = player(edge, "erin", "127.0.0.22")
    try:
        opened = eve.request("session.open", {"user_id": "bob", "broker": "broker-1"})
        assert refused(opened, "session.open")
        forger = RawClient(edge.ports[1], source="127.0.0.22")
        bob_sid = (yield ask(member, "session", "find", user_id="bob"))[0]["session_id"]
        answer = forger.request("session.resume", {"session_id": bob_sid, "token": "v1.x.y"})
        assert (answer.kind, answer.code) == (PacketKind.ERROR, ClientError.RESUME_FAILED)
        forger.close()
        for client in (bob, eve):
            assert client.request("chat.join", {"room": "plaza"}).kind == PacketKind.RESPONSE
        posing = eve.request("chat.send", {"content": "give me your gold", "from": "bob"})
        assert (posing.code, "unexpected keyword argument 'from'" in (posing.message or "")) == (
            ClientError.BAD_REQUEST,
            True,
        )
        eve.send(PacketKind.NOTIFY, "chat.send", {"content": "hello"})
        heard = [
            p.value for p in collect(bob, count(1, "chat.message")) if p.route == "chat.message"
        ]
        assert [(m["from"], m["content"]) for m in heard] == [("erin", "hello")]
        found = yield ask(member, "session", "find", user_id="bob")
        assert [s["session_id"] for s in found] == [bob_sid]
    finally:
        bob.close()
        eve.close()


def test_eavesdropping_fails(edge: EdgeCluster) -> None:
    """Eve cannot add a room to her own record (then resume into it), nor list its members:
    bob's and carol's words in room secret never reach her."""
    bob = player(edge, "bob", "127.0.0.23")
    carol = player(edge, "carol", "127.0.0.24", broker=1)
    eve_client = RawClient(edge.ports[0], source="127.0.0.25")
    login = eve_client.login("erin", "pw-erin")
    try:
        for client in (bob, carol):
            assert client.request("chat.join", {"room": "secret"}).kind == PacketKind.RESPONSE
        track = {"session_id": login["session_id"], "joined": ["room:secret"]}
        assert refused(eve_client.request("session.track", track), "session.track")
        members = eve_client.request("chat.members", {"room": "secret"})
        assert members.code == ClientError.BAD_REQUEST
        eve_client.close()
        eve = RawClient(edge.ports[1], source="127.0.0.25")
        resumed = eve.request(
            "session.resume", {"session_id": login["session_id"], "token": login["token"]}
        )
        assert resumed.kind == PacketKind.RESPONSE
        bob.send(PacketKind.NOTIFY, "chat.send", {"content": "the password is swordfish"})
        collect(carol, count(1, "chat.message"), quiet=0.0)
        # Carol has it: had eve been let in, hers would be on its way too.
        assert not [p for p in collect(eve) if p.route == "chat.message"]
        eve.close()
    finally:
        bob.close()
        carol.close()


@pytest_twisted.inlineCallbacks
def test_kicking_or_editing_another_player_fails(edge: EdgeCluster, member: Directory) -> None:
    """Knowing bob's session id, eve can neither set him offline, log him out, nor write
    props into his record: his record is unchanged and his token refresh still works."""
    bob = player(edge, "bob", "127.0.0.26")
    eve = player(edge, "erin", "127.0.0.27", broker=1)
    try:
        sid = (yield ask(member, "session", "find", user_id="bob"))[0]["session_id"]
        attacks = [
            ("session.closed", {"session_id": sid, "broker": "broker-1"}),
            ("session.track", {"session_id": sid, "props": {"role": "admin"}}),
            ("session.open", {"user_id": "bob", "broker": "broker-2"}),
        ]
        for route, body in attacks:
            assert refused(eve.request(route, body), route), route
        record = yield ask(member, "session", "get", session_id=sid)
        assert (record["online"], record["props"]) == (True, {})
        assert bob.request("session.refresh", {}).kind == PacketKind.RESPONSE
    finally:
        bob.close()
        eve.close()


@pytest_twisted.inlineCallbacks
def test_a_process_without_the_cluster_key_cannot_become_sso(
    edge: EdgeCluster, member: Directory, tmp_path: Path
) -> None:
    """A rogue sso started without CURVE keys (``--insecure``) never registers: players'
    logins all reach the real sso (wrong passwords refused), the rogue catches nothing;
    a key-less tool cannot call the session service either."""
    catch = tmp_path / "caught.txt"
    rogue = TwistdProcess(
        "mmo-worker",
        [
            *("--yellow", edge.yellow, "--handler", "tests.integration.rogue:PasswordCatcher"),
            *("--insecure", "--instance-id", "rogue-sso"),
        ],
        tmp_path,
        "rogue",
        {"MMO_CURVE_KEYS": "", CATCH_ENV: str(catch)},
    ).start()
    try:
        assert rogue.wait_for_log("serving sso", timeout=POLL_TIMEOUT), rogue.log_tail()
        # Watching that nothing happens: three heartbeats' time to register, if it could.
        yield sleep(3.0)
        assert [i.instance_id for i in member.view.get("sso")] == ["sso"]
        outcomes = []
        for n in range(10):
            user = ["alice", "bob", "carol", "dave", "frank"][n % 5]
            client = RawClient(edge.ports[n % 2], source=f"127.0.1.{n + 1}")
            password = f"pw-{user}" if n % 2 == 0 else "wrong"
            answer = client.request("sso.login", {"user": user, "password": password})
            outcomes.append((n % 2 == 0, answer.kind == PacketKind.RESPONSE, answer.message))
            client.close()
        assert all(good == accepted for good, accepted, _ in outcomes), outcomes
        assert all("BadCredentials" in (m or "") for good, _, m in outcomes if not good)
        assert not catch.exists(), catch.read_text()
    finally:
        rogue.stop()
    find = ["session.find", '{"user_id": "alice"}']
    keyless = subprocess.run(
        [*MMO, "call", "--yellow", edge.yellow, "--timeout", "2", *find],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "MMO_CURVE_KEYS": ""},
    )
    assert keyless.returncode == 1 and "DeadlineExceeded" in keyless.stdout + keyless.stderr


def test_password_guessing_is_throttled_and_the_owner_still_logs_in(edge: EdgeCluster) -> None:
    """Guessing frank's password from one address stops after 5 failures (LoginThrottled,
    even for the right password); frank from another address logs in meanwhile, and others
    from the guessing address too; after login, sso.login is no route at all."""
    guesser = RawClient(edge.ports[0], source="127.0.0.30")
    started = time.monotonic()
    answers = [
        guesser.request("sso.login", {"user": "frank", "password": f"guess{n}"}) for n in range(30)
    ]
    took = time.monotonic() - started
    kinds = [(a.message or "").partition(":")[0] for a in answers]
    assert kinds == ["BadCredentials"] * 5 + ["LoginThrottled"] * 25, kinds
    right = guesser.request("sso.login", {"user": "frank", "password": "pw-frank"})
    assert "LoginThrottled" in (right.message or "")
    print(f"\nATTACK password guessing: 30 guesses in {took:.2f}s, 5 checked, 25 throttled")
    owner = player(edge, "frank", "127.0.0.31")
    other = player(edge, "dave", "127.0.0.30")
    try:
        assert refused(owner.request("sso.login", {"user": "frank", "password": "x"}), "sso.login")
    finally:
        for client in (guesser, owner, other):
            client.close()


def test_mass_registration_is_throttled_per_address(edge: EdgeCluster) -> None:
    """One address makes at most 10 accounts an hour; another address still may."""
    spammer = RawClient(edge.ports[1], source="127.0.0.40")
    answers = [
        spammer.request("sso.register", {"user": f"spam{n}", "password": "pw"}) for n in range(12)
    ]
    spammer.close()
    assert [a.kind for a in answers[:10]] == [PacketKind.RESPONSE] * 10
    assert all("RegistrationThrottled" in (a.message or "") for a in answers[10:])
    honest = RawClient(edge.ports[1], source="127.0.0.41")
    assert honest.request("sso.register", {"user": "honest", "password": "pw"}).value
    honest.close()


@pytest_twisted.inlineCallbacks
def test_one_session_per_account_and_records_stay_bounded(
    edge: EdgeCluster, member: Directory
) -> None:
    """A new login replaces the account's session (the old connection is kicked); twenty
    logins leave one record."""
    first = player(edge, "carol", "127.0.0.50")
    second = player(edge, "carol", "127.0.0.51", broker=1)
    kick = first.recv_until(PacketKind.KICK)
    assert kick.code == ClientError.KICKED and "replaced" in (kick.message or "")
    assert first.closed()
    for n in range(20):
        player(edge, "carol", f"127.0.0.{60 + n}", broker=n % 2).close()
    sessions = yield ask(member, "session", "find", user_id="carol")
    assert len(sessions) == 1
    second.close()


@pytest_twisted.inlineCallbacks
def test_channels_per_session_are_bounded_and_so_is_what_a_resume_restores(
    edge: EdgeCluster, member: Directory
) -> None:
    """Logic asking a broker to put one session in 100 channels gets it into 32 (the
    default max-channels); the record, and what a resume restores, hold 32."""
    client = RawClient(edge.ports[0], source="127.0.0.90")
    login = client.login("dave", "pw-dave")
    sessions = Sessions(member, "attack-test")
    session = Session(id=login["session_id"], broker="broker-1")
    for n in range(100):
        sessions.join(session, f"guild:{n}")

    @defer.inlineCallbacks
    def full() -> Any:
        record = yield ask(member, "session", "get", session_id=login["session_id"])
        return record if len(record["channels"]) >= 32 else None

    record = yield until(full, what="32 channels in the session's record", interval=0.1)
    assert len(record["channels"]) == 32
    client.close()
    again = RawClient(edge.ports[1], source="127.0.0.90")
    resumed = again.request(
        "session.resume", {"session_id": login["session_id"], "token": login["token"]}
    )
    assert resumed.kind == PacketKind.RESPONSE
    record = yield ask(member, "session", "get", session_id=login["session_id"])
    assert len(record["channels"]) == 32
    again.close()


def chat_messages(clients: list[RawClient], at_least: int, quiet: float) -> list[int]:
    """Read every client's packets at once, until each got ``at_least`` chat messages
    (failing after :data:`POLL_TIMEOUT` s) and then none came for ``quiet`` seconds: how
    many chat messages each got."""
    counts = [0] * len(clients)
    index = {client.sock: i for i, client in enumerate(clients)}
    deadline = time.monotonic() + POLL_TIMEOUT
    last = time.monotonic()
    while min(counts) < at_least or time.monotonic() - last < quiet:
        if time.monotonic() > deadline:
            raise AssertionError(f"chat messages still coming, or too few: {counts}")
        readable, _, _ = select.select(list(index), [], [], 0.05)
        for sock in readable:
            counts[index[sock]] += clients[index[sock]].recv().route == "chat.message"
            last = time.monotonic()
    return counts


def test_broadcast_amplification_is_bounded_by_the_senders_budget(edge: EdgeCluster) -> None:
    """One player sending chat messages at the full packet rate into a room of 20 makes
    each member receive at most burst + rate x time of them (40 + 20/s), not all."""
    members = [player(edge, u, f"127.0.2.{n + 1}") for n, u in enumerate(CROWD[:20])]
    attacker = player(edge, CROWD[20], "127.0.2.100")
    try:
        for client in [*members, attacker]:
            assert client.request("chat.join", {"room": "crowd"}).kind == PacketKind.RESPONSE
        content = "x" * 1000
        started = time.monotonic()
        sent = 0
        while time.monotonic() - started < 3.0:  # the attack under test: 3 s of flooding
            attacker.send(PacketKind.NOTIFY, "chat.send", {"content": content})
            sent += 1
            time.sleep(0.005)
        took = time.monotonic() - started
        # The burst must go through; then read until the fan-out is over.
        heard = chat_messages(members, at_least=40, quiet=1.0)
        # The budget refills all the time the broker could fan out, to the end of the
        # reading (however slow the machine made it): at most burst + rate x that time.
        bound = 40 + 20 * (time.monotonic() - started)
    finally:
        for client in [*members, attacker]:
            client.close()
    print(
        f"\nATTACK broadcast amplification: {sent} sends in {took:.1f}s, each of 20 members got"
        f" {min(heard)}-{max(heard)} (bound {bound:.0f}); {max(heard) * 1.1:.0f} KB each"
    )
    assert max(heard) <= bound


def test_failed_notifies_are_answered_and_the_log_stays_small(edge: EdgeCluster) -> None:
    """A NOTIFY that fails comes back as an ERROR (no seq) naming the route and the reason;
    150 NOTIFYs that make a handler raise log one traceback, not 150."""
    alice = player(edge, "alice", "127.0.0.95")
    try:
        alice.send(PacketKind.NOTIFY, "chat.send", {"content": "before joining"})
        alice.send(PacketKind.NOTIFY, "chat.send", {"text": "the wrong key"})
        alice.send(PacketKind.NOTIFY, "chat.nosuch", {})
        first = sorted((p.kind, p.seq, p.code, p.message) for p in collect(alice, count(3)))
        assert first == [
            (PacketKind.ERROR, None, ClientError.UNKNOWN_ROUTE, "no such route 'chat.nosuch'"),
            (
                PacketKind.ERROR,
                None,
                ClientError.BAD_REQUEST,
                "chat.send: got an unexpected keyword argument 'text'",
            ),
            (PacketKind.ERROR, None, ClientError.BAD_REQUEST, "chat.send: join a room first"),
        ]
        before = edge.processes["rig"].log_tail(10_000).count("Traceback")
        for _ in range(150):
            alice.send(PacketKind.NOTIFY, "rig.fail", {"message": "boom"})
        errors = [p for p in collect(alice, count(150)) if p.kind == PacketKind.ERROR]
        assert len(errors) == 150
        assert all(p.message == "rig.fail: EchoFailure: boom" for p in errors)
        after = edge.processes["rig"].log_tail(10_000).count("Traceback")
        assert after - before == 1
    finally:
        alice.close()


@pytest_twisted.inlineCallbacks
def test_a_resume_cut_short_leaves_no_session_online_without_a_connection(
    edge: EdgeCluster, member: Directory
) -> None:
    """A player resumes and sends a second packet before the answer: the broker closes
    the connection (NOT_LOGGED_IN). The session it was resuming must not be left online
    with no connection behind it (keeping its rooms and counting as online for ever)."""
    first = RawClient(edge.ports[0], source="127.0.0.92")
    login = first.login("frank", "pw-frank")
    sid = login["session_id"]
    first.close()

    @defer.inlineCallbacks
    def offline(broker: str | None = None) -> Any:
        record = yield ask(member, "session", "get", session_id=sid)
        return not record["online"] and broker in (None, record.get("broker"))

    yield until(offline, what="the session offline")
    cut = RawClient(edge.ports[1], source="127.0.0.92")
    # Both in one write: the broker reads the second while the resume is pending, however
    # slow this process is.
    cut.send_bytes(
        cut.frame(
            PacketKind.REQUEST, "session.resume", {"session_id": sid, "token": login["token"]}
        )
        + cut.frame(PacketKind.REQUEST, "echo.echo", {"too": "soon"})
    )
    assert cut.recv().code == ClientError.NOT_LOGGED_IN and cut.closed()
    # The resume went on (the record names broker-2); it must end offline.
    yield until(lambda: offline("broker-2"), what="the resumed session offline", interval=0.2)
