"""Fault injection: the registry killed and restarted; roles started in reverse order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest_twisted  # type: ignore[import-untyped]
from twisted.internet import defer, reactor

from mmo.client import Client
from mmo.client.errors import ClientException

from ..conftest import downs, instances, sleep, until, wait_instances
from .load import (
    FaultCluster,
    Traffic,
    assert_no_loss,
    close_clients,
    connect_clients,
    report,
    run_with_load,
)


@pytest_twisted.inlineCallbacks
def test_yellow_kill_and_restart(edge: FaultCluster, directory_factory: Any) -> Any:
    """kill -9 and restart of yellow: traffic goes on untouched; the new yellow knows every
    instance before the callers' settling period ends (a caller drops none)."""
    caller = directory_factory([edge.yellow])
    yield wait_instances(caller, "echo", {"echo-1", "echo-2"})
    dropped = downs(caller)
    clients, traffic = yield run_with_load(edge)
    try:
        fault_at = reactor.seconds()
        edge.processes["yellow"].kill()
        yield sleep(3.0)  # the outage under test: yellow stays down 3 s
        restarted_at = reactor.seconds()
        edge.restart("yellow")
        fresh = directory_factory([edge.yellow])
        everyone = {"echo-1", "echo-2"}
        yield wait_instances(fresh, "echo", everyone)
        yield fresh.view.wait_for(lambda: len(fresh.view.get("broker")) == 2, 30)
        known_at = reactor.seconds()
        yield sleep(5.0)  # watching past the callers' 4 s settling period: nothing dropped
        yield traffic.stop()
    finally:
        yield close_clients(clients)
    figures = traffic.figures("yellow kill -9 + restart", fault_at, detect=known_at - restarted_at)
    report(figures)
    assert_no_loss(figures, traffic)
    assert figures.errors == 0
    assert figures.missed == 0
    assert dropped == []
    assert instances(caller, "echo") == {"echo-1", "echo-2"}


@pytest_twisted.inlineCallbacks
def test_roles_started_in_reverse_order(tmp_path: Path) -> Any:
    """brokerlist, brokers, workers, yellow last (1 s apart): all find each other and serve,
    no process giving up on the way."""
    edge = FaultCluster(tmp_path, hold=True)
    clients: dict[str, Client] = {}

    @defer.inlineCallbacks
    def served() -> Any:
        """Log every user in and make one request each: the clients, or none if not yet."""
        nonlocal clients
        try:
            clients = yield connect_clients(edge)
            yield defer.gatherResults(
                [c.request("echo.echo", {"ready": 1}, timeout=2) for c in clients.values()],
                consumeErrors=True,
            )
        except (ClientException, defer.FirstError):
            yield close_clients(clients)
            clients = {}
        return clients

    try:
        order = list(reversed(edge.processes))
        assert order[0] == "brokerlist" and order[-1] == "yellow"
        for name in order:
            edge.processes[name].start()
            yellow_at = reactor.seconds()
            if name != "yellow":
                yield sleep(1.0)  # the scenario: one role a second, yellow last
        yield until(served, timeout=60, what="every user served", interval=0.2)
        ready_at = reactor.seconds()
        # They found each other by themselves: no process gave up (and none was restarted).
        assert all(p.alive() for p in edge.processes.values()), edge.logs()
        traffic = Traffic(clients)
        fault_at = reactor.seconds()
        traffic.start()
        yield sleep(4.0)  # the load runs 4 s...
        yield traffic.warm()  # ...and until it made its calls, however slow the machine
        yield traffic.stop()
    finally:
        yield close_clients(clients)
        edge.stop()
    figures = traffic.figures("reverse start order", fault_at, detect=ready_at - yellow_at)
    report(figures)
    assert_no_loss(figures, traffic)
    assert figures.errors == 0
    missed = {u for c in traffic.sent for u in traffic.clients if not traffic.heard[(u, c)]}
    assert figures.missed == 0, f"missed by {missed}\n{edge.logs()}"
