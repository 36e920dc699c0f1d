"""Fixtures for integration tests: real twistd processes over loopback ZeroMQ."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from mmo.logic import Directory, connect
from mmo.testing import TwistdProcess, free_port
from mmo.testing.plugin import ProcessGroup

ECHO = "mmo.examples.echo:EchoService"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark everything under tests/integration as integration."""
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


class Cluster:
    """Starts yellows and workers for one test."""

    def __init__(self, processes: ProcessGroup) -> None:
        self.processes = processes
        self.yellows: list[str] = []

    def yellow(self, port: int | None = None, name: str | None = None) -> TwistdProcess:
        """Start a yellow on ``port`` (a free one by default)."""
        address = f"tcp://127.0.0.1:{port or free_port()}"
        if address not in self.yellows:
            self.yellows.append(address)
        return self.processes.start(
            "mmo-yellow", "--listen", address, name=name or f"yellow-{len(self.yellows)}"
        )

    def worker(
        self,
        name: str,
        *,
        handler: str = ECHO,
        service: str = "echo",
        yellows: list[str] | None = None,
        extra: tuple[str, ...] = (),
    ) -> TwistdProcess:
        """Start a worker registered with ``yellows`` (all known yellows by default)."""
        args = ["--handler", handler, "--service", service, "--instance-id", name]
        for address in yellows or self.yellows:
            args += ["--yellow", address]
        return self.processes.start("mmo-worker", *args, *extra, name=name)


@pytest.fixture
def cluster(mmo_processes: ProcessGroup) -> Cluster:
    """A cluster builder whose processes are stopped after the test."""
    return Cluster(mmo_processes)


@pytest.fixture
def directory_factory() -> Iterator[Any]:
    """Connect Directories to yellows; all are stopped after the test."""
    made: list[Directory] = []

    def make(yellows: list[str], **kwargs: Any) -> Directory:
        d = connect(yellows, **kwargs)
        made.append(d)
        return d

    yield make
    for d in made:
        pytest_twisted.blockon(d.stopService())


def sleep(seconds: float) -> defer.Deferred[None]:
    """Let the reactor run for ``seconds`` (for pacing load, not for synchronisation)."""
    return task.deferLater(reactor, seconds, lambda: None)


def instances(directory: Directory, service: str) -> set[str]:
    """Ids of the live instances of ``service`` in ``directory``'s view."""
    return {i.instance_id for i in directory.view.get(service)}


def wait_instances(
    directory: Directory, service: str, ids: set[str], timeout: float = 15.0
) -> defer.Deferred[None]:
    """Fire once exactly ``ids`` are the live instances of ``service``."""
    return directory.view.wait_for(lambda: instances(directory, service) == ids, timeout)


@defer.inlineCallbacks
def wait_links(directory: Directory, service: str, ids: set[str], timeout: float = 10.0) -> Any:
    """Wait until ``directory``'s links to each of ``ids`` are connected (a CURVE handshake
    takes a moment after the registry lists an instance; calls prefer connected links)."""
    deadline = reactor.seconds() + timeout
    while True:
        links = directory.links(service)
        if all(links.get(i) for i in ids):
            return
        if reactor.seconds() > deadline:
            raise TimeoutError(f"links to {sorted(ids)} not up within {timeout}s: {links}")
        yield sleep(0.02)
