"""Fault injection: an echo worker killed or stopped, a broker killed, under load."""

from __future__ import annotations

import signal
from typing import Any

import pytest_twisted  # type: ignore[import-untyped]
from twisted.internet import reactor

from mmo.registry import Change

from ..conftest import instances, next_change, sleep, wait_instances
from .load import (
    FaultCluster,
    assert_missed_only_around_the_failover,
    assert_no_loss,
    close_clients,
    kill_broker_1,
    report,
    run_with_load,
)


@pytest_twisted.inlineCallbacks
def test_worker_kill(edge: FaultCluster, directory_factory: Any) -> Any:
    """kill -9 of an echo worker: no call lost or refused; the registry expires it (a killed
    process cannot deregister) and the load goes on without it."""
    directory = directory_factory([edge.yellow])
    yield wait_instances(directory, "echo", {"echo-1", "echo-2"})
    clients, traffic = yield run_with_load(edge)
    try:
        gone = next_change(directory, "echo-1", Change.DOWN)
        fault_at = reactor.seconds()
        edge.processes["echo-1"].kill()
        down_at, reason = yield gone.addTimeout(30, reactor)
        yield sleep(3.0)  # the load goes on without the worker: nothing may be lost meanwhile
        yield traffic.stop()
    finally:
        yield close_clients(clients)
    figures = traffic.figures("worker kill -9", fault_at, detect=down_at - fault_at)
    report(figures)
    assert_no_loss(figures, traffic)
    assert figures.errors == 0
    assert figures.missed == 0
    assert reason == "expired"
    assert instances(directory, "echo") == {"echo-2"}


@pytest_twisted.inlineCallbacks
def test_worker_sigstop(edge: FaultCluster, directory_factory: Any) -> Any:
    """A worker hung 10 s (SIGSTOP): the calls caught on it move on without it (none lost,
    none failed), the registry expires it, and it rejoins once it runs again."""
    directory = directory_factory([edge.yellow])
    yield wait_instances(directory, "echo", {"echo-1", "echo-2"})
    clients, traffic = yield run_with_load(edge)
    victim = edge.processes["echo-1"]
    try:
        gone = next_change(directory, "echo-1", Change.DOWN)
        fault_at = reactor.seconds()
        victim.signal(signal.SIGSTOP)
        down_at, reason = yield gone.addTimeout(30, reactor)
        # The hang under test: 10 s, longer than a call's 8 s deadline.
        yield sleep(max(0.0, 10.0 - (reactor.seconds() - fault_at)))
        back = next_change(directory, "echo-1", Change.UP)
        resumed_at = reactor.seconds()
        victim.signal(signal.SIGCONT)
        up_at, _ = yield back.addTimeout(30, reactor)
        yield sleep(2.0)  # the load goes on with the worker back
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
    assert reason == "expired"
    # The calls in flight when it hung were answered before it ran again: they moved on
    # (when the link's heartbeat timed out), not waiting for it nor for their deadline.
    caught = [c for c in traffic.calls if c.start <= fault_at <= c.end]
    assert caught and all(c.ok and c.end < resumed_at for c in caught), caught
    assert instances(directory, "echo") == {"echo-1", "echo-2"}


@pytest_twisted.inlineCallbacks
def test_broker_kill(edge: FaultCluster) -> Any:
    """kill -9 of a broker: its clients resume their sessions on the other; no call lost,
    no message twice, and messages are missed only around the failover."""
    clients, traffic = yield run_with_load(edge)
    try:
        fault_at = reactor.seconds()
        victims, sessions, delisted_at, last_resume = yield kill_broker_1(edge, clients)
        yield sleep(3.0)  # the load goes on after the failover
        yield traffic.stop()
    finally:
        yield close_clients(clients)
    figures = traffic.figures("broker kill -9", fault_at, detect=delisted_at - fault_at)
    figures.extra["all_resumed"] = last_resume - fault_at
    figures.counts["missed_outside_1s"] = traffic.missed(
        outside=(fault_at - 1.0, last_resume + 1.0)
    )
    report(figures)
    assert_no_loss(figures, traffic)
    for u in victims:
        # The same session, on the other broker: resumed within its grace.
        assert clients[u].session_id == sessions[u]
        assert clients[u].broker_address == f"127.0.0.1:{edge.ports[1]}"
    # Once everyone was back, no call failed.
    late = [c.errors for c in traffic.calls if c.start >= last_resume and (c.errors or not c.ok)]
    assert not late, late[:5]
    assert_missed_only_around_the_failover(traffic, fault_at, last_resume)
