"""Fault injection under a steady load: what is lost, duplicated, refused, and for how long.

Each scenario starts a fresh edge cluster (yellow, session, sso, chat, two echo workers, two
brokers, brokerlist), puts a bounded load on it through the client SDK — idempotent
``echo.sleep`` requests (8 closed loops, each always with one call in flight) and
``chat.send`` broadcasts to one room that every client is in — injects one fault, and
measures:

- **lost**: echo calls that never got their answer within their deadline (retries included:
  the load retries an idempotent call that failed, as a game client would);
- **errors**: failures the client saw on the way (each retry counts one);
- **dup**: chat messages delivered more than once to one member;
- **missed**: chat messages some member never got;
- **recovery**: seconds from the fault until the last abnormal call (failed, or slower than
  1 s) ended;
- **detect**: seconds until the system noticed (scenario-specific, see each test).

Each scenario prints one ``FAULTS`` line (``pytest -s``); docs/reliability.md records them.
"""

from __future__ import annotations

import functools
import random
import signal
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted  # type: ignore[import-untyped]
from twisted.internet import defer, reactor

from mmo.client import Client
from mmo.client.errors import ClientException
from mmo.client.session import http_fetcher, parse_brokerlist
from mmo.logic import Directory
from mmo.registry import Change
from mmo.testing import TwistdProcess

from .conftest import instances, sleep, wait_instances
from .edge import EdgeCluster

USERS = ("alice", "bob", "carol", "dave")
#: The chat senders: one on each broker.
SENDERS = ("alice", "bob")
ROOM = "faults"
#: Deadline of one logical echo call, retries included (seconds).
CALL_DEADLINE = 8.0
#: A call slower than this is abnormal (the machine is a noisy 2-core VM: keep it loose).
SLOW = 1.0
#: How late a call may end past its deadline (timer and scheduling slack).
DEADLINE_SLACK = 0.5
#: Registry detection bound: 3 missed 1 s heartbeats + the 0.2 s sweep, with slack.
DETECT_BOUND = 4.0

pytestmark = pytest.mark.timeout(120)


@dataclass
class Call:
    """One logical echo call (its retries included)."""

    start: float
    end: float = 0.0
    ok: bool = False
    errors: list[str] = field(default_factory=list)


@dataclass
class Figures:
    """What one scenario measured."""

    scenario: str
    calls: int
    lost: int
    errors: int
    over_deadline: int
    max_latency: float
    p99: float
    chat_sent: int
    missed: int
    dup: int
    recovery: float
    detect: float | None = None
    extra: dict[str, float] = field(default_factory=dict)

    def line(self) -> str:
        """One line for the log and the docs."""
        detect = "-" if self.detect is None else f"{self.detect:.2f}s"
        extra = " ".join(f"{k}={v:.2f}s" for k, v in self.extra.items())
        return (
            f"FAULTS {self.scenario}: calls={self.calls} lost={self.lost} errors={self.errors}"
            f" over_deadline={self.over_deadline} p99={self.p99 * 1000:.0f}ms"
            f" max={self.max_latency:.2f}s chat_sent={self.chat_sent} missed={self.missed}"
            f" dup={self.dup} recovery={self.recovery:.2f}s detect={detect} {extra}"
        ).rstrip()


class Traffic:
    """A steady, bounded load through the brokers, counting what happens to it.

    Args:
        clients: logged-in clients by user, all members of :data:`ROOM`.
        loops: closed-loop callers per client, each always with one call in flight.
        work: seconds each call spends at the worker (``echo.sleep``), so that a fault
            always catches calls in flight.
        pause: seconds each loop waits between calls, on average.
        chat_rate: chat messages per second from each of :data:`SENDERS`.
    """

    def __init__(
        self,
        clients: dict[str, Client],
        loops: int = 2,
        work: float = 0.05,
        pause: float = 0.01,
        chat_rate: float = 10.0,
    ) -> None:
        self.clients = clients
        self.loops = loops
        self.work = work
        self.pause = pause
        self.chat_rate = chat_rate
        self.calls: list[Call] = []
        self.sent: dict[str, float] = {}
        self.heard: Counter[tuple[str, str]] = Counter()
        self.running = False
        self._done: list[defer.Deferred[None]] = []
        for user, client in clients.items():
            client.on("chat.message", functools.partial(self._heard, user))

    def _heard(self, user: str, route: str, body: Any) -> None:
        if isinstance(body, dict) and isinstance(body.get("content"), str):
            self.heard[(user, body["content"])] += 1

    def start(self) -> None:
        """Start every loop."""
        self.running = True
        for user, client in self.clients.items():
            for i in range(self.loops):
                self._done.append(self._echo_loop(f"{user}-{i}", client))
        for user in SENDERS:
            self._done.append(self._chat_loop(user, self.clients[user]))

    @defer.inlineCallbacks
    def stop(self) -> Any:
        """Stop the loops, wait for them, then give the last pushes time to arrive."""
        self.running = False
        yield defer.gatherResults(self._done)
        yield sleep(1.0)

    @defer.inlineCallbacks
    def _echo_loop(self, name: str, client: Client) -> Any:
        rng = random.Random(name)
        n = 0
        while self.running:
            n += 1
            # A distinct duration per call, so that a reply to another call would show.
            seconds = round(self.work + (n % 10) * 0.001, 3)
            call = Call(start=reactor.seconds())
            self.calls.append(call)
            deadline = call.start + CALL_DEADLINE
            while not call.ok:
                remaining = deadline - reactor.seconds()
                if remaining <= 0:
                    break
                try:
                    reply = yield client.request(
                        "echo.sleep", {"seconds": seconds}, timeout=remaining
                    )
                except ClientException as e:
                    # echo is idempotent: a game client may simply send it again.
                    call.errors.append(f"{type(e).__name__}: {e}")
                    yield sleep(0.05)
                    continue
                call.ok = reply == seconds
                if not call.ok:
                    call.errors.append(f"wrong reply {reply!r}")
                    break
            call.end = reactor.seconds()
            # Jitter keeps the loops out of step, so that some call is always in flight.
            yield sleep(rng.uniform(0.0, 2 * self.pause))

    @defer.inlineCallbacks
    def _chat_loop(self, user: str, client: Client) -> Any:
        n = 0
        while self.running:
            n += 1
            content = f"{user}:{n}"
            try:
                client.notify("chat.send", {"content": content})
                self.sent[content] = reactor.seconds()
            except ClientException:
                pass  # closed: the message was never sent
            yield sleep(1.0 / self.chat_rate)

    def missed(self, outside: tuple[float, float] | None = None) -> int:
        """(member, message) pairs never delivered; only for messages sent ``outside`` a window."""
        lo, hi = outside if outside is not None else (0.0, 0.0)
        return sum(
            1
            for content, at in self.sent.items()
            if not lo <= at <= hi
            for user in self.clients
            if not self.heard[(user, content)]
        )

    def figures(self, scenario: str, fault_at: float, detect: float | None = None) -> Figures:
        """Count what happened to the load since it started."""
        done = [c for c in self.calls if c.end]
        latencies = sorted(c.end - c.start for c in done)
        abnormal = [
            c.end
            for c in done
            if c.end >= fault_at and (not c.ok or c.errors or c.end - c.start > SLOW)
        ]
        return Figures(
            scenario=scenario,
            calls=len(done),
            lost=sum(1 for c in done if not c.ok),
            errors=sum(len(c.errors) for c in done),
            over_deadline=sum(1 for c in done if c.end - c.start > CALL_DEADLINE + DEADLINE_SLACK),
            max_latency=latencies[-1] if latencies else 0.0,
            p99=latencies[int(len(latencies) * 0.99)] if latencies else 0.0,
            chat_sent=len(self.sent),
            missed=self.missed(),
            dup=sum(1 for n in self.heard.values() if n > 1),
            recovery=max(abnormal) - fault_at if abnormal else 0.0,
            detect=detect,
        )


def report(figures: Figures) -> None:
    """Print the scenario's line (visible with ``pytest -s``)."""
    print(f"\n{figures.line()}")


def assert_no_loss(figures: Figures, traffic: Traffic) -> None:
    """The bounds every scenario keeps: no idempotent call lost, none past its deadline,
    no chat message delivered twice, and a load that really ran."""
    assert figures.lost == 0, [c.errors for c in traffic.calls if not c.ok][:5]
    assert figures.over_deadline == 0
    assert figures.dup == 0
    assert figures.calls > 100, figures


class FaultCluster(EdgeCluster):
    """An :class:`EdgeCluster` whose processes can be restarted, or held to be started later.

    Args:
        log_dir: where each process's log goes.
        hold: build the processes without starting them (the caller starts them).
    """

    def __init__(self, log_dir: Path, hold: bool = False) -> None:
        self.hold = hold
        log_dir.mkdir(parents=True, exist_ok=True)
        super().__init__(log_dir, brokers=2)

    def _start(self, name: str, role: str, args: list[str], env: dict[str, str]) -> None:
        process = TwistdProcess(role, args, self.log_dir, name, env)
        self.processes[name] = process if self.hold else process.start()

    def restart(self, name: str) -> TwistdProcess:
        """Start process ``name`` again, with the same role, arguments and environment."""
        old = self.processes[name]
        self.processes[name] = TwistdProcess(old.role, old.args, self.log_dir, name, old.env)
        return self.processes[name].start()


@pytest.fixture
def edge(tmp_path: Path) -> Iterator[FaultCluster]:
    """A fresh, ready edge cluster (each scenario breaks it its own way)."""
    cluster = FaultCluster(tmp_path / "1")
    try:
        try:
            cluster.wait_ready()
        except AssertionError:
            if "Address already in use" not in cluster.logs():
                raise
            # free_port() races with the workers' system-picked ZeroMQ ports: once, rarely.
            cluster.stop()
            cluster = FaultCluster(tmp_path / "2")
            cluster.wait_ready()
        yield cluster
    finally:
        cluster.stop()


@defer.inlineCallbacks
def connect_clients(edge: EdgeCluster) -> Any:
    """Log in :data:`USERS` (half on each broker) and put them all in :data:`ROOM`."""
    clients: dict[str, Client] = {}
    try:
        for i, user in enumerate(USERS):
            client = Client(
                reactor,
                brokerlist=edge.brokerlist_url,
                broker=f"127.0.0.1:{edge.ports[i % 2]}",
                request_timeout=CALL_DEADLINE,
            )
            clients[user] = client
            yield client.connect()
            yield client.login(user=user, password=f"pw-{user}")
            yield client.request("chat.join", {"room": ROOM})
    except Exception:
        yield close_clients(clients)
        raise
    return clients


@defer.inlineCallbacks
def close_clients(clients: dict[str, Client]) -> Any:
    """Close every client."""
    yield defer.gatherResults([c.close() for c in clients.values()], consumeErrors=True)


def change_time(directory: Directory, instance_id: str, change: int) -> defer.Deferred[float]:
    """A Deferred firing with the reactor time at which ``instance_id`` next goes ``change``."""
    d: defer.Deferred[float] = defer.Deferred()

    def listener(what: int, instance: Any, reason: str) -> None:
        if what == change and instance.instance_id == instance_id and not d.called:
            d.callback(reactor.seconds())

    directory.view.listen(listener)
    return d


@defer.inlineCallbacks
def run_with_load(edge: EdgeCluster, warmup: float = 2.0) -> Any:
    """Connect the clients and start the load; fires with ``(clients, traffic)``."""
    clients = yield connect_clients(edge)
    traffic = Traffic(clients)
    traffic.start()
    yield sleep(warmup)
    return clients, traffic


@pytest_twisted.inlineCallbacks
def test_worker_kill(edge: FaultCluster, directory_factory: Any) -> Any:
    """kill -9 of an echo worker: no call lost or refused, DOWN in the registry within 4 s."""
    directory = directory_factory([edge.yellow])
    yield wait_instances(directory, "echo", {"echo-1", "echo-2"})
    clients, traffic = yield run_with_load(edge)
    try:
        gone = change_time(directory, "echo-1", Change.DOWN)
        fault_at = reactor.seconds()
        edge.processes["echo-1"].kill()
        down_at = yield gone.addTimeout(10, reactor)
        yield sleep(3.0)
        yield traffic.stop()
    finally:
        yield close_clients(clients)
    figures = traffic.figures("worker kill -9", fault_at, detect=down_at - fault_at)
    report(figures)
    assert_no_loss(figures, traffic)
    assert figures.errors == 0
    assert figures.missed == 0
    assert figures.detect is not None and figures.detect <= DETECT_BOUND
    assert instances(directory, "echo") == {"echo-2"}


@pytest_twisted.inlineCallbacks
def test_worker_sigstop(edge: FaultCluster, directory_factory: Any) -> Any:
    """A worker hung 10 s (SIGSTOP): its calls move on within 4 s, none lost; it rejoins."""
    directory = directory_factory([edge.yellow])
    yield wait_instances(directory, "echo", {"echo-1", "echo-2"})
    clients, traffic = yield run_with_load(edge)
    victim = edge.processes["echo-1"]
    try:
        gone = change_time(directory, "echo-1", Change.DOWN)
        fault_at = reactor.seconds()
        victim.signal(signal.SIGSTOP)
        down_at = yield gone.addTimeout(10, reactor)
        yield sleep(10.0 - (reactor.seconds() - fault_at))
        back = change_time(directory, "echo-1", Change.UP)
        resumed_at = reactor.seconds()
        victim.signal(signal.SIGCONT)
        up_at = yield back.addTimeout(10, reactor)
        yield sleep(2.0)
        yield traffic.stop()
    finally:
        victim.signal(signal.SIGCONT)
        yield close_clients(clients)
    figures = traffic.figures("worker SIGSTOP 10 s", fault_at, detect=down_at - fault_at)
    figures.extra["rejoin"] = up_at - resumed_at
    report(figures)
    assert_no_loss(figures, traffic)
    assert figures.errors == 0
    assert figures.missed == 0
    assert figures.detect is not None and figures.detect <= DETECT_BOUND
    # The calls caught on the hung worker moved on when its link's heartbeat timed out.
    assert figures.max_latency <= DETECT_BOUND + SLOW
    assert figures.recovery <= DETECT_BOUND + SLOW
    assert figures.extra["rejoin"] <= 3.0
    assert instances(directory, "echo") == {"echo-1", "echo-2"}


@pytest_twisted.inlineCallbacks
def test_broker_kill(edge: FaultCluster) -> Any:
    """kill -9 of a broker: its clients resume on the other; no call lost, no message twice."""
    clients, traffic = yield run_with_load(edge)
    victim_address = f"127.0.0.1:{edge.ports[0]}"
    victims = [u for u, c in clients.items() if c.broker_address == victim_address]
    assert victims
    fetch = http_fetcher(reactor, timeout=1.0)
    resumed: dict[str, defer.Deferred[float]] = {u: defer.Deferred() for u in victims}
    for u in victims:
        clients[u].on_resumed(
            lambda _reply, d=resumed[u]: d.called or d.callback(reactor.seconds())
        )
    try:
        fault_at = reactor.seconds()
        edge.processes["broker-1"].kill()
        delisted_at = None
        while delisted_at is None and reactor.seconds() - fault_at < 10:
            listed = parse_brokerlist((yield fetch(edge.brokerlist_url)))
            if victim_address not in listed:
                delisted_at = reactor.seconds()
            else:
                yield sleep(0.05)
        resumed_at = yield defer.gatherResults(
            [d.addTimeout(20, reactor) for d in resumed.values()]
        )
        yield sleep(3.0)
        yield traffic.stop()
    finally:
        yield close_clients(clients)
    assert delisted_at is not None
    figures = traffic.figures("broker kill -9", fault_at, detect=delisted_at - fault_at)
    figures.extra["all_resumed"] = max(resumed_at) - fault_at
    report(figures)
    assert_no_loss(figures, traffic)
    assert figures.detect is not None and figures.detect <= DETECT_BOUND
    assert figures.extra["all_resumed"] <= 10.0
    assert figures.recovery <= 10.0
    # Pushes to a session while it is offline are not kept (docs/protocol.md 5.7.2), nor
    # what the dead broker held: only messages sent around the failover may be missed.
    window = (fault_at - 1.0, max(resumed_at) + 1.0)
    assert traffic.missed(outside=window) == 0
    for u in victims:
        assert clients[u].broker_address == f"127.0.0.1:{edge.ports[1]}"


@pytest_twisted.inlineCallbacks
def test_yellow_kill_and_restart(edge: FaultCluster, directory_factory: Any) -> Any:
    """kill -9 and restart of yellow: traffic goes on untouched; the new yellow knows all in 4 s."""
    clients, traffic = yield run_with_load(edge)
    try:
        fault_at = reactor.seconds()
        edge.processes["yellow"].kill()
        yield sleep(3.0)
        restarted_at = reactor.seconds()
        edge.restart("yellow")
        fresh = directory_factory([edge.yellow])
        everyone = {"echo-1", "echo-2"}
        yield wait_instances(fresh, "echo", everyone, timeout=10)
        yield fresh.view.wait_for(lambda: len(fresh.view.get("broker")) == 2, 10)
        known_at = reactor.seconds()
        yield sleep(5.0)  # past the callers' 4 s settling period: nothing was dropped
        yield traffic.stop()
    finally:
        yield close_clients(clients)
    figures = traffic.figures("yellow kill -9 + restart", fault_at, detect=known_at - restarted_at)
    report(figures)
    assert_no_loss(figures, traffic)
    assert figures.errors == 0
    assert figures.missed == 0
    assert figures.recovery == 0.0
    assert figures.detect is not None and figures.detect <= DETECT_BOUND


@pytest_twisted.inlineCallbacks
def test_roles_started_in_reverse_order(tmp_path: Path) -> Any:
    """brokerlist, brokers, workers, yellow last (1 s apart): all serve within 10 s of yellow."""
    edge = FaultCluster(tmp_path, hold=True)
    clients: dict[str, Client] = {}
    try:
        order = list(reversed(edge.processes))
        assert order[0] == "brokerlist" and order[-1] == "yellow"
        for name in order:
            edge.processes[name].start()
            yellow_at = reactor.seconds()
            if name != "yellow":
                yield sleep(1.0)
        ready_at = None
        while ready_at is None and reactor.seconds() - yellow_at < 30:
            try:
                clients = yield connect_clients(edge)
                yield defer.gatherResults(
                    [c.request("echo.echo", {"ready": 1}, timeout=2) for c in clients.values()]
                )
                ready_at = reactor.seconds()
            except ClientException:
                yield close_clients(clients)
                clients = {}
                yield sleep(0.2)
        assert ready_at is not None, edge.logs()
        traffic = Traffic(clients)
        fault_at = reactor.seconds()
        traffic.start()
        yield sleep(4.0)
        yield traffic.stop()
    finally:
        yield close_clients(clients)
        edge.stop()
    figures = traffic.figures("reverse start order", fault_at, detect=ready_at - yellow_at)
    report(figures)
    assert_no_loss(figures, traffic)
    assert figures.errors == 0
    assert figures.missed == 0
    assert figures.detect is not None and figures.detect <= 10.0
