"""Fault injection: a session instance killed, of two sharing the records in Redis."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted  # type: ignore[import-untyped]
from twisted.internet import reactor

from mmo.registry import Change
from mmo.testing.data import ThrowawayRedis

from ..conftest import next_change, sleep, wait_instances
from ..edge import WORKERS
from .load import (
    ROOM,
    FaultCluster,
    assert_missed_only_around_the_failover,
    assert_no_loss,
    close_clients,
    kill_broker_1,
    report,
    run_with_load,
)

SESSIONS = ("session-1", "session-2")


@pytest.fixture
def shared(tmp_path: Path, redis: ThrowawayRedis) -> Any:
    """The edge cluster with two session instances whose records live in ``redis``."""
    workers = {n: h for n, h in WORKERS.items() if n != "session"}
    workers.update({name: WORKERS["session"] for name in SESSIONS})
    cluster = FaultCluster(
        tmp_path / "cluster",
        workers=workers,
        worker_args={name: ("--cache", redis.url) for name in SESSIONS},
    )
    try:
        cluster.wait_ready()
        yield cluster
    finally:
        cluster.stop()


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
    # The session, its channel and where it is now, as the living instance has them.
    assert records == [{"session_id": sessions[victims[0]], "broker": "broker-2", "online": True}]
    assert kept["channels"] == [f"room:{ROOM}"]
    assert_missed_only_around_the_failover(traffic, fault_at, last_resume)
