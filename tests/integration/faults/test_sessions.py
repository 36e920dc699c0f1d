"""Fault injection: a session instance killed, of two sharing the records in Redis; that
Redis killed and restarted under sessions and chat."""

from __future__ import annotations

import functools
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted  # type: ignore[import-untyped]
from twisted.internet import defer, reactor, threads

from mmo.registry import Change
from mmo.testing.data import ThrowawayRedis, redis_command, sentinel_layout

from ..conftest import next_change, sleep, until, wait_instances
from .load import (
    OUTAGE,
    ROOM,
    SENDERS,
    USERS,
    FaultCluster,
    Traffic,
    assert_missed_only_around_the_failover,
    assert_no_loss,
    close_clients,
    kill_broker_1,
    ready,
    report,
    run_with_load,
    with_cache,
)

SESSIONS = ("session-1", "session-2")


@pytest.fixture
def shared(tmp_path: Path, redis: ThrowawayRedis) -> Iterator[FaultCluster]:
    """The edge cluster with two session instances whose records live in ``redis``."""
    with ready(
        functools.partial(with_cache, cache_url=redis.url, sessions=SESSIONS), tmp_path
    ) as c:
        yield c


@pytest_twisted.inlineCallbacks
def test_session_instance_kill(shared: FaultCluster, directory_factory: Any) -> Any:
    """kill -9 of one of two session instances, then of a broker, under load: the players
    of the dead broker resume their sessions (same ids) through the living instance, in
    the room they were in; no call lost, no message twice; the registry expires the dead
    instance."""
    edge = shared
    directory = directory_factory([edge.yellow])
    yield wait_instances(directory, "session", set(SESSIONS))
    clients, traffic = yield run_with_load(edge)
    try:
        gone = next_change(directory, "session-1", Change.DOWN)
        fault_at = reactor.seconds()
        edge.processes["session-1"].kill()
        # At once, before the registry knows: some resumes reach the dead instance.
        victims, sessions, _, last_resume = yield kill_broker_1(edge, clients)
        yield gone.addTimeout(30, reactor)
        down_at = reactor.seconds()
        yield sleep(3.0)  # the load goes on after the failover
        yield traffic.stop()
        records = yield directory.call("session", "find", {"user_id": victims[0]}, timeout=5)
        kept = yield directory.call(
            "session", "get", {"session_id": sessions[victims[0]]}, timeout=5
        )
    finally:
        yield close_clients(clients)
    figures = traffic.figures("session instance kill -9", fault_at, detect=down_at - fault_at)
    figures.extra["all_resumed"] = last_resume - fault_at
    report(figures)
    assert_no_loss(figures, traffic)
    for u in victims:
        assert clients[u].session_id == sessions[u]
        assert clients[u].broker_address == f"127.0.0.1:{edge.ports[1]}"
    # The session, its channel, its binding and where it is now, as the living instance
    # has them.
    (record,) = records
    assert (record["session_id"], record["broker"], record["online"]) == (
        sessions[victims[0]],
        "broker-2",
        True,
    )
    assert kept["channels"] == [f"room:{ROOM}"]
    assert kept["bindings"] == {"chat": "chat"}  # its chat prefix, bound at the join
    assert_missed_only_around_the_failover(traffic, fault_at, last_resume)


def heard_by_all_since(traffic: Traffic, since: float) -> float | None:
    """When every sender's first chat message sent at ``since`` or later had reached every
    member (the last of those moments), None if some sender's has not yet."""
    firsts = []
    for sender in SENDERS:
        times = [
            max(traffic.heard_at.get((u, c), 0.0) for u in USERS)
            for c, sent in traffic.sent.items()
            if c.startswith(f"{sender}:")
            and sent >= since
            and all(traffic.heard[(u, c)] for u in USERS)
        ]
        if not times:
            return None
        firsts.append(min(times))
    return max(firsts)


@defer.inlineCallbacks
def redis_fault_then_broker_kill(
    tmp_path: Path,
    directory_factory: Any,
    cache_url: str,
    scenario: str,
    fault: Callable[[], Any],
) -> Any:
    """Two session and two chat instances keep their state in the Redis at ``cache_url``;
    under load, ``fault()`` breaks that Redis and fires with ``(when it broke, when it
    served again, figures of its own)``; once every sender is heard again a broker is
    killed. Asserts what a player keeps: echo untouched, no message twice, the broker's
    players back in the same sessions and room, the room silent only from the fault until
    it served again and around the broker's failover."""
    chats = ("chat", "chat-2")
    edge = with_cache(tmp_path / "cluster", cache_url, sessions=SESSIONS, chats=chats)
    try:
        edge.wait_ready()
        directory = directory_factory([edge.yellow])
        yield wait_instances(directory, "session", set(SESSIONS))
        yield wait_instances(directory, "chat", set(chats))
        clients, traffic = yield run_with_load(edge)
        try:
            fault_at, back_at, extra = yield fault()
            yield until(
                lambda: heard_by_all_since(traffic, back_at) is not None,
                what="every sender heard by every member after the fault",
            )
            chat_back = heard_by_all_since(traffic, back_at)
            victims, sessions, _, last_resume = yield kill_broker_1(edge, clients)
            yield sleep(3.0)  # the load goes on after the failover
            yield traffic.stop()
        finally:
            traffic.running = False
            yield close_clients(clients)
    finally:
        edge.stop()
    assert chat_back is not None
    figures = traffic.figures(scenario, fault_at)
    figures.extra.update(extra)
    figures.extra["chat_back"] = chat_back - back_at
    figures.extra["all_resumed"] = last_resume - fault_at
    report(figures)
    assert_no_loss(figures, traffic)
    assert figures.errors == 0  # echo does not use Redis
    for u in victims:
        assert clients[u].session_id == sessions[u]
        assert clients[u].broker_address == f"127.0.0.1:{edge.ports[1]}"
    # Every sender was heard again before the broker was killed: the room was silent only
    # from the fault until Redis served again, and around the broker's failover.
    assert traffic.missed(outside=(fault_at - 1.0, max(chat_back, last_resume) + 1.0)) == 0


@pytest_twisted.inlineCallbacks
def test_redis_restart_under_sessions_and_chat(tmp_path: Path, directory_factory: Any) -> Any:
    """kill -9 of the Redis that two session and two chat instances keep their records in
    (appendfsync always, as a production Redis), restarted 2 s later, then a broker killed:
    echo goes on untouched; the room is silent while Redis is away and speaks again once it
    is back, with no message twice; the broker's players resume the same sessions, still
    in the room, from the records Redis kept."""
    redis = ThrowawayRedis(tmp_path / "redis", persist=True).start()

    @defer.inlineCallbacks
    def restart() -> Any:
        fault_at = reactor.seconds()
        yield threads.deferToThread(redis.stop, signal.SIGKILL)
        yield sleep(OUTAGE)  # the outage under test
        yield threads.deferToThread(redis.start)
        back_at = reactor.seconds()
        return fault_at, back_at, {"outage": back_at - fault_at}

    try:
        yield redis_fault_then_broker_kill(
            tmp_path,
            directory_factory,
            redis.url,
            "redis kill -9 + restart (sessions, chat)",
            restart,
        )
    finally:
        redis.stop()


@pytest_twisted.inlineCallbacks
def test_sentinel_fail_over_under_sessions_and_chat(tmp_path: Path, directory_factory: Any) -> Any:
    """kill -9 of the master of a Sentinel-watched Redis where two session and two chat
    instances keep their state (``sentinel://``): Sentinel promotes the replica and the
    instances follow it by themselves; the room speaks again; then a broker killed: its
    players resume the same sessions, in the room, from what the replica held."""
    master, replica, sentinel = sentinel_layout(tmp_path)

    @defer.inlineCallbacks
    def fail_over() -> Any:
        yield until(
            lambda: (
                redis_command("127.0.0.1", replica.port, "DBSIZE")
                == redis_command("127.0.0.1", master.port, "DBSIZE")
            ),
            what="the replica caught up",
        )
        fault_at = reactor.seconds()
        yield threads.deferToThread(master.stop, signal.SIGKILL)
        promoted = ("127.0.0.1", replica.port)
        yield until(lambda: sentinel.master() == promoted, what="the replica promoted")
        promoted_at = reactor.seconds()
        return fault_at, promoted_at, {"promoted": promoted_at - fault_at}

    try:
        yield redis_fault_then_broker_kill(
            tmp_path,
            directory_factory,
            sentinel.url,
            "Sentinel fail-over (sessions, chat)",
            fail_over,
        )
    finally:
        for server in (sentinel, replica, master):
            server.stop()
