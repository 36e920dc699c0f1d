"""Fixtures and helpers for integration tests: real twistd processes over loopback ZeroMQ.

Tests wait for what they need by polling it with a generous deadline (:func:`until`,
:func:`wait_until`, :func:`wait_instances`), never by sleeping a fixed time: several test
files run at once on a small machine, so any pause may last longer than planned."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from mmo.logic import Directory, connect
from mmo.registry import Change
from mmo.testing import TwistdProcess, free_port
from mmo.testing.plugin import ProcessGroup

from .edge import EdgeCluster, running

ECHO = "mmo.examples.echo:EchoService"

T = TypeVar("T")


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
    """Let the reactor run for ``seconds``: to pace a load, hold a fault or watch that nothing
    happens, never to wait for something to happen (that is :func:`until`)."""
    return task.deferLater(reactor, seconds, lambda: None)


#: How long a poll waits by default: it bounds a hang, it is never what a test asserts, so
#: it is generous enough for a loaded machine running several test files at once.
POLL_TIMEOUT = 30.0


@defer.inlineCallbacks
def until(
    check: Callable[[], Any],
    timeout: float = POLL_TIMEOUT,
    what: str = "the condition",
    interval: float = 0.05,
) -> Any:
    """Poll ``check()`` (a value, or a Deferred of one) until it is true; fire with it.

    Raises:
        AssertionError: naming ``what`` and the last value, if it was not true within
            ``timeout`` seconds.
    """
    deadline = reactor.seconds() + timeout
    while True:
        last = yield defer.maybeDeferred(check)
        if last:
            return last
        if reactor.seconds() >= deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s (last: {last!r})")
        yield sleep(interval)


def wait_until(
    check: Callable[[], T],
    timeout: float = POLL_TIMEOUT,
    what: str = "the condition",
    interval: float = 0.05,
) -> T:
    """:func:`until` for tests that block instead of running the reactor: call ``check()``
    until it returns something true, and return that.

    Raises:
        AssertionError: naming ``what`` and the last value, if it was not true within
            ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s (last: {last!r})")
        time.sleep(interval)


def next_change(directory: Directory, instance_id: str, change: int) -> defer.Deferred[Any]:
    """A Deferred firing with ``(time, reason)`` when ``instance_id`` next goes ``change``
    (``Change.UP`` or ``Change.DOWN``) in ``directory``'s view; the reason says why
    (``registered``, ``deregistered``, ``expired``, ``vanished``)."""
    d: defer.Deferred[Any] = defer.Deferred()

    def listener(what: int, instance: Any, reason: str) -> None:
        if what == change and instance.instance_id == instance_id and not d.called:
            d.callback((directory.clock.seconds(), reason))

    directory.view.listen(listener)
    return d


def downs(directory: Directory) -> list[str]:
    """A list that each instance going DOWN in ``directory``'s view from now on is added to
    (as ``"id (reason)"``)."""
    gone: list[str] = []

    def listener(change: int, instance: Any, reason: str) -> None:
        if change == Change.DOWN:
            gone.append(f"{instance.instance_id} ({reason})")

    directory.view.listen(listener)
    return gone


def instances(directory: Directory, service: str) -> set[str]:
    """Ids of the live instances of ``service`` in ``directory``'s view."""
    return {i.instance_id for i in directory.view.get(service)}


def wait_instances(
    directory: Directory, service: str, ids: set[str], timeout: float = POLL_TIMEOUT
) -> defer.Deferred[None]:
    """Fire once exactly ``ids`` are the live instances of ``service``."""
    return directory.view.wait_for(lambda: instances(directory, service) == ids, timeout)


def wait_links(
    directory: Directory, service: str, ids: set[str], timeout: float = POLL_TIMEOUT
) -> defer.Deferred[Any]:
    """Wait until ``directory``'s links to each of ``ids`` are connected (a CURVE handshake
    takes a moment after the registry lists an instance; calls prefer connected links)."""
    return until(
        lambda: all(directory.links(service).get(i) for i in ids),
        timeout,
        f"links to {sorted(ids)} up",
    )


def controlled_cluster_config(yellow: str, handler: str, count: int, extra: str = "") -> str:
    """An ``mmo-cluster`` config: a yellow at ``yellow`` and ``count`` workers of service
    ``echo`` serving ``handler``, with the cluster's control endpoint registered in that
    yellow and its operator listener (what a rolling reload and auto-scaling need);
    ``extra`` is more TOML (a scale policy)."""
    return f"""
[cluster]
stop-timeout = 10.0
yellow = "{yellow}"
metrics = "127.0.0.1:{free_port()}"
[[cluster.process]]
name = "yellow"
role = "mmo-yellow"
args = ["--listen", "{yellow}"]
[[cluster.process]]
name = "echo"
role = "mmo-worker"
count = {count}
args = ["--yellow", "{yellow}", "--service", "echo", "--handler", "{handler}"]
{extra}"""


def start_cluster(directory: Path, config: str) -> TwistdProcess:
    """Start ``twistd mmo-cluster`` with the TOML ``config`` (written to
    ``directory/cluster.toml``; its log goes there too), with ``directory`` on its
    children's ``PYTHONPATH``: the handler modules a test writes there."""
    path = directory / "cluster.toml"
    path.write_text(config)
    pythonpath = os.pathsep.join(filter(None, [str(directory), os.environ.get("PYTHONPATH")]))
    return TwistdProcess(
        "mmo-cluster", ["--config", str(path)], directory, "cluster", env={"PYTHONPATH": pythonpath}
    ).start()


@pytest.fixture
def fresh_edge(tmp_path: Path) -> Iterator[EdgeCluster]:
    """A fresh, ready edge cluster with two brokers (a test that kills one), stopped after
    the test."""
    with running(EdgeCluster(tmp_path, brokers=2)) as edge:
        yield edge
