"""brokerlist with real processes: a twistd yellow and brokerlist, brokers faked in the test.

No broker role is needed: a fake broker is a ZeroMQ ROUTER bound in the test
process and registered as service ``broker`` with the meta a broker publishes.
The brokerlist links to its ROUTER like to a real broker's, so closing the
socket looks to it exactly like a killed broker: the TCP connection breaks.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import pytest_twisted
import zmq
from twisted.internet import defer, reactor
from twisted.web.client import Agent, readBody

import mmo
from mmo.registry import Change, Registration, YellowLink, make_instance
from mmo.testing import free_port
from mmo.testing.plugin import ProcessGroup
from mmo.wire.gen.mmo.ttypes import RegistryMessage, RegistryOp
from mmo.zmq import ZmqContext, ZmqSocket

from .conftest import POLL_TIMEOUT, next_change, sleep, wait_instances

# Twisted's own Agent response transport lacks abortConnection; nothing to fix here.
pytestmark = pytest.mark.filterwarnings("ignore:Using readBody:DeprecationWarning")


class FakeBroker:
    """A bound ROUTER registered (heartbeating) as a broker instance."""

    def __init__(self, context: ZmqContext, yellow: str, name: str, port: int, load: float) -> None:
        self.address = f"127.0.0.1:{port}"
        self.socket: ZmqSocket | None = context.socket(zmq.ROUTER)
        rep = self.socket.bind("tcp://127.0.0.1:*")
        meta = {"address": self.address, "load": load, "sessions": 1, "capacity": 4}
        instance = make_instance("broker", name, {"rep": rep}, meta)
        self.registration = Registration(context, [yellow], instance)

    def start(self) -> float:
        """Register; return the time it was done."""
        self.registration.startService()
        return float(reactor.seconds())

    def close_socket(self) -> None:
        """Close the ROUTER while still heartbeating: a dead broker the registry still holds."""
        if self.socket is not None:
            self.socket.close()
            self.socket = None

    def stop(self) -> defer.Deferred[None]:
        """Deregister (if registered) and close."""
        self.close_socket()
        if self.registration.running:
            return self.registration.stopService()
        return defer.succeed(None)


class Brokerlist:
    """A yellow and a brokerlist as twistd processes, and an HTTP client for the latter."""

    def __init__(self, processes: ProcessGroup) -> None:
        self.yellow = f"tcp://127.0.0.1:{free_port()}"
        self.url = f"http://127.0.0.1:{free_port()}".encode()
        processes.start("mmo-yellow", "--listen", self.yellow, name="yellow")
        port = self.url.rsplit(b":", 1)[1].decode()
        processes.start(
            "mmo-brokerlist",
            "--yellow",
            self.yellow,
            "--listen",
            f"tcp:{port}:interface=127.0.0.1",
            name="brokerlist",
        )
        self.agent = Agent(reactor)

    @defer.inlineCallbacks
    def get(self, path: bytes = b"/") -> Any:
        """GET ``path``: (status code, content type, decoded JSON body); bounded by 10 s."""
        d = self.agent.request(b"GET", self.url + path)
        d.addTimeout(10, reactor)
        response = yield d
        body = yield readBody(response).addTimeout(10, reactor)
        ctype = response.headers.getRawHeaders(b"content-type", [b""])[0].decode()
        return response.code, ctype, json.loads(body)

    @defer.inlineCallbacks
    def broker_list(self) -> Any:
        """The brokerList of GET /."""
        code, _, body = yield self.get()
        assert code == 200, body
        return body["brokerList"]

    @defer.inlineCallbacks
    def wait_until(
        self, predicate: Callable[[Any], bool], timeout: float = POLL_TIMEOUT, path: bytes = b"/"
    ) -> Any:
        """Poll GET ``path`` until ``predicate`` holds; return the time it did.

        The predicate gets the brokerList of ``/``, or the whole body of another path.

        Raises:
            AssertionError: it did not hold within ``timeout`` seconds.
        """
        deadline = reactor.seconds() + timeout
        while True:
            code, _, body = yield self.get(path)
            assert code == 200, body
            last = body["brokerList"] if path == b"/" else body
            if predicate(last):
                return reactor.seconds()
            if reactor.seconds() >= deadline:
                raise AssertionError(f"GET {path.decode()} still {last} after {timeout:g}s")
            yield sleep(0.05)

    @defer.inlineCallbacks
    def wait_ready(self, timeout: float = POLL_TIMEOUT) -> Any:
        """Wait until the brokerlist serves GET / with 200 (it has read the registry)."""
        deadline = reactor.seconds() + timeout
        while True:
            try:
                code, _, _ = yield self.get()
                if code == 200:
                    return
            except Exception as e:  # not listening yet: connection refused
                error: Any = e
            else:
                error = f"status {code}"
            if reactor.seconds() >= deadline:
                raise AssertionError(f"brokerlist not ready after {timeout:g}s: {error}")
            yield sleep(0.1)


@pytest.fixture
def zmq_context() -> Iterator[ZmqContext]:
    """A ZeroMQ context in the test process, closed after the test."""
    context = ZmqContext(reactor)
    yield context
    context.close()


@pytest.fixture
def fake_brokers(zmq_context: ZmqContext) -> Iterator[Callable[..., FakeBroker]]:
    """Make fake brokers; all are deregistered and closed after the test."""
    made: list[FakeBroker] = []

    def make(yellow: str, name: str, port: int, load: float = 0.25) -> FakeBroker:
        broker = FakeBroker(zmq_context, yellow, name, port, load)
        made.append(broker)
        return broker

    yield make
    for broker in made:
        pytest_twisted.blockon(broker.stop())


@defer.inlineCallbacks
def registry_holds(yellow: str, context: ZmqContext, name: str) -> Any:
    """Ask the yellow directly whether broker instance ``name`` is registered."""
    link = YellowLink(context, yellow)
    try:
        query = RegistryMessage(op=RegistryOp.QUERY, service_name="broker")
        reply = yield link.request(query, timeout=2)
    finally:
        link.close()
    return any(i.instance_id == name for i in reply.instances or [])


@pytest_twisted.inlineCallbacks
def test_brokers_come_and_go(mmo_processes, fake_brokers, zmq_context, directory_factory):
    """Registered brokers are listed; a dead one is dropped by its broken link while the
    registry still holds it, a deregistered one as it leaves the registry."""
    service = Brokerlist(mmo_processes)
    yield service.wait_ready()
    code, ctype, body = yield service.get()
    assert (code, ctype) == (200, "application/json")
    assert body == {
        "version": mmo.__version__,
        "brokerList": {},
        "websocketList": {},
        "tls": [],
    }

    a = fake_brokers(service.yellow, "broker-a", 7001, load=0.25)
    registered = a.start()
    listed_a = (yield service.wait_until(lambda bl: bl == {a.address: 0.25})) - registered

    b = fake_brokers(service.yellow, "broker-b", 7002, load=0.5)
    registered = b.start()
    seen = yield service.wait_until(lambda bl: bl == {a.address: 0.25, b.address: 0.5})
    listed_b = seen - registered
    # Both links are up and past the first-second grace: only the link keeps them listed.
    yield service.wait_until(
        lambda status: all(
            status["brokers"][name]["up"] and status["brokers"][name]["age"] >= 1.0
            for name in ("broker-a", "broker-b")
        ),
        path=b"/status",
    )
    assert (yield service.broker_list()) == {a.address: 0.25, b.address: 0.5}

    # A killed broker: its link breaks while it is still registered (and heartbeating, so
    # the registry never drops it): the link alone delists it.
    killed = reactor.seconds()
    a.close_socket()
    dead_gone = (yield service.wait_until(lambda bl: bl == {b.address: 0.5})) - killed
    assert (yield registry_holds(service.yellow, zmq_context, "broker-a"))
    _, _, status = yield service.get(b"/status")
    assert status["brokers"]["broker-a"]["up"] is False
    assert status["brokers"]["broker-a"]["meta"]["capacity"] == 4
    assert status["brokers"]["broker-b"]["up"] is True

    # A broker that deregisters (a graceful stop) is gone too: the registry lets it go as
    # it says goodbye, not when its registration expires.
    watcher = directory_factory([service.yellow])
    yield wait_instances(watcher, "broker", {"broker-a", "broker-b"})
    down = next_change(watcher, "broker-b", Change.DOWN)
    left = reactor.seconds()
    yield b.stop()
    _, reason = yield down.addTimeout(POLL_TIMEOUT, reactor)
    assert reason == "deregistered"
    assert not (yield registry_holds(service.yellow, zmq_context, "broker-b"))
    left_gone = (yield service.wait_until(lambda bl: bl == {})) - left
    print(
        f"\nBROKERLIST listed {listed_a:.2f}s and {listed_b:.2f}s after registering; a dead"
        f" one gone {dead_gone:.2f}s after its socket closed, a leaving one {left_gone:.2f}s"
        " after it deregistered"
    )


@pytest_twisted.inlineCallbacks
def test_errors_over_http(mmo_processes):
    """Over real HTTP, unknown paths are 404 and other methods 405, both as JSON."""
    service = Brokerlist(mmo_processes)
    yield service.wait_ready()
    code, ctype, body = yield service.get(b"/nope")
    assert (code, ctype, body) == (404, "application/json", {"error": "not found"})
    d = service.agent.request(b"DELETE", service.url + b"/")
    response = yield d.addTimeout(2, reactor)
    yield readBody(response).addTimeout(2, reactor)
    assert response.code == 405
    assert response.headers.getRawHeaders(b"allow") == [b"GET, HEAD"]
