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

The data scenarios (a throwaway PostgreSQL or Redis of the test's own, stopped and started
again on the same port :data:`OUTAGE` seconds later) add workers that use that server and
8 players (2 per client) whose requests go through the brokers beside the same load:
``player.save`` (acknowledged in memory, written behind) with a ``player.leave`` (written
now) every third time (PostgreSQL); or entering a map, which first takes a hand-off from
the cache, earning a coin and leaving (Redis). Data requests are sent once, never
retried, and counted as:

- **data ok / failed / lost / other**: answered; failed with a clear data-layer error
  naming the server (``DatabaseUnavailable``, ``CacheUnavailable``...: ``SERVICE_ERROR``
  at the client); never answered within the deadline; any other error;
- **slowest failure**: how long the slowest failed request took (nothing waits for the
  server to come back);
- **acked missing / data dup**: each cycle adds 1 to a counter of the player's state;
  at the end every player is written and dropped from memory and its counter loaded back
  from the database: acknowledged writes it lacks, and writes it has beyond those
  acknowledged or lost; **acked in outage**: writes acknowledged while the server was
  away (with PostgreSQL, saves only in the player service's memory then);
- **data recovery**: seconds from the server answering again until the last failed data
  request ended; **detect** is the time from the stop to the first failed data request,
  **outage** how long the server was away.

Each scenario (the ``test_*.py`` beside this module) prints one ``FAULTS`` line (``pytest
-s``); docs/reliability.md records them.
The tests assert what a player would notice (nothing lost, nothing twice, clear errors, and
what caused each outcome: a DOWN because the registry expired a silent instance, a resume
of the same session...), never how many seconds something took: the timings are figures,
printed, because the machine running the tests may be slow and busy.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pytest
from twisted.internet import defer, reactor, threads

from mmo.client import Client
from mmo.client.errors import ClientException, ClientRequestError, ClientTimeout
from mmo.client.session import http_fetcher, parse_brokerlist
from mmo.testing import TwistdProcess

from ..conftest import sleep, until
from ..edge import WORKERS, EdgeCluster

USERS = ("alice", "bob", "carol", "dave")
#: The chat senders: one on each broker.
SENDERS = ("alice", "bob")
ROOM = "faults"
#: Deadline of one logical echo call, retries included (seconds).
CALL_DEADLINE = 8.0
#: A call slower than this counts as abnormal in the recovery figure.
SLOW = 1.0
#: How late a call may end past its deadline before the over-deadline figure counts it.
DEADLINE_SLACK = 0.5
#: How long the load may take to end once stopped, past a call's deadline: it bounds a hang
#: (a call that never ends), it is not a figure.
STOP_MARGIN = 30.0
#: Players each client plays in the data scenarios (their loops run beside the echo load).
DATA_PLAYERS = 2
#: Average seconds a player waits between two cycles of data requests (keeps each client
#: well under the broker's 100 packets/s beside its echo calls and chat).
DATA_PAUSE = 0.15
#: How long a data server stays down in the data scenarios (seconds).
OUTAGE = 2.0
#: Seconds the load goes on once data requests succeed again (late failures would show).
AFTER_RECOVERY = 3.0
#: Answered echo calls (and, with a data workload, answered data requests) before a fault
#: is injected: the load is running for certain, however slow the machine.
WARM = 100

pytestmark = pytest.mark.timeout(120)


@dataclass
class Call:
    """One logical echo call (its retries included)."""

    start: float
    end: float = 0.0
    ok: bool = False
    errors: list[str] = field(default_factory=list)


#: Outcomes of a data request.
OK, FAILED, LOST, OTHER = "ok", "failed", "lost", "other"


@dataclass
class DataCall:
    """One data request, sent once (data writes are not idempotent: never resent).

    Attributes:
        outcome: :data:`OK`; :data:`FAILED` (a clear error of the data layer naming the
            server); :data:`LOST` (no answer within the deadline: it may have run);
            :data:`OTHER` (any other error).
    """

    route: str
    player_id: str
    start: float
    end: float = 0.0
    outcome: str = ""
    kind: str = ""
    error: str = ""


def error_kind(error: ClientException) -> str:
    """The type of a service error (``"DatabaseUnavailable"``), else the broker's error
    code (``"TIMEOUT"``), else the client's exception class."""
    if isinstance(error, ClientRequestError):
        if error.name == "SERVICE_ERROR":
            return error.message.partition(": ")[0]
        return error.name
    return type(error).__name__


@dataclass(frozen=True)
class DataWorkload:
    """What each player does through the brokers in a data scenario, and how it is read back.

    Each cycle adds 1 to a counter of the player's state through one write request.
    At the end every player is brought home (its state written to the database and
    dropped from the player service's memory) and its counter loaded back from the
    database: an acknowledged write missing from it, or a write applied more often than
    it was sent, shows.

    Attributes:
        cycle: the requests of a player's n-th cycle, ``(route, body)``; a cycle stops at
            its first failure.
        write: the route of the request that adds 1 to the counter.
        reaches: a route whose every success means the server answered (unlike a save
            acknowledged in memory): its first success after a restart is the recovery.
        counter: the counter in a ``player.load`` reply.
        server: ``host:port`` of the data server; a clear failure names it.
        clear_errors: the service error types that are a clear failure of the data layer
            (raised by the data layer, within its own deadline: a request that waited for
            the server would fail with the broker's ``TIMEOUT`` or the client's deadline).
        home: routes called with ``player_id`` before the read-back to bring a player's
            state to the player service (``NotHere``: it is there already).
    """

    cycle: Callable[[str, int], list[tuple[str, dict[str, Any]]]]
    write: str
    reaches: str
    counter: Callable[[dict[str, Any]], int]
    server: str
    clear_errors: frozenset[str]
    home: tuple[str, ...] = ()

    def outcome(self, error: ClientException) -> str:
        """How a request that raised ``error`` counts."""
        kind = error_kind(error)
        if isinstance(error, ClientTimeout) or kind == "TIMEOUT":
            return LOST  # no answer within the client's or the broker's deadline
        if kind in self.clear_errors and self.server in str(error):
            return FAILED
        return OTHER


@dataclass
class DataFigures:
    """What the data requests of one scenario met.

    Attributes:
        requests: data requests sent.
        ok: answered with success.
        failed: failed with a clear error of the data layer.
        lost: never answered within their deadline.
        other: failed with any other error.
        over_deadline: ended more than :data:`DEADLINE_SLACK` past their deadline.
        slowest_failure: seconds the slowest failed request took.
        acked_in_outage: writes acknowledged while the server was away.
        missing: acknowledged writes missing from the database at the end.
        dup: writes applied beyond those acknowledged or lost (applied twice, or applied
            although they failed).
        recovery: seconds from the server being back until the last failed request ended.
        relapses: failed requests sent after the server answered again (the first success
            of a :attr:`DataWorkload.reaches` request sent once it was back).
        error_types: failed requests by error type.
    """

    requests: int
    ok: int
    failed: int
    lost: int
    other: int
    over_deadline: int
    slowest_failure: float
    acked_in_outage: int
    missing: int
    dup: int
    recovery: float
    relapses: int
    error_types: dict[str, int]

    def line(self) -> str:
        """The data part of the scenario's line."""
        types = ",".join(f"{k}:{v}" for k, v in sorted(self.error_types.items()))
        return (
            f"data_requests={self.requests} data_ok={self.ok} data_failed={self.failed}"
            f" data_lost={self.lost} data_other={self.other}"
            f" data_over_deadline={self.over_deadline}"
            f" slowest_failure={self.slowest_failure:.2f}s"
            f" acked_in_outage={self.acked_in_outage} acked_missing={self.missing}"
            f" data_dup={self.dup} data_recovery={self.recovery:.2f}s"
            f" data_relapses={self.relapses} errors_by_type={types}"
        )


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
    counts: dict[str, int] = field(default_factory=dict)
    data: DataFigures | None = None

    def line(self) -> str:
        """One line for the log and the docs."""
        detect = "-" if self.detect is None else f"{self.detect:.2f}s"
        extra = " ".join(
            [f"{k}={v:.2f}s" for k, v in self.extra.items()]
            + [f"{k}={v}" for k, v in self.counts.items()]
        )
        data = "" if self.data is None else self.data.line()
        echo = (
            f"FAULTS {self.scenario}: calls={self.calls} lost={self.lost} errors={self.errors}"
            f" over_deadline={self.over_deadline} p99={self.p99 * 1000:.0f}ms"
            f" max={self.max_latency:.2f}s chat_sent={self.chat_sent} missed={self.missed}"
            f" dup={self.dup} recovery={self.recovery:.2f}s detect={detect}"
        )
        return " ".join(part for part in (echo, extra, data) if part)


class Traffic:
    """A steady, bounded load through the brokers, counting what happens to it.

    Args:
        clients: logged-in clients by user, all members of :data:`ROOM`.
        loops: closed-loop callers per client, each always with one call in flight.
        work: seconds each call spends at the worker (``echo.sleep``), so that a fault
            always catches calls in flight.
        pause: seconds each loop waits between calls, on average.
        chat_rate: chat messages per second from each of :data:`SENDERS`.
        data: if given, each client also plays :data:`DATA_PLAYERS` players of it.
    """

    def __init__(
        self,
        clients: dict[str, Client],
        loops: int = 2,
        work: float = 0.05,
        pause: float = 0.01,
        chat_rate: float = 10.0,
        data: DataWorkload | None = None,
    ) -> None:
        self.clients = clients
        self.loops = loops
        self.work = work
        self.pause = pause
        self.chat_rate = chat_rate
        self.data = data
        self.calls: list[Call] = []
        self.sent: dict[str, float] = {}
        self.heard: Counter[tuple[str, str]] = Counter()
        #: When each (member, chat message) was first delivered.
        self.heard_at: dict[tuple[str, str], float] = {}
        #: The data players, by id, with the client each plays through.
        self.players = {
            f"{user}-{i}": client
            for user, client in (clients.items() if data is not None else ())
            for i in range(DATA_PLAYERS)
        }
        self.data_calls: list[DataCall] = []
        self.running = False
        self._done: list[defer.Deferred[None]] = []
        for user, client in clients.items():
            client.on("chat.message", functools.partial(self._heard, user))

    def _heard(self, user: str, route: str, body: Any) -> None:
        if isinstance(body, dict) and isinstance(body.get("content"), str):
            self.heard[(user, body["content"])] += 1
            self.heard_at.setdefault((user, body["content"]), reactor.seconds())

    def start(self) -> None:
        """Start every loop."""
        self.running = True
        for user, client in self.clients.items():
            for i in range(self.loops):
                self._done.append(self._echo_loop(f"{user}-{i}", client))
        for user in SENDERS:
            self._done.append(self._chat_loop(user, self.clients[user]))
        for player_id, client in self.players.items():
            self._done.append(self._data_loop(player_id, client))

    def answered(self) -> int:
        """Echo calls answered so far."""
        return sum(1 for c in self.calls if c.ok)

    def data_answered(self) -> int:
        """Data requests answered so far."""
        return sum(1 for c in self.data_calls if c.outcome == OK)

    def warm(self) -> defer.Deferred[Any]:
        """Fire once :data:`WARM` echo calls (and data requests, if any) were answered."""
        return until(
            lambda: self.answered() >= WARM and (self.data is None or self.data_answered() >= WARM),
            what=f"{WARM} calls answered",
        )

    def last_sent(self) -> list[str]:
        """The last chat message of each sender."""
        last: dict[str, tuple[int, str]] = {}
        for content in self.sent:
            sender, _, n = content.rpartition(":")
            last[sender] = max(last.get(sender, (0, "")), (int(n), content))
        return [content for _, content in last.values()]

    @defer.inlineCallbacks
    def stop(self) -> Any:
        """Stop the loops and wait for them to end (a call that hangs past its deadline
        fails this), then for each sender's last chat message to reach every member."""
        self.running = False
        yield defer.gatherResults(self._done).addTimeout(CALL_DEADLINE + STOP_MARGIN, reactor)
        last = self.last_sent()
        # What never comes is counted by missed(), and shown in the figures.
        with contextlib.suppress(AssertionError):
            yield until(
                lambda: all(self.heard[(u, c)] for u in self.clients for c in last),
                what="the last chat messages delivered",
            )

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

    @defer.inlineCallbacks
    def _data_loop(self, player_id: str, client: Client) -> Any:
        assert self.data is not None
        rng = random.Random(player_id)
        n = 0
        while self.running:
            n += 1
            for route, body in self.data.cycle(player_id, n):
                call = DataCall(route, player_id, start=reactor.seconds())
                self.data_calls.append(call)
                try:
                    yield client.request(route, body, timeout=CALL_DEADLINE)
                    call.outcome = OK
                except ClientException as e:
                    call.outcome = self.data.outcome(e)
                    call.kind = error_kind(e)
                    call.error = str(e)
                call.end = reactor.seconds()
                if call.outcome != OK:
                    break
            yield sleep(rng.uniform(0.0, 2 * DATA_PAUSE))

    def reached_since(self, since: float) -> float | None:
        """When the first request to the server (:attr:`DataWorkload.reaches`) sent at
        ``since`` or later that succeeded was sent; None if none has yet."""
        assert self.data is not None
        route = self.data.reaches
        return min(
            (
                c.start
                for c in self.data_calls
                if c.route == route and c.outcome == OK and c.start >= since
            ),
            default=None,
        )

    def first_data_failure(self, since: float) -> float | None:
        """When the first data request that failed after ``since`` ended."""
        ends = [c.end for c in self.data_calls if c.end >= since and c.outcome != OK]
        return min(ends) if ends else None

    @defer.inlineCallbacks
    def read_back(self) -> Any:
        """Bring every player home and load its counter from the database; fires with
        ``{player_id: counter}``. Run it after :meth:`stop`, with the servers up."""
        assert self.data is not None
        for player_id, client in self.players.items():
            for route in self.data.home:
                try:
                    yield client.request(route, {"player_id": player_id})
                except ClientRequestError as e:
                    if not e.message.startswith("NotHere:"):
                        raise
            # Written to the database (or this fails) and dropped from memory.
            yield client.request("player.leave", {"player_id": player_id})
        client = next(iter(self.clients.values()))
        stats = yield client.request("player.stats")
        # Nothing in the player service's memory: the loads below read the database.
        assert stats["players"] == 0 and stats["dirty"] == 0, stats
        counters = {}
        for player_id, client in self.players.items():
            loaded = yield client.request("player.load", {"player_id": player_id})
            counters[player_id] = self.data.counter(loaded)
        return counters

    def data_figures(self, fault_at: float, back_at: float, stored: dict[str, int]) -> DataFigures:
        """Count what happened to the data requests (after :meth:`stop`: all have ended).

        Args:
            fault_at: when the data server was stopped.
            back_at: when it answered again.
            stored: the counters :meth:`read_back` found.
        """
        assert self.data is not None
        calls = self.data_calls
        assert all(c.end for c in calls)
        failures = [c for c in calls if c.outcome != OK]
        recovered_at = self.reached_since(back_at)
        missing = dup = 0
        for player_id in self.players:
            writes = [c for c in calls if c.player_id == player_id and c.route == self.data.write]
            acked = sum(1 for c in writes if c.outcome == OK)
            unknown = sum(1 for c in writes if c.outcome in (LOST, OTHER))
            missing += max(0, acked - stored[player_id])
            dup += max(0, stored[player_id] - acked - unknown)
        return DataFigures(
            requests=len(calls),
            ok=sum(1 for c in calls if c.outcome == OK),
            failed=sum(1 for c in calls if c.outcome == FAILED),
            lost=sum(1 for c in calls if c.outcome == LOST),
            other=sum(1 for c in calls if c.outcome == OTHER),
            over_deadline=sum(1 for c in calls if c.end - c.start > CALL_DEADLINE + DEADLINE_SLACK),
            slowest_failure=max((c.end - c.start for c in failures), default=0.0),
            acked_in_outage=sum(
                1
                for c in calls
                if c.route == self.data.write and c.outcome == OK and fault_at <= c.end <= back_at
            ),
            missing=missing,
            dup=dup,
            recovery=max([0.0, *(c.end - back_at for c in failures)]),
            relapses=sum(
                1 for c in failures if recovered_at is not None and c.start >= recovered_at
            ),
            error_types=dict(Counter(c.kind for c in failures)),
        )

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

    def missed_runs(self) -> dict[tuple[str, str], list[list[str]]]:
        """For each (member, sender), the runs of consecutive messages of that sender the
        member never got (in the order they were sent); only pairs that missed some."""
        streams: dict[str, list[tuple[int, str]]] = {}
        for content in self.sent:
            sender, _, n = content.rpartition(":")
            streams.setdefault(sender, []).append((int(n), content))
        runs: dict[tuple[str, str], list[list[str]]] = {}
        for sender, stream in streams.items():
            for member in self.clients:
                pair: list[list[str]] = []
                previous_missed = False
                for _, content in sorted(stream):
                    missed = not self.heard[(member, content)]
                    if missed and not previous_missed:
                        pair.append([])
                    if missed:
                        pair[-1].append(content)
                    previous_missed = missed
                if pair:
                    runs[(member, sender)] = pair
        return runs

    def after(self, content: str) -> str | None:
        """The sender's next message after ``content`` (None if it was the last)."""
        sender, _, n = content.rpartition(":")
        later = [int(c.rpartition(":")[2]) for c in self.sent if c.rpartition(":")[0] == sender]
        later = [m for m in later if m > int(n)]
        return f"{sender}:{min(later)}" if later else None

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
    """What every scenario keeps: no idempotent call lost, no chat message delivered twice,
    and a load that really ran. (No call hung past its deadline: :meth:`Traffic.stop`
    waited for every call to end.)"""
    assert figures.lost == 0, [c.errors for c in traffic.calls if not c.ok][:5]
    assert figures.dup == 0
    assert figures.calls >= WARM, figures


@defer.inlineCallbacks
def kill_broker_1(edge: EdgeCluster, clients: dict[str, Client]) -> Any:
    """kill -9 broker-1 and wait until it is out of the brokerlist and every client it
    held has resumed elsewhere; fires with ``(victims, their session ids by user, when it
    was delisted, when the last resumed)``."""
    victim_address = f"127.0.0.1:{edge.ports[0]}"
    victims = [u for u, c in clients.items() if c.broker_address == victim_address]
    assert victims
    sessions = {u: clients[u].session_id for u in victims}
    fetch = http_fetcher(reactor, timeout=10.0)
    resumed: dict[str, defer.Deferred[float]] = {u: defer.Deferred() for u in victims}
    for u in victims:
        clients[u].on_resumed(
            lambda _reply, d=resumed[u]: d.called or d.callback(reactor.seconds())
        )
    edge.processes["broker-1"].kill()
    yield until(
        lambda: fetch(edge.brokerlist_url).addCallback(
            lambda body: victim_address not in parse_brokerlist(body)
        ),
        what="the killed broker out of the brokerlist",
    )
    delisted_at = reactor.seconds()
    resumed_at = yield defer.gatherResults([d.addTimeout(30, reactor) for d in resumed.values()])
    return victims, sessions, delisted_at, max(resumed_at)


def assert_missed_only_around_the_failover(
    traffic: Traffic, fault_at: float, last_resume: float
) -> None:
    """Clients resumed on another broker (the last at ``last_resume``): pushes to a session
    while it is offline are not kept (docs/protocol.md 5.7.2), nor what the dead broker
    held, so each member may miss one run of each sender's messages, around the failover
    only: the run began before the last client resumed, the member heard the sender before
    it, and after it from a message delivered after the fault."""
    for (member, sender), runs in traffic.missed_runs().items():
        assert len(runs) == 1, (member, sender, runs)
        (run,) = runs
        first, after = run[0], traffic.after(run[-1])
        assert traffic.sent[first] <= last_resume, (member, run)
        assert traffic.heard[(member, f"{sender}:1")], (member, run)
        assert after is not None and traffic.heard_at.get((member, after), 0.0) >= fault_at, (
            member,
            run,
        )


class FaultCluster(EdgeCluster):
    """An :class:`EdgeCluster` whose processes can be restarted, or held to be started later.

    Args:
        log_dir: where each process's log goes.
        hold: build the processes without starting them (the caller starts them).
        workers: the workers (name -> handler) instead of the edge cluster's.
        worker_args: more ``mmo-worker`` arguments of some workers, by name.
    """

    def __init__(
        self,
        log_dir: Path,
        hold: bool = False,
        workers: dict[str, str] | None = None,
        worker_args: dict[str, tuple[str, ...]] | None = None,
    ) -> None:
        self.hold = hold
        self.worker_args = worker_args or {}
        log_dir.mkdir(parents=True, exist_ok=True)
        super().__init__(log_dir, brokers=2, workers=workers)

    def start_worker(self, name: str, handler: str, extra: tuple[str, ...] = ()) -> TwistdProcess:
        """Start worker ``name`` with its :attr:`worker_args` (``--cache URL``...)."""
        return super().start_worker(name, handler, (*self.worker_args.get(name, ()), *extra))

    def _start(self, name: str, role: str, args: list[str], env: dict[str, str]) -> None:
        process = TwistdProcess(role, args, self.log_dir, name, env)
        self.processes[name] = process if self.hold else process.start()

    def add(self, name: str, role: str, args: list[str]) -> TwistdProcess:
        """Start one more process of ``role`` in this cluster (with its environment)."""
        self._start(name, role, args, self.env)
        return self.processes[name]

    def restart(self, name: str) -> TwistdProcess:
        """Start process ``name`` again, with the same role, arguments and environment."""
        old = self.processes[name]
        self.processes[name] = TwistdProcess(old.role, old.args, self.log_dir, name, old.env)
        return self.processes[name].start()


def with_cache(
    log_dir: Path,
    cache_url: str,
    sessions: tuple[str, ...] = ("session",),
    chats: tuple[str, ...] = ("chat",),
) -> FaultCluster:
    """The fault cluster with these session and chat instances, each keeping its state in
    the cache at ``cache_url`` (so several of each share it)."""
    workers = {n: h for n, h in WORKERS.items() if n not in ("session", "chat")}
    workers.update({name: WORKERS["session"] for name in sessions})
    workers.update({name: WORKERS["chat"] for name in chats})
    shared = {name: ("--cache", cache_url) for name in (*sessions, *chats)}
    return FaultCluster(log_dir, workers=workers, worker_args=shared)


@contextlib.contextmanager
def ready(make: Callable[[Path], FaultCluster], tmp_path: Path) -> Iterator[FaultCluster]:
    """A cluster made by ``make`` (given a log directory), ready; stopped at the end."""
    cluster = make(tmp_path / "1")
    try:
        try:
            cluster.wait_ready()
        except AssertionError:
            if "Address already in use" not in cluster.logs():
                raise
            # free_port() races with the workers' system-picked ZeroMQ ports: once, rarely.
            cluster.stop()
            cluster = make(tmp_path / "2")
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


@defer.inlineCallbacks
def run_with_load(edge: EdgeCluster, data: DataWorkload | None = None) -> Any:
    """Connect the clients and start the load (with ``data``'s players, if given); fires
    with ``(clients, traffic)`` once the load is running (:meth:`Traffic.warm`)."""
    clients = yield connect_clients(edge)
    traffic = Traffic(clients, data=data)
    traffic.start()
    try:
        yield traffic.warm()
    except BaseException:
        traffic.running = False
        yield close_clients(clients)
        raise
    return clients, traffic


class ChatTraffic(Traffic):
    """The load, also keeping the order in which each member heard each sender, and the
    errors the senders got."""

    def __init__(self, clients: dict[str, Client]) -> None:
        #: (member, sender) -> the sender's message numbers, in the order heard.
        self.order: dict[tuple[str, str], list[int]] = defaultdict(list)
        self.notify_errors: list[tuple[float, str]] = []
        super().__init__(clients)
        for user in SENDERS:
            clients[user].on_error(functools.partial(self._refused, user))

    def _heard(self, user: str, route: str, body: Any) -> None:
        super()._heard(user, route, body)
        if isinstance(body, dict) and isinstance(body.get("content"), str):
            sender, _, n = body["content"].rpartition(":")
            self.order[(user, sender)].append(int(n))

    def _refused(self, user: str, error: ClientRequestError) -> None:
        self.notify_errors.append((reactor.seconds(), f"{user}: {error}"))

    def heard_by(self, content: str) -> int:
        """How many members got message ``content``."""
        return sum(1 for user in self.clients if self.heard[(user, content)])

    def lost(self) -> list[str]:
        """Messages no member got, in the order they were sent."""
        return sorted((c for c in self.sent if not self.heard_by(c)), key=self.sent.__getitem__)

    def partial(self) -> list[str]:
        """Messages some members got and others not."""
        return [c for c in self.sent if 0 < self.heard_by(c) < len(self.clients)]

    def out_of_order(self) -> list[tuple[str, str, list[int]]]:
        """(member, sender, what the member heard) where a message came after a later one."""
        return [
            (member, sender, heard)
            for (member, sender), heard in self.order.items()
            if any(a >= b for a, b in itertools.pairwise(heard))
        ]

    def delivered_since(self, sender: str, since: float) -> float | None:
        """When the first message of ``sender`` sent at ``since`` or later that every member
        got was sent, None if none has been yet."""
        return min(
            (
                at
                for content, at in self.sent.items()
                if at >= since
                and content.rpartition(":")[0] == sender
                and self.heard_by(content) == len(self.clients)
            ),
            default=None,
        )


@defer.inlineCallbacks
def bindings(directory: Any, clients: dict[str, Client]) -> Any:
    """The chat instance each user's session is bound to, as its broker told the session
    service (``session.get``)."""
    bound = {}
    for user, client in clients.items():
        record = yield directory.call("session", "get", {"session_id": client.session_id})
        bound[user] = (record.get("bindings") or {}).get("chat")
    return bound


@defer.inlineCallbacks
def members_on_each(directory: Any, instances: Iterable[str]) -> Any:
    """The room's members as each of the chat ``instances`` lists them."""
    lists = {}
    for instance in instances:
        lists[instance] = yield directory.call("chat", "members", {"room": ROOM}, instance=instance)
    return lists


# -- data servers restarted ----------------------------------------------------------

PLAYER = "mmo.testing.handlers:ClientPlayer"
MAP = "mmo.testing.handlers:ClientMap"
#: The map of the Redis scenario, served by the ``map-1`` worker.
MAP_ID = "forest"


class DataServer(Protocol):
    """A throwaway data server the test may stop and start again on the same port."""

    def stop(self) -> None:
        """Stop the server."""

    def start(self) -> object:
        """Start the server and return once it answers."""


def save_and_leave(player_id: str, n: int) -> list[tuple[str, dict[str, Any]]]:
    """Save a player's state (acknowledged once in memory, written behind); every third
    cycle also write it now and drop it from memory (``leave``).

    So when the database goes away most players are in memory: their saves go on being
    acknowledged, and must all reach the database once it is back.
    """
    save = ("player.save", {"player_id": player_id, "state": {"n": n}})
    return [save, ("player.leave", {"player_id": player_id})] if n % 3 == 0 else [save]


def visit_map(player_id: str, n: int) -> list[tuple[str, dict[str, Any]]]:
    """Enter the map (which takes a hand-off from the cache first), earn a coin, and leave
    (saved to the player service)."""
    return [
        ("map.enter", {"player_id": player_id, "map_id": MAP_ID}),
        ("map.move", {"player_id": player_id, "dx": 1, "coins": 1}),
        ("map.leave", {"player_id": player_id}),
    ]


@defer.inlineCallbacks
def restart_under_load(
    edge: FaultCluster, server: DataServer, workload: DataWorkload, scenario: str
) -> Any:
    """Run the load with ``workload``'s players, stop ``server``, start it again
    :data:`OUTAGE` seconds after; fires with ``(figures, traffic)``.

    The figures' detect is the time from the stop to the first failed data request.
    """
    clients, traffic = yield run_with_load(edge, data=workload)
    try:
        fault_at = reactor.seconds()
        # In a thread: the load goes on while the server stops and starts.
        yield threads.deferToThread(server.stop)
        yield sleep(max(0.0, fault_at + OUTAGE - reactor.seconds()))  # the outage under test
        yield threads.deferToThread(server.start)
        back_at = reactor.seconds()
        yield until(
            lambda: traffic.reached_since(back_at) is not None,
            what="a data request reaching the server after the restart",
        )
        yield sleep(AFTER_RECOVERY)  # the load goes on: a late failure would show
        yield traffic.stop()
        stored = yield traffic.read_back()
    finally:
        traffic.running = False  # if something above failed, the loops end with the test
        yield close_clients(clients)
    first_failure = traffic.first_data_failure(fault_at)
    detect = None if first_failure is None else first_failure - fault_at
    figures = traffic.figures(scenario, fault_at, detect=detect)
    figures.extra["outage"] = back_at - fault_at
    figures.data = traffic.data_figures(fault_at, back_at, stored)
    report(figures)
    return figures, traffic


def assert_data_bounds(figures: Figures, traffic: Traffic, workers: list[TwistdProcess]) -> None:
    """What a data server's restart keeps: echo and chat untouched; data requests failed
    clearly (the data layer's own error naming the server, so within its own deadline:
    none waited for the server to come back) while it was away; they succeed again once it
    is back, in the same worker processes; no acknowledged write lost, none applied twice."""
    assert_no_loss(figures, traffic)
    assert figures.errors == 0
    assert figures.missed == 0
    data = figures.data
    assert data is not None
    unclear = [
        (c.route, c.outcome, c.error) for c in traffic.data_calls if c.outcome in (LOST, OTHER)
    ]
    assert data.lost == 0 and data.other == 0, unclear[:5]
    # The outage was noticed while it lasted: requests failed rather than waited.
    assert figures.detect is not None and figures.detect <= figures.extra["outage"]
    assert data.ok > WARM, data
    # Recovered for good, by itself: every player's last request succeeded. (One may still
    # fail just after the first success, while the pool's other connections come back:
    # data_relapses counts those.)
    last: dict[str, Any] = {}
    for call in sorted(traffic.data_calls, key=lambda c: c.start):
        last[call.player_id] = call
    assert len(last) == len(traffic.players), last
    assert all(call.outcome == OK for call in last.values()), data
    assert data.missing == 0
    assert data.dup == 0
    assert all(worker.alive() for worker in workers)  # recovered by themselves
