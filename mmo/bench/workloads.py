"""The standard workloads of ``mmo bench``: W1 echo (and the floor), W2 rooms, W3 idle.

Each takes a :class:`~mmo.bench.servers.Target` (where to connect, which
processes to measure) and :class:`Settings`, and returns the figures as a
JSON-ready dict. Latency is taken on ``time.monotonic``; percentiles are by
nearest rank; the first ``warmup`` seconds are not counted; server CPU is the
``/proc`` CPU time of each measured process over the window.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, task

from mmo.bench.client import BenchConnection, ClientPool
from mmo.bench.servers import MACHINE, BenchError, Target, cpu_snapshot, rss_snapshot
from mmo.bench.stats import latency_summary
from mmo.bench.wire import RESPONSE, Frame, encode_fast, value_ts
from mmo.types import InlineCallbacks
from mmo.wire import WireError, decode_value

__all__ = ["Settings", "held", "run_echo", "run_idle", "run_rooms", "run_rooms_max"]

clock = time.monotonic

#: W1's request data and W2's message content.
ECHO_DATA = "x" * 64
CONTENT = "m" * 32
_CONTENT_BYTES = CONTENT.encode()


@dataclass(frozen=True)
class Settings:
    """What a run is asked to do (the ``mmo bench`` options).

    Attributes:
        duration: measured seconds (W1, W2, floor).
        warmup: seconds before the window, not counted.
        clients: W1 connections (closed loops).
        rooms: W2 rooms.
        members: W2 members per room.
        interval: W2 seconds between one member's sends.
        drain: W2 seconds to wait for deliveries after the window.
        conns: W3 connections.
        idle: W3 seconds to stay idle before measuring.
        in_flight: handshakes (connect + login) in flight while opening.
        user_prefix: bench accounts are ``<prefix><n>``.
        accounts: how many accounts exist (clients past it reuse them).
        password: the accounts' password.
        register: register each account before logging in (``--against``).
    """

    duration: float = 10.0
    warmup: float = 1.0
    clients: int = 50
    rooms: int = 10
    members: int = 20
    interval: float = 0.1
    drain: float = 5.0
    conns: int = 2000
    idle: float = 2.0
    in_flight: int = 100
    user_prefix: str = "b"
    accounts: int = 2000
    password: str = "bench"
    register: bool = False

    def user(self, index: int) -> str:
        """The account client ``index`` logs in as."""
        return f"{self.user_prefix}{index % self.accounts}"


def _pool(reactor: Any, target: Target, settings: Settings) -> ClientPool:
    return ClientPool(
        reactor,
        target.host,
        target.port,
        user=settings.user,
        password=settings.password,
        register=settings.register,
    )


@defer.inlineCallbacks
def _open(
    pool: ClientPool, count: int, settings: Settings
) -> InlineCallbacks[list[BenchConnection]]:
    clients = yield pool.open(count, in_flight=settings.in_flight)
    if len(clients) < count:
        raise BenchError(
            f"only {len(clients)} of {count} clients logged in (first error: {pool.first_error})"
        )
    return clients


def _cpu_figures(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """Server CPU per process, the generator's, and what other processes used meanwhile."""
    used = {name: after[name] - before[name] for name in before if name in after}
    machine = used.pop(MACHINE, 0.0)
    generator = used.pop("generator", 0.0)
    servers = sum(used.values())
    return {
        "server_cpu_s": {name: round(secs, 3) for name, secs in used.items()},
        "server_cpu_total_s": round(servers, 3),
        "generator_cpu_s": round(generator, 3),
        # CPU that neither the servers nor the generator used: other work on the machine.
        "other_cpu_s": round(max(0.0, machine - servers - generator), 3),
    }


def _sleep(reactor: Any, seconds: float) -> defer.Deferred[None]:
    return task.deferLater(reactor, seconds, lambda: None)


# -- W1 echo (and the floor) -------------------------------------------------------


class _EchoRun:
    """Shared state of W1's closed loops."""

    def __init__(self, route: str, window_start: float, window_end: float) -> None:
        self.route = route
        self.window_start = window_start
        self.window_end = window_end
        self.latencies: list[float] = []
        self.sent = 0
        self.errors = 0
        self.first_error: str | None = None
        self.running = 0
        self.done: defer.Deferred[None] = defer.Deferred()

    def error(self, what: str) -> None:
        self.errors += 1
        if self.first_error is None:
            self.first_error = what

    def loop_ended(self) -> None:
        self.running -= 1
        if self.running == 0 and not self.done.called:
            self.done.callback(None)


class _EchoLoop:
    """One client: one request in flight, the next sent as soon as the answer is in."""

    def __init__(self, run: _EchoRun, conn: BenchConnection) -> None:
        self.run = run
        self.conn = conn
        self.n = 0
        self.body = b""
        self.sent_at = 0.0

    def send(self) -> None:
        now = clock()
        run = self.run
        if now >= run.window_end or not self.conn.open:
            run.loop_ended()
            return
        self.n += 1
        self.body = encode_fast({"seq": self.n, "data": ECHO_DATA})
        self.sent_at = now
        if now >= run.window_start:
            run.sent += 1
        self.conn.request(run.route, self.body, self.answered)

    def answered(self, conn: BenchConnection, frame: Frame) -> None:
        now = clock()
        run = self.run
        if frame.kind != RESPONSE:
            run.error(f"ERROR {frame.code}: {frame.message}")
        elif frame.body != self.body and not _same_value(frame.body, self.body):
            run.error(f"reply {frame.body!r} differs from the request {self.body!r}")
        elif self.sent_at >= run.window_start and now <= run.window_end:
            run.latencies.append(now - self.sent_at)
        self.send()


def _same_value(a: bytes | None, b: bytes) -> bool:
    # The same value may be encoded with its map keys in another order.
    try:
        return a is not None and decode_value(a) == decode_value(b)
    except WireError:
        return False


@defer.inlineCallbacks
def run_echo(
    reactor: Any,
    target: Target,
    settings: Settings,
    *,
    workload: str = "w1",
    route: str = "chat.echo",
) -> InlineCallbacks[dict[str, Any]]:
    """W1 (and the floor): closed loops of ``route`` with ``{"seq": n, "data": 64 x "x"}``.

    ``settings.clients`` connections each keep one request in flight with no
    think time; requests sent and answered inside the window are counted; a
    reply must equal its request.
    """
    pool = _pool(reactor, target, settings)
    try:
        clients = yield _open(pool, settings.clients, settings)
        start = clock()
        window_start = start + settings.warmup
        window_end = window_start + settings.duration
        run = _EchoRun(route, window_start, window_end)
        cpu: dict[str, dict[str, float]] = {}
        pids = {**target.pids, "generator": os.getpid()}

        def take(name: str) -> None:
            cpu[name] = cpu_snapshot(pids)

        reactor.callLater(window_start - clock(), take, "start")
        reactor.callLater(window_end - clock(), take, "end")
        loops = [_EchoLoop(run, conn) for conn in clients]
        run.running = len(loops)
        for loop in loops:
            loop.send()
        # Answers in flight at the window's end arrive (or time out at the broker).
        guard = reactor.callLater(window_end - clock() + 10.0, run.done.callback, None)
        yield run.done
        if guard.active():
            guard.cancel()
        if "end" not in cpu:
            take("end")
    finally:
        pool.close()
    answered = len(run.latencies)
    figures = _cpu_figures(cpu.get("start", cpu["end"]), cpu["end"])
    server_cpu = figures["server_cpu_total_s"]
    measured = bool(target.pids)
    return {
        "workload": workload,
        "clients": len(clients),
        "duration_s": settings.duration,
        "sent": run.sent,
        "answered": answered,
        "requests_per_s": round(answered / settings.duration, 1),
        **latency_summary(run.latencies),
        "errors": run.errors + pool.errors,
        "first_error": run.first_error or pool.first_error,
        **figures,
        "server_cpu_us_per_request": (
            round(server_cpu / answered * 1e6, 1) if answered and measured else None
        ),
    }


# -- W2 room broadcast ---------------------------------------------------------------


class _RoomRun:
    """W2's counters: deliveries of messages sent inside the window."""

    def __init__(self, window_start: float, window_end: float) -> None:
        self.window_start = window_start
        self.window_end = window_end
        self.sent = 0
        self.sent_total = 0
        self.expected = 0
        self.delivered = 0
        self.late = 0
        self.outside = 0
        self.errors = 0
        self.first_error: str | None = None
        self.latencies: list[float] = []
        self.lags: list[float] = []
        self.drained: defer.Deferred[None] | None = None

    def error(self, what: str) -> None:
        self.errors += 1
        if self.first_error is None:
            self.first_error = what

    def pushed(self, conn: BenchConnection, route: str, body: bytes) -> None:
        """A PUSH arrived: count a ``chat.message`` delivery of a message sent in the window."""
        if route != "chat.message":
            return
        now = clock()
        ts, decoded = value_ts(body)
        if ts is None:
            ts = decoded.get("ts") if isinstance(decoded, dict) else None
            if not isinstance(ts, float):
                self.error(f"chat.message without a ts: {decoded!r}")
                return
        if _CONTENT_BYTES not in body:
            self.error("chat.message with other content")
            return
        if not self.window_start <= ts < self.window_end:
            self.outside += 1
            return
        self.delivered += 1
        self.latencies.append(now - ts)
        if now >= self.window_end:
            self.late += 1
        drained = self.drained
        if drained is not None and self.delivered >= self.expected and not drained.called:
            drained.callback(None)


@defer.inlineCallbacks
def _join_rooms(clients: list[BenchConnection], settings: Settings) -> InlineCallbacks[None]:
    answers: list[defer.Deferred[Frame]] = []
    for conn in clients:
        d: defer.Deferred[Frame] = defer.Deferred()
        room = f"bench-{conn.index // settings.members}"
        conn.request("chat.join", encode_fast({"room": room}), _fire(d))
        answers.append(d)
    frames = yield defer.gatherResults(answers)
    refused = [f for f in frames if f.kind != RESPONSE]
    if refused:
        raise BenchError(
            f"{len(refused)} chat.join refused: {refused[0].code} {refused[0].message}"
        )


def _fire(d: defer.Deferred[Frame]) -> Callable[[BenchConnection, Frame], None]:
    return lambda _conn, frame: d.callback(frame)


@defer.inlineCallbacks
def run_rooms(reactor: Any, target: Target, settings: Settings) -> InlineCallbacks[dict[str, Any]]:
    """W2: ``rooms x members`` clients join their rooms and send ``chat.send`` open-loop.

    Each member sends a NOTIFY every ``interval`` seconds, phases evenly
    staggered over all members; a late send fires at once and none is skipped.
    Every member (the sender too) should receive each message of its room as
    a ``chat.message`` push; latency is receipt minus the ``ts`` it carries.
    """
    count = settings.rooms * settings.members
    pool = _pool(reactor, target, settings)
    try:
        clients = yield _open(pool, count, settings)
        clients.sort(key=lambda conn: conn.index)
        yield _join_rooms(clients, settings)
        step = settings.interval / count
        start = clock()
        window_start = start + settings.warmup
        window_end = window_start + settings.duration
        run = _RoomRun(window_start, window_end)
        for conn in clients:
            conn.on_push = run.pushed
        cpu: dict[str, dict[str, float]] = {}
        pids = {**target.pids, "generator": os.getpid()}
        reactor.callLater(
            window_start - clock(), lambda: cpu.setdefault("start", cpu_snapshot(pids))
        )
        sending_done: defer.Deferred[None] = defer.Deferred()
        members = settings.members
        state = {"next": 0}

        def tick() -> None:
            j = state["next"]
            now = clock()
            while True:
                due = start + j * step
                if due >= window_end:
                    state["next"] = j
                    sending_done.callback(None)
                    return
                if due > now:
                    break
                conn = clients[j % count]
                ts = clock()
                if conn.open:
                    conn.notify("chat.send", encode_fast({"content": CONTENT, "ts": ts}))
                    run.sent_total += 1
                    if window_start <= ts < window_end:
                        run.sent += 1
                        run.expected += members
                        run.lags.append(ts - due)
                else:
                    run.error("a member's connection closed")
                j += 1
                now = ts
            state["next"] = j
            reactor.callLater(max(0.0, due - clock()), tick)

        tick()
        yield sending_done
        drain_started = clock()
        if run.delivered < run.expected:
            run.drained = defer.Deferred()
            guard = reactor.callLater(settings.drain, run.drained.callback, None)
            yield run.drained
            if guard.active():
                guard.cancel()
        drain = clock() - drain_started
        cpu_end = cpu_snapshot(pids)
        errors = run.errors + pool.errors + sum(conn.errors for conn in clients)
        still_open = pool.still_open()
    finally:
        pool.close()
    figures = _cpu_figures(cpu.get("start", cpu_end), cpu_end)
    server_cpu = figures["server_cpu_total_s"]
    lags = latency_summary(run.lags)
    duration = settings.duration
    return {
        "workload": "w2",
        "rooms": settings.rooms,
        "members": members,
        "connections": count,
        "interval_s": settings.interval,
        "duration_s": duration,
        "offered_per_s": round(count / settings.interval, 1),
        "sent": run.sent,
        "sent_per_s": round(run.sent / duration, 1),
        "expected": run.expected,
        "delivered": run.delivered,
        "delivered_per_s": round(run.delivered / duration, 1),
        "delivery_ratio": round(run.delivered / run.expected, 6) if run.expected else 0.0,
        "late_deliveries": run.late,
        **latency_summary(run.latencies),
        "send_lag_p99_ms": lags["p99_ms"],
        "send_lag_max_ms": lags["max_ms"],
        "drain_s": round(drain, 3),
        "still_open": still_open,
        "errors": errors,
        "first_error": run.first_error or pool.first_error,
        **figures,
        "server_cpu_us_per_delivery": (
            round(server_cpu / run.delivered * 1e6, 1) if run.delivered and target.pids else None
        ),
    }


#: The p99 a W2 rate must keep to be held (ms), by default.
HELD_P99_MS = 50.0
#: The least share of the expected deliveries a held rate delivers.
HELD_RATIO = 0.999


def held(result: dict[str, Any], p99_bound_ms: float) -> bool:
    """Whether a W2 run held its rate: (nearly) every delivery, p99 within the bound."""
    return bool(
        result["delivery_ratio"] >= HELD_RATIO
        and result["p99_ms"] is not None
        and result["p99_ms"] <= p99_bound_ms
    )


@defer.inlineCallbacks
def run_rooms_max(
    reactor: Any, target: Target, settings: Settings, p99_bound_ms: float = HELD_P99_MS
) -> InlineCallbacks[dict[str, Any]]:
    """W2's highest held rate: W2 on the same servers at a rising offered rate (the
    interval halved while every run holds: :func:`held`), then two bisection steps
    between the last held and the first not held; the highest held run's figures."""
    steps: list[dict[str, Any]] = []

    @defer.inlineCallbacks
    def at(interval: float) -> InlineCallbacks[dict[str, Any]]:
        result = yield run_rooms(reactor, target, dataclasses.replace(settings, interval=interval))
        result["held"] = held(result, p99_bound_ms)
        steps.append(result)
        return result

    interval = settings.interval
    best: dict[str, Any] | None = None
    failed: float | None = None
    for _ in range(8):
        result = yield at(interval)
        if not result["held"]:
            failed = interval
            break
        best = result
        interval /= 2
    if best is not None and failed is not None:
        good = best["interval_s"]
        for _ in range(2):
            middle = (good + failed) / 2
            result = yield at(middle)
            if result["held"]:
                best, good = result, middle
            else:
                failed = middle
    summary = dict(best if best is not None else steps[0])
    summary.update(
        {
            "workload": "w2max",
            "p99_bound_ms": p99_bound_ms,
            "held_deliveries_per_s": best["delivered_per_s"] if best is not None else 0.0,
            "steps": [
                {
                    k: r[k]
                    for k in (
                        "interval_s",
                        "delivered_per_s",
                        "delivery_ratio",
                        "p99_ms",
                        "held",
                        "server_cpu_total_s",
                    )
                }
                for r in steps
            ],
        }
    )
    return summary


# -- W3 idle connections -----------------------------------------------------------


@defer.inlineCallbacks
def run_idle(reactor: Any, target: Target, settings: Settings) -> InlineCallbacks[dict[str, Any]]:
    """W3: open ``conns`` connections (``in_flight`` handshakes at once), log in, stay idle.

    After ``idle`` seconds, reports the memory each server process grew per
    connection, how many connections are still open, and logins/s while opening.
    """
    pool = _pool(reactor, target, settings)
    try:
        pool.keep_alive()
        rss_before = rss_snapshot(target.pids)
        pids = {**target.pids, "generator": os.getpid()}
        cpu_before = cpu_snapshot(pids)
        started = clock()
        clients = yield pool.open(
            settings.conns, in_flight=settings.in_flight, timeout=max(60.0, settings.conns / 50)
        )
        opening = clock() - started
        cpu_after = cpu_snapshot(pids)
        yield _sleep(reactor, settings.idle)
        rss_after = rss_snapshot(target.pids)
        still_open = pool.still_open()
        errors = pool.errors + sum(conn.errors for conn in clients)
        first_error = pool.first_error
        latencies = list(pool.login_latencies)
    finally:
        pool.close()
    growth = {
        name: round((rss_after[name] - rss_before[name]) / still_open, 2) if still_open else None
        for name in rss_before
        if name in rss_after
    }
    broker = target.broker
    logins = len(clients)
    figures = _cpu_figures(cpu_before, cpu_after)
    return {
        "workload": "w3",
        "conns": settings.conns,
        "logged_in": logins,
        "still_open": still_open,
        "errors": errors,
        "first_error": first_error,
        "open_s": round(opening, 3),
        "logins_per_s": round(logins / opening, 1) if opening > 0 else 0.0,
        "login_p50_ms": latency_summary(latencies)["p50_ms"],
        "login_p99_ms": latency_summary(latencies)["p99_ms"],
        "broker_rss_before_kib": rss_before.get(broker) if broker else None,
        "broker_rss_after_kib": rss_after.get(broker) if broker else None,
        "rss_kib_per_conn": growth.get(broker) if broker else None,
        "rss_kib_per_conn_by_process": growth,
        # Every server process together (the broker's share and the session service's...).
        "rss_kib_per_conn_all": (
            round(sum(v for v in growth.values() if v is not None), 2) if still_open else None
        ),
        "opening_cpu_s": figures["server_cpu_s"],
        "opening_generator_cpu_s": figures["generator_cpu_s"],
        "opening_other_cpu_s": figures["other_cpu_s"],
        "server_cpu_us_per_login": (
            round(figures["server_cpu_total_s"] / logins * 1e6, 1)
            if logins and target.pids
            else None
        ),
    }
