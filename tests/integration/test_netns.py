"""A real cluster across machines (Linux network namespaces), with partitions: what players notice.

The network (``tests/integration/netns.py``): five hosts on one switch, addresses in
10.251.77.0/24 used only inside the namespaces, nothing else contacted, everything deleted
afterwards (leftovers of a crashed run at the start):

=====  ===========  ==============================================================
host   address      runs
=====  ===========  ==============================================================
A      10.251.77.1  yellow (``tcp://A:5555``), the session service, the brokerlist (``:6000``)
B      10.251.77.2  workers: sso, chat, the fight dispatcher and its fight processes
C1     .11          broker ``broker-c1`` (``C1:6100``, ``--advertise-host C1``)
C2     .12          broker ``broker-c2``
D      .20          the players: ``tests/integration/netns_player.py``, real SDK clients
=====  ===========  ==============================================================

Every process runs inside its host with ``ip netns exec``; workers bind their ZeroMQ
sockets with ``--bind-host <their host>``. The CURVE keys and the token key are the test
run's (``tests/conftest.py``).

Scenarios, each printing one ``NETNS`` line of figures (``pytest -s``):

1. The demo flows across hosts: log in on C1 and C2, one room across both brokers (every
   message reaches every member exactly once), a whole fight between a player on C1 and
   one on C2, and the players of a killed broker resume on the other one.
2. B is cut from everyone (its switch port down), then healed.
3. C1 is cut from B only (blackhole routes on both), its players move to C2, then healed.

Probing players send ``chat.echo`` (served on B) every :data:`PROBE_INTERVAL` s, each with
a :data:`DEADLINE` s deadline, beside whatever the scenario does. Figures:

- **requests / ok / errors**: probe requests sent, answered, failed (by kind: the broker's
  code, ``UNAVAILABLE``, ``TIMEOUT``...);
- **lost**: requests with no answer at all within their deadline (``CLIENT_TIMEOUT``);
- **over_deadline**: requests that ended more than :data:`SLACK` s past their deadline;
- **worst**: the longest any probe request took (the worst failure, too);
- **detect / recover**: per scenario (see each test).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .netns import NetnsTwistd, Network, NetworkError

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parents[2]
#: Host name -> last byte of its address.
HOSTS = {"a": 1, "b": 2, "c1": 11, "c2": 12, "d": 20}
BROKER_PORT = 6100
#: Players of each scenario (scenario: {user: the host of its first broker, or None: the
#: brokerlist's choice}).
PLAYERS: dict[str, dict[str, str | None]] = {
    "demo": {"alice": "c1", "bob": "c1", "carol": "c2", "dave": None},
    "cut-b": {"erin": "c1", "frank": "c1", "gina": "c2", "hank": "c2"},
    "cut-c1-b": {"ivan": "c1", "judy": "c1", "kim": "c2", "leo": "c2"},
}
#: Logged in on C1 after scenario 3's heal.
LATECOMER = "mia"
ACCOUNTS = ",".join(f"{u}:pw-{u}" for users in [*PLAYERS.values(), {LATECOMER: ""}] for u in users)
#: The players' request deadline (s); longer than the brokers' request-timeout (5 s), so a
#: ``CLIENT_TIMEOUT`` means the cluster never answered.
DEADLINE = 8.0
#: How late past its deadline a request may end before the over-deadline figure counts it.
SLACK = 0.5
#: Seconds between two probe requests of one player.
PROBE_INTERVAL = 0.25
#: How long the scenarios wait for what a partition or a heal must bring about (B's
#: instances out of the registry or back, players moved or served again): generous, since it
#: bounds a hang and is no figure (those are printed: the registry drops an instance 3
#: missed 1 s heartbeats after the last one, a heal serves again within a second or so).
WAIT = 30.0


# -- the cluster ---------------------------------------------------------------------


class NetCluster:
    """The cluster's processes, each inside its host (see the module docstring).

    Args:
        network: the built network.
        log_dir: where each process's log goes.
    """

    def __init__(self, network: Network, log_dir: Path) -> None:
        self.network = network
        self.log_dir = log_dir
        self.yellow = f"tcp://{network['a'].ip}:5555"
        self.brokerlist_url = f"http://{network['a'].ip}:6000/"
        self.brokers = {h: f"{network[h].ip}:{BROKER_PORT}" for h in ("c1", "c2")}
        self.processes: dict[str, NetnsTwistd] = {}
        self.env: dict[str, str] = {}

    def _start(self, host: str, name: str, role: str, args: list[str]) -> NetnsTwistd:
        process = NetnsTwistd(self.network, host, role, args, self.log_dir, name, self.env)
        self.processes[name] = process
        process.start()
        return process

    def _worker(self, host: str, name: str, handler: str, *extra: str) -> None:
        self._start(host, name, "mmo-worker", ["--yellow", self.yellow, "--handler", handler,
                    "--instance-id", name, "--bind-host", self.network[host].ip,
                    *extra])  # fmt: skip

    def start(self) -> None:
        """Start every process (the roles find each other in any order)."""
        a = self.network["a"].ip
        self._start("a", "yellow", "mmo-yellow", ["--listen", self.yellow])
        self._worker("a", "session", "mmo.sessions:SessionService")
        self._start("a", "brokerlist", "mmo-brokerlist",
                    ["--yellow", self.yellow, "--listen", f"tcp:6000:interface={a}"])  # fmt: skip
        self._worker("b", "sso", "mmo.examples.sso:SSOService", "--set", f"accounts={ACCOUNTS}")
        self._worker("b", "chat", "mmo.examples.chat:ChatService")
        self._start("b", "fight", "mmo-fight", [
            "--yellow", self.yellow, "--handler", "mmo.examples.fight:TurnFight",
            "--cap", "10", "--min-spare", "1", "--instance-id", "fight",
            "--bind-host", self.network["b"].ip,
        ])  # fmt: skip
        for host in self.brokers:
            self.start_broker(host)

    def start_broker(self, host: str) -> NetnsTwistd:
        """(Re)start the broker of ``host`` (``broker-<host>``)."""
        ip = self.network[host].ip
        return self._start(host, f"broker-{host}", "mmo-broker", [
            "--yellow", self.yellow, "--listen", f"tcp:{BROKER_PORT}:interface={ip}",
            "--advertise-host", ip, "--route", "fight=fight-worker",
            "--instance-id", f"broker-{host}",
        ])  # fmt: skip

    def logs(self, lines: int = 25) -> str:
        """The tail of every process's log."""
        return "\n".join(f"--- {n} ---\n{p.log_tail(lines)}" for n, p in self.processes.items())

    def stop(self) -> None:
        """Stop everything, brokers first."""
        for name in reversed(list(self.processes)):
            self.processes[name].stop(timeout=10)


class Players:
    """The player driver (``netns_player``) running in host D, driven over its pipes.

    Args:
        network: the network.
        cluster: the cluster it plays against.
        log_dir: where its log (stderr) goes.
    """

    def __init__(self, network: Network, cluster: NetCluster, log_dir: Path) -> None:
        self.log_path = log_dir / "players.log"
        argv = network.argv("d", [
            sys.executable, "-m", "tests.integration.netns_player",
            "--brokerlist", cluster.brokerlist_url, "--yellow", cluster.yellow,
            "--max-seconds", "170",
        ])  # fmt: skip
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                cwd=ROOT,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
            )
        self.events: list[dict[str, Any]] = []
        self._replies: dict[int, queue.Queue[dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self._next = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            with self._lock:
                if "event" in message:
                    self.events.append(message)
                    continue
                box = self._replies.get(message.get("id"))
            if box is not None:
                box.put(message)

    def call(self, cmd: str, timeout: float = 30.0, **args: Any) -> Any:
        """Run command ``cmd`` in the driver; its result.

        Raises:
            AssertionError: the command failed, or no answer within ``timeout`` s.
        """
        with self._lock:
            self._next += 1
            ident = self._next
            box: queue.Queue[dict[str, Any]] = queue.Queue()
            self._replies[ident] = box
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"id": ident, "cmd": cmd, **args}).encode() + b"\n")
        self.proc.stdin.flush()
        try:
            answer = box.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(
                f"players: no answer to {cmd} within {timeout:g} s\n{self.log_tail()}"
            ) from None
        finally:
            with self._lock:
                del self._replies[ident]
        if not answer["ok"]:
            raise AssertionError(f"players: {cmd} {args} failed: {answer['error']}")
        return answer["result"]

    def events_of(self, name: str, since: float = 0.0) -> list[dict[str, Any]]:
        """The events called ``name`` at ``since`` or later."""
        with self._lock:
            return [e for e in self.events if e["event"] == name and e["t"] >= since]

    def log_tail(self, lines: int = 30) -> str:
        """The end of the driver's log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """Ask the driver to quit; kill it if it does not."""
        with contextlib.suppress(AssertionError, OSError):
            self.call("quit", timeout=5)
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)


@dataclass
class Net:
    """What a scenario gets: the network, the cluster and the players."""

    network: Network
    cluster: NetCluster
    players: Players

    def host_of(self, ip: str) -> str:
        """The host name of address ``ip`` (``ip`` itself if no host has it)."""
        return next((h.name for h in self.network.hosts.values() if h.ip == ip), ip)


def poll(what: str, check: Callable[[], Any], timeout: float, every: float = 0.1) -> Any:
    """Call ``check()`` until it returns something true (an AssertionError counts as
    false); return that, or fail after ``timeout`` s naming ``what``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
            if last:
                return last
        except AssertionError as e:
            last = e
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s (last: {last})")
        time.sleep(every)


def instances_of(view: dict[str, list[dict[str, Any]]]) -> set[str]:
    """Every instance id in a ``services`` view."""
    return {i["instance"] for instances in view.values() for i in instances}


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    """The network, the cluster and the players; all removed afterwards, also on failure."""
    network = Network(HOSTS)
    why = ""
    try:
        network.build()
    except NetworkError as e:
        why = str(e)
    if why:
        pytest.fail(
            f"NETNS: cannot build the test network of Linux network namespaces: {why}. "
            "tests/integration/test_netns.py needs root and iproute2 (`ip netns add` must work).",
            pytrace=False,
        )
    log_dir = tmp_path_factory.mktemp("netns")
    print(f"NETNS logs: {log_dir}")
    cluster = NetCluster(network, log_dir)
    players: Players | None = None
    try:
        cluster.start()
        players = Players(network, cluster, log_dir)
        wanted = {"session", "sso", "chat", "fight", "broker-c1", "broker-c2"}
        ready = Net(network, cluster, players)

        def registered() -> bool:
            """Whether every role is in the registry."""
            view = ready.players.call("services")
            return wanted <= instances_of(view) and "fight-worker" in view

        poll("every role registered", registered, 40, every=0.2)
        poll(
            "both brokers in the brokerlist",
            lambda: set(ready.players.call("brokerlist")) == set(cluster.brokers.values()),
            20,
            every=0.2,
        )
        yield ready
    except BaseException:
        print(cluster.logs())
        if players is not None:
            print(f"--- players ---\n{players.log_tail()}")
        raise
    finally:
        try:
            network.heal_all()
            if players is not None:
                players.stop()
            cluster.stop()
        finally:
            network.teardown()


# -- figures -------------------------------------------------------------------------


@dataclass
class Figures:
    """What one scenario measured (see the module docstring)."""

    scenario: str
    outcomes: list[dict[str, Any]]
    timings: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int | str] = field(default_factory=dict)

    @property
    def requests(self) -> int:
        """Probe requests sent."""
        return len(self.outcomes)

    @property
    def ok(self) -> int:
        """Probe requests answered."""
        return sum(o["ok"] for o in self.outcomes)

    @property
    def errors(self) -> Counter[str]:
        """Failed probe requests by kind."""
        return Counter(o["kind"] for o in self.outcomes if not o["ok"])

    @property
    def lost(self) -> int:
        """Probe requests never answered within their deadline."""
        return self.errors["CLIENT_TIMEOUT"]

    @property
    def over_deadline(self) -> int:
        """Probe requests that ended past their deadline (plus slack)."""
        return sum(o["t1"] - o["t0"] > DEADLINE + SLACK for o in self.outcomes)

    @property
    def worst(self) -> float:
        """The longest a probe request took."""
        return max((o["t1"] - o["t0"] for o in self.outcomes), default=0.0)

    @property
    def worst_failure(self) -> float:
        """The longest a failed probe request took."""
        return max((o["t1"] - o["t0"] for o in self.outcomes if not o["ok"]), default=0.0)

    def line(self) -> str:
        """One line for the log and the docs."""
        errors = ",".join(f"{k}:{v}" for k, v in sorted(self.errors.items())) or "-"
        timings = " ".join(f"{k}={v:.2f}s" for k, v in self.timings.items())
        counts = " ".join(f"{k}={v}" for k, v in self.counts.items())
        probes = (
            f"requests={self.requests} ok={self.ok}"
            f" errors={sum(self.errors.values())} ({errors}) lost={self.lost}"
            f" over_deadline={self.over_deadline} worst={self.worst:.2f}s"
            f" worst_failure={self.worst_failure:.2f}s"
            if self.outcomes
            else ""
        )
        parts = (f"NETNS {self.scenario}:", probes, counts, timings)
        return " ".join(part for part in parts if part)


def assert_no_hang(figures: Figures) -> None:
    """What every scenario holds: every request answered by the cluster, ok or with a clear
    error, before the player's own deadline fired (none lost); each failure is the broker's
    ``UNAVAILABLE`` or ``TIMEOUT`` (its answer at the latest at its request-timeout, 5 s,
    shorter than the players' deadline). How long they took is in the figures."""
    assert figures.requests > 50, figures.line()
    assert figures.lost == 0, figures.line()
    assert set(figures.errors) <= {"UNAVAILABLE", "TIMEOUT"}, figures.line()


def login_all(net: Net, scenario: str) -> dict[str, str]:
    """Log in the players of ``scenario`` on their brokers (or where the brokerlist sends
    them); ``{user: broker address}``."""
    where = {}
    for user, host in PLAYERS[scenario].items():
        broker = net.cluster.brokers[host] if host else None
        reply = net.players.call("login", user=user, broker=broker)
        allowed = {broker} if broker else set(net.cluster.brokers.values())
        assert reply["broker"] in allowed, reply
        where[user] = reply["broker"]
    return where


# -- scenarios -----------------------------------------------------------------------


def test_demo_flows_work_across_hosts_and_a_killed_brokers_players_resume(net: Net) -> None:
    """Across hosts: every role advertises its own host, players on two brokers share a room
    (each message delivered exactly once), fight a whole fight, and resume on C2 when C1's
    broker is killed."""
    players, cluster = net.players, net.cluster
    users = list(PLAYERS["demo"])
    # What each role advertises is an address of its own host, reachable from the others.
    view = players.call("services")
    expected_host = {"session": "a", "sso": "b", "chat": "b", "fight": "b", "fight-worker": "b",
                     "broker": None}  # fmt: skip
    for service, instances in view.items():
        for instance in instances:
            for endpoint in instance["endpoints"].values():
                host = net.host_of(endpoint.removeprefix("tcp://").rpartition(":")[0])
                want = expected_host.get(service) or instance["instance"].removeprefix("broker-")
                assert host == want, (service, instance)
    assert sorted(players.call("brokerlist")) == sorted(cluster.brokers.values())

    started = time.monotonic()
    where = login_all(net, "demo")
    login_seconds = time.monotonic() - started
    members = players.call("join", users=users, room="demo")
    assert max(members.values(), key=len) == sorted(users), members
    chat = players.call("chat", senders=users, members=users, tag="demo-1", count=5)
    assert chat["missed"] == 0 and chat["dup"] == 0, chat

    fight = players.call("fight", users=["alice", "carol"])  # one on C1, one on C2
    assert fight["winner"] in ("alice", "carol"), fight
    assert fight["ends"] == {"alice": fight["winner"], "carol": fight["winner"]}, fight

    # kill -9 C1's broker: its players resume on C2 (the SDK, through the brokerlist).
    killed_at = time.monotonic()
    cluster.processes["broker-c1"].kill()
    on_c1 = [u for u in users if where[u] == cluster.brokers["c1"]]
    resumed = players.call("resumed", users=on_c1, since=killed_at, timeout=20)
    assert {r["broker"] for r in resumed.values()} == {cluster.brokers["c2"]}, resumed
    resume_seconds = max(r["t"] for r in resumed.values()) - killed_at
    again = players.call("chat", senders=users, members=users, tag="demo-2", count=5)
    assert again["missed"] == 0 and again["dup"] == 0, again
    # The killed broker is started again (the next scenarios use it).
    restarted_at = time.monotonic()
    cluster.start_broker("c1")
    poll("C1 listed again", lambda: cluster.brokers["c1"] in players.call("brokerlist"), 20)
    relisted = time.monotonic() - restarted_at

    figures = Figures(
        "demo",
        [],
        timings={
            "login4": login_seconds,
            "chat_all_heard": chat["seconds"],
            "fight": fight["seconds"],
            "resume_after_kill": resume_seconds,
            "chat_after_resume": again["seconds"],
            "broker_relisted": relisted,
        },
        counts={
            "deliveries": chat["deliveries"] + again["deliveries"],
            "missed": chat["missed"] + again["missed"],
            "dup": chat["dup"] + again["dup"],
            "fight_turns": fight["turns"],
            "placed": ",".join(
                f"{h}:{sum(w == b for w in where.values())}" for h, b in cluster.brokers.items()
            ),
        },
    )
    print(figures.line())


def instances_on(net: Net, host: str) -> dict[str, str]:
    """The instances whose every endpoint is on ``host``, in the registry now:
    ``{instance id: service}``."""
    view = net.players.call("services")
    return {
        i["instance"]: service
        for service, instances in view.items()
        for i in instances
        if i["endpoints"]
        and all(
            e.removeprefix("tcp://").rpartition(":")[0] == net.network[host].ip
            for e in i["endpoints"].values()
        )
    }


def served_since(players: Players, users: dict[str, float]) -> bool:
    """Whether each player has had a probe request sent at its time or later answered."""
    outcomes = players.call("probe_outcomes")
    return all(any(o["ok"] and o["t0"] >= t for o in outcomes if o["user"] == u)
               for u, t in users.items())  # fmt: skip


def first_ok_after(outcomes: list[dict[str, Any]], user: str, since: float) -> float:
    """When the first request ``user`` sent at ``since`` or later was answered."""
    return min(o["t1"] for o in outcomes if o["user"] == user and o["ok"] and o["t0"] >= since)


def test_cutting_the_workers_host_fails_requests_fast_and_heals_by_itself(net: Net) -> None:
    """B cut from everyone: its instances expire from the registry, players' requests fail
    clearly before their deadlines (none hangs), a fight in progress never hangs silently;
    healed, B's workers (the same processes) come back by themselves and requests and fights
    succeed again."""
    players, network = net.players, net.network
    users = list(PLAYERS["cut-b"])
    login_all(net, "cut-b")
    players.call("join", users=users, room="cut-b")
    before = instances_on(net, "b")
    # The workers the test started come back as they are; fight processes are the pool's.
    on_b = {i for i, service in before.items() if service != "fight-worker"}
    assert on_b == {"sso", "chat", "fight"}, before
    fighters = ["erin", "gina"]  # one on C1, one on C2
    fight = players.call("fight_begin", users=fighters)

    players.call("probe_start", users=users, interval=PROBE_INTERVAL, timeout=DEADLINE)
    time.sleep(1.5)  # pacing: a baseline of answered requests before the cut
    cut = time.monotonic()
    network.cut_host("b")
    try:
        poll("B's instances out of the registry", lambda: not set(before) & set(instances_on(
            net, "b")), WAIT)  # fmt: skip
        time.sleep(2.0)  # pacing: requests meet the registry's verdict for a while
    finally:
        healed = time.monotonic()
        network.heal_host("b")
    poll("B's workers back", lambda: on_b <= set(instances_on(net, "b")), WAIT)
    poll("every player served again", lambda: served_since(players, dict.fromkeys(users, healed)),
         WAIT)  # fmt: skip
    time.sleep(1.0)  # pacing: keep probing a little, a relapse would show
    outcomes = players.call("probe_stop", timeout=DEADLINE + 10)
    chat = players.call("chat", senders=users, members=users, tag="cut-b", count=3)

    # The fight begun before the cut: it goes on, or both players are told it is lost.
    def fight_told() -> list[Any]:
        """The ``fight.lost`` pushes, once each fighter got one."""
        pushes = [players.call("fight_pushes", user=u) for u in fighters]
        lost = [body for got in pushes for route, body in got if route == "fight.lost"]
        return lost if len(lost) == len(fighters) else []

    try:
        # Generous: a fight that goes on instead only costs this wait.
        told = poll("fight.lost after the heal", fight_told, 10.0)
        assert all(body["fight_id"] == fight["fight_id"] for body in told), told
        across = f"lost ({told[0].get('reason')})"
    except AssertionError:
        finished = players.call("fight_finish", fight=fight)
        assert finished["ends"] == dict.fromkeys(fighters, finished["winner"]), finished
        across = "finished"
    fight_started = time.monotonic()
    again = players.call("fight", users=fighters)
    assert again["ends"] == dict.fromkeys(fighters, again["winner"]), again
    fight_after = time.monotonic() - fight_started
    after = instances_on(net, "b")

    downs = [e for e in players.events_of("registry", cut) if e["change"] == "DOWN"]
    ups = [e for e in players.events_of("registry", healed) if e["change"] == "UP"]
    detect = max(e["t"] for e in downs if e["instance"] in before) - cut
    back = max(min(e["t"] for e in ups if e["instance"] == i) for i in on_b) - healed
    failures = [o for o in outcomes if not o["ok"]]
    recovered = max(first_ok_after(outcomes, u, healed) for u in users) - healed
    new_fights = sorted(i for i, svc in after.items() if svc == "fight-worker" and i not in before)
    figures = Figures(
        "cut B (workers) from everyone",
        outcomes,
        timings={
            "detect": detect,
            "first_error": min(o["t1"] for o in failures) - cut if failures else -1.0,
            "cut_for": healed - cut,
            "back_in_registry": back,
            "recover": recovered,
            "new_fight_after_heal": fight_after,
        },
        counts={
            "chat_missed": chat["missed"],
            "chat_dup": chat["dup"],
            "fight_across_cut": across,
            "new_fight_processes": len(new_fights),
        },
    )
    print(figures.line())
    # Dropped because they went silent (no goodbye could get out): each one's first DOWN.
    reasons: dict[str, str] = {}
    for e in downs:
        if e["instance"] in before:
            reasons.setdefault(e["instance"], e["reason"])
    assert set(reasons) == set(before) and set(reasons.values()) == {"expired"}, reasons
    assert failures, f"nobody noticed the cut: {figures.line()}"
    # While no chat instance is listed, chat.* is a service that is down, not a route that
    # does not exist: UNAVAILABLE, never UNKNOWN_ROUTE (docs/edge.md, "Client routes").
    unknown = [o for o in failures if o["kind"] == "UNKNOWN_ROUTE"]
    assert not unknown, unknown[:3]
    assert_no_hang(figures)
    # Back by themselves: the processes the test started before the cut.
    assert all(net.cluster.processes[name].alive() for name in on_b), figures.line()
    later = [o for o in outcomes if o["t0"] >= healed + recovered and not o["ok"]]
    assert not later, (later[:3], figures.line())
    assert chat["missed"] == 0 and chat["dup"] == 0, chat


def test_a_broker_cut_from_the_workers_fails_its_players_fast_and_they_move(net: Net) -> None:
    """C1 cut from B only: C1's players get UNAVAILABLE/TIMEOUT within their deadlines, move
    (drop the connection; the SDK resumes on C2) and are served there, C2's players notice
    nothing; healed, C1 serves logins again."""
    players, network, cluster = net.players, net.network, net.cluster
    placed = PLAYERS["cut-c1-b"]
    users = list(placed)
    on_c1 = [u for u in users if placed[u] == "c1"]
    on_c2 = [u for u in users if placed[u] == "c2"]
    login_all(net, "cut-c1-b")
    players.call("join", users=users, room="cut-c1-b")

    players.call("probe_start", users=users, interval=PROBE_INTERVAL, timeout=DEADLINE,
                 move_after=2)  # fmt: skip
    time.sleep(1.5)  # pacing: a baseline of answered requests before the cut
    cut = time.monotonic()
    network.cut_pair("c1", "b")
    try:
        resumed = players.call("resumed", users=on_c1, since=cut, timeout=WAIT)
        assert {r["broker"] for r in resumed.values()} == {cluster.brokers["c2"]}, resumed
        poll("moved players served", lambda: served_since(
            players, {u: r["t"] for u, r in resumed.items()}), WAIT)  # fmt: skip
        time.sleep(1.0)  # pacing: keep probing a little, a relapse would show
        outcomes = players.call("probe_stop", timeout=DEADLINE + 10)
        # C1 still reaches the registry, so the brokerlist still offers it; a newcomer
        # sent there cannot log in (sso is on B) but is told so by the broker, before its
        # own deadline.
        c1_listed = cluster.brokers["c1"] in players.call("brokerlist")
        newcomer = players.call("try_login", user=LATECOMER, broker=cluster.brokers["c1"])
        assert not newcomer["ok"] and newcomer["kind"] != "CLIENT_TIMEOUT", newcomer
        # Everyone is on C2 now: the room still delivers every message once.
        chat = players.call("chat", senders=users, members=users, tag="cut-c1-b", count=3)
    finally:
        healed = time.monotonic()
        network.heal_pair("c1", "b")

    # Healed: C1 serves a new player again (login through sso on B, then a request).
    def login_on_c1() -> bool:
        """Log the latecomer in on C1 (raises while it fails)."""
        players.call("login", user=LATECOMER, broker=cluster.brokers["c1"])
        return True

    poll("a login on C1 after the heal", login_on_c1, WAIT, every=0.2)
    echo = players.call("request", user=LATECOMER, route="chat.echo", body={"n": 1})
    c1_back = time.monotonic() - healed
    assert echo["ok"] and echo["broker"] == cluster.brokers["c1"], echo

    mine = [o for o in outcomes if o["user"] in on_c1]
    failures = [o for o in mine if not o["ok"]]
    moved = max(r["t"] for r in resumed.values()) - cut
    recovered = max(first_ok_after(outcomes, u, resumed[u]["t"]) for u in on_c1) - cut
    figures = Figures(
        "cut C1 (a broker) from B",
        outcomes,
        timings={
            "first_error": min(o["t1"] for o in failures) - cut if failures else -1.0,
            "moved": moved,
            "recover": recovered,
            "c1_serves_after_heal": c1_back,
            "login_on_c1_during_cut_failed_in": newcomer["seconds"],
        },
        counts={
            "c1_players_errors": len(failures),
            "c2_players_errors": sum(not o["ok"] for o in outcomes if o["user"] in on_c2),
            "c1_in_brokerlist_during_cut": str(c1_listed).lower(),
            "login_on_c1_during_cut": newcomer["kind"],
            "chat_missed": chat["missed"],
            "chat_dup": chat["dup"],
        },
    )
    print(figures.line())
    assert failures, f"C1's players noticed nothing: {figures.line()}"
    assert_no_hang(figures)
    assert figures.counts["c2_players_errors"] == 0, figures.line()
    # Moved because their requests failed: each resumed on C2 after 2 failures in a row.
    for user in on_c1:
        failed = [o for o in failures if o["user"] == user and o["t1"] <= resumed[user]["t"]]
        assert len(failed) >= 2, (user, failed, figures.line())
    later = [o for o in mine if o["t0"] >= resumed[o["user"]]["t"] and not o["ok"]]
    assert not later, (later[:3], figures.line())
    assert chat["missed"] == 0 and chat["dup"] == 0, chat
