"""Co-located services: a broker hosting handlers in its own process (``mmo-broker --serve
SERVICE=HANDLER``). Its players' requests for them are served in process (no ZeroMQ), with
the same rules as a worker's (client methods only, errors with their types); other
instances of the service take calls once the local one is busy; other processes reach the
hosted instance over ZeroMQ like any worker."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted  # type: ignore[import-untyped]
from twisted.internet import defer, reactor

from mmo.client import Client
from mmo.client.errors import ClientRequestError
from mmo.logic.links import LOCAL_PREFERENCE

from .conftest import instances, until
from .edge import WORKERS, EdgeCluster, running

pytestmark = pytest.mark.timeout(90)

ECHO = "mmo.testing.handlers:ClientEcho"
HOSTED = "broker-1.echo"


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgeCluster]:
    """One broker hosting ``echo`` (open to players) and ``inner`` (the example echo:
    nothing open to players), an echo worker of its own beside it."""
    workers = {"session": WORKERS["session"], "sso": WORKERS["sso"], "echo-remote": ECHO}
    cluster = EdgeCluster(
        tmp_path_factory.mktemp("colocated"),
        brokers=1,
        workers=workers,
        broker_args=("--serve", f"echo={ECHO}", "--serve", "inner=mmo.examples.echo:EchoService"),
    )
    with running(cluster):
        yield cluster


@defer.inlineCallbacks
def player(edge: EdgeCluster) -> Any:
    client = Client(reactor, broker=f"127.0.0.1:{edge.ports[0]}", request_timeout=10.0)
    yield client.connect()
    yield client.login(user="alice", password="pw-alice")
    return client


@pytest_twisted.inlineCallbacks
def test_a_hosted_service_serves_its_broker_in_process_and_the_rest_over_zeromq(
    edge: EdgeCluster, directory_factory: Any
) -> None:
    directory = directory_factory([edge.yellow])
    yield until(lambda: instances(directory, "echo") == {HOSTED, "echo-remote"}, what="both")
    alice = yield player(edge)
    try:
        # Idle: every call is the broker's own (no hop).
        served = yield defer.gatherResults([alice.request("echo.whoami") for _ in range(20)])
        assert set(served) == {HOSTED}, served
        # The same rules as a worker's: errors keep their types, players reach only
        # client methods.
        with pytest.raises(ClientRequestError) as failed:
            yield alice.request("echo.fail", {"message": "boom"})
        assert failed.value.name == "SERVICE_ERROR" and "EchoFailure: boom" in str(failed.value)
        with pytest.raises(ClientRequestError) as refused:
            yield alice.request("inner.echo", {"x": 1})
        assert refused.value.name == "UNKNOWN_ROUTE", refused.value

        # Busy (slow calls piling up): the other instance takes its share. (An idempotent
        # method: a player's non-idempotent requests go where their session hashes, for
        # the reply memo, co-located or not.)
        # (Again until it shows: the broker's link to the other instance must be up first,
        # which a busy machine may delay past the first burst.)
        @defer.inlineCallbacks
        def burst() -> Any:
            slow = [
                alice.request("echo.sleep", {"seconds": 0.5}) for _ in range(4 * LOCAL_PREFERENCE)
            ]
            busy = yield defer.gatherResults([alice.request("echo.whoami") for _ in range(10)])
            yield defer.gatherResults(slow)
            return "echo-remote" in busy and HOSTED in busy

        yield until(burst, what="a busy local instance's calls shared with the other")
    finally:
        yield alice.close()
    # Another process reaches the hosted instance over ZeroMQ, like any worker.
    who = yield directory.call("echo", "whoami", {}, instance=HOSTED)
    assert who == HOSTED
