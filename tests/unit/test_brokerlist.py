"""brokerlist: the HTTP resource over a fake directory, and the role's options.

The directory is mmo.testing's ``FakeDirectory``, whose registry view and per-instance
links the test plays (a link's ``up`` is what ZeroMQ monitor events set in the real
one). Each request goes through a real ``twisted.web.server.Request`` on a
``DummyChannel``, so status lines, headers and HEAD handling are Twisted's own; time is
a Clock.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from twisted.python.usage import UsageError
from twisted.web import server
from twisted.web.test.requesthelper import DummyChannel

import mmo
from mmo.brokerlist.config import DEFAULT_LISTEN, BrokerlistConfig
from mmo.brokerlist.service import (
    YOUNG,
    BrokerlistResource,
    LiveBrokers,
    broker_load,
    make_brokerlist_service,
)
from mmo.brokerlist.tap import Options
from mmo.testing import FakeDirectory

YELLOW = "tcp://127.0.0.1:5555"


@dataclass
class Response:
    """One HTTP answer as written on the wire."""

    code: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http(resource: BrokerlistResource, uri: bytes = b"/", method: bytes = b"GET") -> Response:
    """Serve one request through a real Site and Request; parse what was written."""
    channel = DummyChannel()
    channel.site = server.Site(resource)
    request = server.Request(channel)
    request.gotLength(0)
    request.requestReceived(method, uri, b"HTTP/1.1")
    head, _, body = channel.transport.written.getvalue().partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    headers = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines)}
    return Response(int(status.split()[1]), headers, body)


@pytest.fixture
def directory() -> FakeDirectory:
    """A fake directory that has not read the registry yet."""
    return FakeDirectory(synced=False)


@pytest.fixture
def brokers(directory: FakeDirectory) -> LiveBrokers:
    """A started LiveBrokers over the fake directory."""
    live = LiveBrokers(directory)  # type: ignore[arg-type]
    live.startService()
    return live


@pytest.fixture
def resource(brokers: LiveBrokers) -> BrokerlistResource:
    """The HTTP resource over ``brokers``."""
    return BrokerlistResource(brokers)


def broker_meta(port: int, load: float = 0.25, **extra: Any) -> dict[str, Any]:
    """Registry metadata of a broker whose clients connect to 127.0.0.1:``port``."""
    return {"address": f"127.0.0.1:{port}", "load": load, "sessions": 1, "capacity": 4, **extra}


# -- GET / --------------------------------------------------------------------------


def test_lists_live_brokers_with_version(directory, resource):
    """GET / is 200 JSON: mmo's version and every live broker's address -> load."""
    directory.register("broker", "broker-a", meta=broker_meta(7001, 0.25))
    directory.register("broker", "broker-b", meta=broker_meta(7002, 0.125))
    response = http(resource)
    assert response.code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["content-length"] == str(len(response.body))
    assert response.json() == {
        "version": mmo.__version__,
        "brokerList": {"127.0.0.1:7002": 0.125, "127.0.0.1:7001": 0.25},
        "websocketList": {},
        "tls": [],
    }
    # Least loaded first, for clients that take the first key.
    assert list(response.json()["brokerList"]) == ["127.0.0.1:7002", "127.0.0.1:7001"]


def test_no_brokers_is_an_empty_list(directory, resource):
    """With the registry read and no broker in it, brokerList is an empty object."""
    directory.view.synced = True
    assert http(resource).json() == {
        "version": mmo.__version__,
        "brokerList": {},
        "websocketList": {},
        "tls": [],
    }


def test_websocket_addresses_of_the_same_brokers(directory, resource):
    """websocketList holds the WebSocket addresses of the listed brokers that have one."""
    directory.register(
        "broker", "broker-a", meta=broker_meta(7001, 0.5, websocket="127.0.0.1:7101")
    )
    directory.register("broker", "broker-b", meta=broker_meta(7002, 0.25))
    dead = directory.register(
        "broker", "broker-c", meta=broker_meta(7003, websocket="127.0.0.1:7103")
    )
    directory.clock.advance(YOUNG)
    dead.up = False
    body = http(resource).json()
    assert body["brokerList"] == {"127.0.0.1:7002": 0.25, "127.0.0.1:7001": 0.5}
    assert body["websocketList"] == {"127.0.0.1:7101": 0.5}


def test_tls_lists_the_addresses_that_speak_tls(directory, resource):
    """tls names the listed addresses (TCP or WebSocket) whose broker serves them over TLS;
    a broker that is not listed adds nothing."""
    directory.register(
        "broker",
        "broker-a",
        meta=broker_meta(
            7001, websocket="127.0.0.1:7101", tls=["127.0.0.1:7001", "127.0.0.1:7101"]
        ),
    )
    directory.register("broker", "broker-b", meta=broker_meta(7002))
    dead = directory.register("broker", "broker-c", meta=broker_meta(7003, tls=["127.0.0.1:7003"]))
    directory.clock.advance(YOUNG)
    dead.up = False
    assert http(resource).json()["tls"] == ["127.0.0.1:7001", "127.0.0.1:7101"]


def test_broker_whose_link_dropped_is_not_listed(directory, resource):
    """A broker whose link is down drops out of the list while the registry still holds it."""
    directory.register("broker", "broker-a", meta=broker_meta(7001))
    dead = directory.register("broker", "broker-b", meta=broker_meta(7002))
    directory.clock.advance(YOUNG)
    assert len(http(resource).json()["brokerList"]) == 2
    dead.up = False
    assert http(resource).json()["brokerList"] == {"127.0.0.1:7001": 0.25}
    assert http(resource, b"/status").json()["brokers"]["broker-b"]["up"] is False


def test_new_broker_is_listed_for_a_second_before_its_link_is_up(directory, resource):
    """A just-registered broker is listed until its link has had 1 s to come up."""
    conn = directory.register("broker", "broker-a", up=False, meta=broker_meta(7001))
    assert http(resource).json()["brokerList"] == {"127.0.0.1:7001": 0.25}
    directory.clock.advance(YOUNG)
    assert http(resource).json()["brokerList"] == {}
    conn.up = True
    assert http(resource).json()["brokerList"] == {"127.0.0.1:7001": 0.25}


def test_broker_restarted_on_a_new_port_gets_a_new_second(directory, resource):
    """Re-registered on a new rep endpoint, a broker is young again while its new link connects."""
    directory.register("broker", "broker-a", up=False, meta=broker_meta(7001))
    directory.clock.advance(5)
    assert http(resource).json()["brokerList"] == {}
    directory.register("broker", "broker-a", up=False, meta=broker_meta(7001))
    assert http(resource).json()["brokerList"] == {"127.0.0.1:7001": 0.25}


def test_draining_broker_is_not_listed(directory, resource):
    """A broker being drained (graceful stop) is not offered to new clients."""
    conn = directory.register("broker", "broker-a", meta=broker_meta(7001))
    conn.draining = True
    assert http(resource).json()["brokerList"] == {}


def test_deregistered_broker_is_not_listed(directory, resource):
    """A broker gone from the registry is gone from the list."""
    directory.register("broker", "broker-a", meta=broker_meta(7001))
    directory.register("broker", "broker-b", meta=broker_meta(7002))
    directory.deregister("broker", "broker-a")
    assert http(resource).json()["brokerList"] == {"127.0.0.1:7002": 0.25}
    assert "broker-a" not in http(resource, b"/status").json()["brokers"]


def test_broker_without_address_and_other_services_are_not_listed(directory, resource):
    """Only instances of service broker with an address meta are listed."""
    directory.register("broker", "broker-a", meta={"load": 0.5})
    directory.register("broker", "broker-b", meta={"address": "", "load": 0.5})
    directory.register("echo", "echo-a", meta=broker_meta(7003))
    directory.register("broker", "broker-c", meta=broker_meta(7001))
    assert http(resource).json()["brokerList"] == {"127.0.0.1:7001": 0.25}


@pytest.mark.parametrize(
    ("meta", "load"),
    [
        ({"load": 0.5}, 0.5),
        ({"load": 1}, 1.0),
        ({"sessions": 3, "capacity": 4}, 0.75),
        ({"load": "high", "sessions": 1, "capacity": 2}, 0.5),
        ({"load": float("nan")}, 0.0),
        ({"load": True}, 0.0),
        ({"sessions": 3, "capacity": 0}, 0.0),
        ({}, 0.0),
    ],
)
def test_broker_load_from_meta(meta, load):
    """Load is meta load, else sessions / capacity, else 0; never NaN or a non-number."""
    assert broker_load(meta) == load


def test_bad_meta_does_not_break_the_list(directory, resource):
    """A broker whose load is not a number is listed with a fallback load; the JSON stays valid."""
    directory.register(
        "broker",
        "broker-a",
        meta={"address": "127.0.0.1:7001", "load": float("inf"), "blob": b"\x01"},
    )
    assert http(resource).json()["brokerList"] == {"127.0.0.1:7001": 0.0}
    status = http(resource, b"/status").json()["brokers"]["broker-a"]
    assert status["meta"]["load"] is None
    assert status["meta"]["blob"] == "01"


# -- errors and other methods --------------------------------------------------------


@pytest.mark.parametrize("uri", [b"/brokers", b"/status/x", b"/favicon.ico", b"//"])
def test_unknown_path_is_404(directory, resource, uri):
    """Paths other than / and /status are 404, with a JSON body."""
    directory.register("broker", "broker-a", meta=broker_meta(7001))
    response = http(resource, uri)
    assert response.code == 404
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"error": "not found"}


@pytest.mark.parametrize("method", [b"POST", b"PUT", b"DELETE", b"OPTIONS"])
def test_other_methods_are_405(directory, resource, method):
    """Methods other than GET and HEAD are 405 with an Allow header."""
    directory.register("broker", "broker-a", meta=broker_meta(7001))
    response = http(resource, b"/", method)
    assert response.code == 405
    assert response.headers["allow"] == "GET, HEAD"
    assert response.json() == {"error": "method not allowed"}


def test_head_has_the_headers_and_no_body(directory, resource):
    """HEAD / answers GET's status and headers (its Content-Length) with no body."""
    directory.register("broker", "broker-a", meta=broker_meta(7001))
    get, head = http(resource), http(resource, b"/", b"HEAD")
    assert head.code == 200
    assert head.body == b""
    assert head.headers["content-length"] == str(len(get.body))
    assert head.headers["content-type"] == "application/json"


def test_query_string_is_ignored(directory, resource):
    """GET /?anything answers the list (clients may add cache busters)."""
    directory.register("broker", "broker-a", meta=broker_meta(7001))
    assert http(resource, b"/?t=123").json()["brokerList"] == {"127.0.0.1:7001": 0.25}


def test_before_the_registry_answers_is_503(directory, resource):
    """Until the registry is read, / and /status are 503 with Retry-After (not an empty list)."""
    for uri in (b"/", b"/status"):
        response = http(resource, uri)
        assert response.code == 503
        assert response.headers["retry-after"] == "1"
        assert "error" in response.json()


def test_answers_are_not_cached_and_open_to_browsers(directory, resource):
    """Every answer says no-store and allows any origin (browser WebSocket clients)."""
    directory.register("broker", "broker-a", meta=broker_meta(7001))
    for uri in (b"/", b"/status", b"/nothing"):
        headers = http(resource, uri).headers
        assert headers["cache-control"] == "no-store"
        assert headers["access-control-allow-origin"] == "*"


# -- /status -------------------------------------------------------------------------


def test_status_shows_every_broker_and_its_meta(directory, resource):
    """GET /status lists every registered broker, listed or not, with its metadata."""
    directory.register("broker", "broker-a", meta=broker_meta(7001, websocket="127.0.0.1:7101"))
    directory.register("broker", "broker-b", meta=broker_meta(7002)).up = False
    directory.clock.advance(2.5)
    body = http(resource, b"/status").json()
    assert body["version"] == mmo.__version__
    assert body["brokers"]["broker-a"] == {
        "address": "127.0.0.1:7001",
        "websocket": "127.0.0.1:7101",
        "load": 0.25,
        "up": True,
        "listed": True,
        "age": 2.5,
        "meta": {
            "address": "127.0.0.1:7001",
            "load": 0.25,
            "sessions": 1,
            "capacity": 4,
            "websocket": "127.0.0.1:7101",
        },
    }
    assert body["brokers"]["broker-b"]["up"] is False
    assert body["brokers"]["broker-b"]["listed"] is False


def test_start_opens_links_to_brokers(directory):
    """Starting LiveBrokers asks the directory for the broker pool (it links every instance)."""
    live = LiveBrokers(directory)  # type: ignore[arg-type]
    assert "broker" not in directory.links_opened
    live.startService()
    assert "broker" in directory.links_opened


# -- config and options --------------------------------------------------------------


def parse(*args: str) -> BrokerlistConfig:
    """Parse ``twistd mmo-brokerlist`` arguments into a config."""
    options = Options()
    options.parseOptions(list(args))
    config: BrokerlistConfig = options.config
    return config


def test_options_build_the_config():
    """--yellow (repeatable, comma-separated) and --listen make the config; listen has a default."""
    config = parse("--yellow", "tcp://127.0.0.1:5555,tcp://127.0.0.1:5556")
    assert config == BrokerlistConfig(("tcp://127.0.0.1:5555", "tcp://127.0.0.1:5556"))
    assert config.listen == DEFAULT_LISTEN == "tcp:6000:interface=127.0.0.1"
    config = parse("--yellow", YELLOW, "--listen", "tcp:6100:interface=0.0.0.0")
    assert config.listen == "tcp:6100:interface=0.0.0.0"


def test_config_file_section(tmp_path: Path):
    """The [brokerlist] section of a TOML file is read; the command line overrides it."""
    path = tmp_path / "brokerlist.toml"
    path.write_text('[brokerlist]\nyellow = ["tcp://127.0.0.1:5555"]\nlisten = "tcp:6001"\n')
    assert parse("--config", str(path)) == BrokerlistConfig((YELLOW,), "tcp:6001")
    assert parse("--config", str(path), "--listen", "tcp:6002").listen == "tcp:6002"


@pytest.mark.parametrize(
    ("args", "key"),
    [
        ((), "yellow"),
        (("--yellow", "127.0.0.1:5555"), "yellow"),
        (("--yellow", YELLOW, "--listen", "tcp:http"), "listen"),
        (("--yellow", YELLOW, "--listen", "carrier-pigeon:6000"), "listen"),
        (("--yellow", YELLOW, "--listen", "tcp:6000:colour=red"), "listen"),
    ],
)
def test_bad_options_are_a_usage_error(args, key):
    """A missing yellow, a non-ZeroMQ yellow or an unparsable listen is a UsageError naming it."""
    with pytest.raises(UsageError, match=key):
        parse(*args)


def test_service_tree_is_built_without_starting():
    """make_brokerlist_service builds zmq context, directory, brokers and http, in that order."""
    top = make_brokerlist_service(BrokerlistConfig((YELLOW,), "tcp:0:interface=127.0.0.1"))
    names = [getattr(s, "name", None) for s in top]
    assert names[1:] == ["directory", "brokers", "http", "registration"]
    assert not top.running
