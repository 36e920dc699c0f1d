"""CURVE on internal links: the keys directory, ``mmo keys``, and real sockets refusing strangers.

The socket tests run real ZeroMQ sockets on 127.0.0.1 with no running reactor:
the sockets register with a ``Clock`` that ignores readers, and the test reads
them itself when ZeroMQ says there is input.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import selectors
import shutil
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from twisted.internet import task
from twisted.logger import capturedLogs
from zmq.utils.monitor import recv_monitor_message

from mmo.cli import CommandError, build_parser
from mmo.config import ConfigError
from mmo.testing import result_of
from mmo.zmq import ZmqContext, ZmqSocket
from mmo.zmq.curve import (
    ENV_KEYS,
    CurveKeys,
    create_keys,
    curve_keys_from_environment,
    load_curve_keys,
)

pytestmark = pytest.mark.timeout(30)

SECRET = b"the payload nobody on the wire may read"
HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    """A keys directory made as ``mmo keys`` makes it."""
    create_keys(tmp_path / "keys")
    return tmp_path / "keys"


@pytest.fixture
def keys(keys_dir: Path) -> CurveKeys:
    """The cluster's keys."""
    return load_curve_keys(keys_dir)


@pytest.fixture
def other_cluster(tmp_path: Path) -> CurveKeys:
    """The keys of another cluster."""
    create_keys(tmp_path / "other")
    return load_curve_keys(tmp_path / "other")


# -- the keys directory ----------------------------------------------------------------


def test_unset_or_empty_variable_means_null_security() -> None:
    """Without $MMO_CURVE_KEYS (or with it empty) there are no keys: NULL, as before."""
    assert curve_keys_from_environment({}) is None
    assert curve_keys_from_environment({ENV_KEYS: ""}) is None


def test_keys_are_read_from_the_directory_the_variable_names(keys_dir: Path) -> None:
    """The cluster keypair is the server and client key; its public key is authorized."""
    keys = curve_keys_from_environment({ENV_KEYS: str(keys_dir)})
    assert keys is not None
    assert keys.server_key == keys.public_key
    assert keys.authorized == {keys.public_key}
    assert keys.secret_key not in repr(keys).encode()


def test_authorized_keys_are_loaded_and_the_cluster_key_is_always_allowed(
    keys_dir: Path, other_cluster: CurveKeys, tmp_path: Path
) -> None:
    """Every *.key in authorized/ is accepted, and the cluster's own even when removed."""
    (keys_dir / "authorized" / "cluster.key").unlink()
    os.replace(tmp_path / "other" / "cluster.key", keys_dir / "authorized" / "tools.key")
    keys = load_curve_keys(keys_dir)
    assert keys.authorized == {keys.public_key, other_cluster.public_key}


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        (lambda d: d.rename(d.with_name("elsewhere")), "keys: no such directory"),
        (lambda d: (d / "cluster.key_secret").unlink(), "cluster.key_secret: missing"),
        (lambda d: os.replace(d / "cluster.key", d / "cluster.key_secret"), "no valid secret"),
        (lambda d: (d / "cluster.key_secret").write_text("curve\n"), "cannot read"),
        (lambda d: (d / "authorized" / "cluster.key").write_text("x"), "cannot read"),
        (lambda d: shutil.rmtree(d / "authorized"), "authorized: missing directory"),
    ],
)
def test_bad_keys_directory_is_a_config_error_naming_the_variable_and_file(
    keys_dir: Path, damage: Callable[[Path], Any], named: str
) -> None:
    """Missing or broken key files are a ConfigError on MMO_CURVE_KEYS saying which file."""
    damage(keys_dir)
    with pytest.raises(ConfigError) as caught:
        curve_keys_from_environment({ENV_KEYS: str(keys_dir)})
    assert caught.value.key == ENV_KEYS
    assert named in str(caught.value)
    assert str(caught.value).startswith(f"{ENV_KEYS}: ")


def test_context_refuses_to_be_made_with_bad_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process's ZmqContext reads $MMO_CURVE_KEYS when made: bad keys stop it there."""
    monkeypatch.setenv(ENV_KEYS, str(tmp_path / "absent"))
    with pytest.raises(ConfigError, match=r"MMO_CURVE_KEYS: .*absent: no such directory"):
        ZmqContext(task.Clock())


def test_context_takes_its_keys_from_the_environment(
    keys_dir: Path, keys: CurveKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ZmqContext() uses $MMO_CURVE_KEYS by default; curve=None forces NULL."""
    monkeypatch.setenv(ENV_KEYS, str(keys_dir))
    assert ZmqContext(task.Clock()).curve == keys
    assert ZmqContext(task.Clock(), curve=None).curve is None


# -- mmo keys --------------------------------------------------------------------------


def run_keys(*argv: str) -> Any:
    """Run ``mmo keys ARGV`` (no reactor needed); its result, or the CommandError."""
    args = build_parser().parse_args(["keys", *argv])
    return result_of(args.run(None, args))


def test_mmo_keys_makes_a_private_directory_with_the_cluster_keypair(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`mmo keys DIR`: DIR (0700) holds cluster.key, cluster.key_secret (0600), authorized/."""
    directory = tmp_path / "new" / "keys"
    run_keys(str(directory))
    assert sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*")) == [
        "authorized",
        "authorized/cluster.key",
        "cluster.key",
        "cluster.key_secret",
    ]
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / "authorized").stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / "cluster.key_secret").stat().st_mode) == 0o600
    public = (directory / "cluster.key").read_bytes()
    assert (directory / "authorized" / "cluster.key").read_bytes() == public
    keys = load_curve_keys(directory)
    assert keys.public_key in public
    out = capsys.readouterr().out
    assert f"wrote {directory / 'cluster.key_secret'}" in out
    assert f"{ENV_KEYS}={directory}" in out


def test_mmo_keys_refuses_to_overwrite_keys_unless_forced(tmp_path: Path) -> None:
    """A second `mmo keys DIR` fails and changes nothing; --force makes a new keypair."""
    directory = tmp_path / "keys"
    run_keys(str(directory))
    (directory / "authorized" / "tools.key").write_bytes((directory / "cluster.key").read_bytes())
    before = load_curve_keys(directory)
    with pytest.raises(CommandError, match=r"cluster\.key_secret exists.*--force"):
        run_keys(str(directory))
    assert load_curve_keys(directory) == before
    run_keys(str(directory), "--force")
    after = load_curve_keys(directory)
    assert after.public_key != before.public_key
    # Other authorized keys stay: the old cluster key, kept as tools.key, among them.
    assert after.authorized == {after.public_key, before.public_key}


# -- real sockets ----------------------------------------------------------------------


class Reactor(task.Clock):
    """A Clock ZmqSockets can be made on: readers are ignored, thread calls are queued."""

    def __init__(self) -> None:
        super().__init__()
        self.from_threads: list[Callable[[], Any]] = []

    def addReader(self, reader: Any) -> None:
        pass

    def removeReader(self, reader: Any) -> None:
        pass

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.from_threads.append(lambda: f(*args, **kwargs))


@pytest.fixture
def contexts() -> Iterator[Callable[[CurveKeys | None], ZmqContext]]:
    """Make ZmqContexts on a fake reactor (``curve`` given); all closed after the test."""
    made: list[ZmqContext] = []

    def make(curve: CurveKeys | None) -> ZmqContext:
        made.append(ZmqContext(Reactor(), curve=curve))
        return made[-1]

    yield make
    for context in made:
        context.close()


def read_until(sockets: list[ZmqSocket], done: Callable[[], bool], timeout: float = 5.0) -> None:
    """Read ``sockets`` as the reactor would until ``done()`` (failing after ``timeout`` s)."""
    poller = zmq.Poller()
    for sock in sockets:
        poller.register(sock.socket, zmq.POLLIN)
    deadline = time.monotonic() + timeout
    while not done():
        left = deadline - time.monotonic()
        assert left > 0, "nothing arrived in time"
        for ready, _ in poller.poll(left * 1000):
            next(s for s in sockets if s.socket is ready).doRead()


@contextlib.contextmanager
def handshake_failures(sock: ZmqSocket) -> Iterator[Callable[[], int]]:
    """Watch ``sock`` for failed handshakes: yields a function waiting for the next one."""
    monitor = sock.socket.get_monitor_socket(HANDSHAKE_FAILED)

    def next_failure(timeout: float = 5.0) -> int:
        assert monitor.poll(timeout * 1000), "no handshake failed"
        return int(recv_monitor_message(monitor)["event"])

    try:
        yield next_failure
    finally:
        sock.socket.disable_monitor()
        monitor.close(linger=0)


class Pair:
    """A ROUTER bound on 127.0.0.1 and a DEALER connected to it (maybe through a relay)."""

    def __init__(self, server_context: ZmqContext, client_context: ZmqContext) -> None:
        self.to_server: list[list[bytes]] = []
        self.to_client: list[list[bytes]] = []
        self.server = server_context.socket(zmq.ROUTER, self.to_server.append)
        self.address = self.server.bind("tcp://127.0.0.1:*")
        self.client = client_context.socket(zmq.DEALER, self.to_client.append)

    def connect(self, address: str | None = None) -> Pair:
        """Connect the client to the server (or to ``address``)."""
        self.client.connect(address or self.address)
        self.client.send([SECRET])
        return self

    def round_trip(self) -> None:
        """The client's message reaches the server, and the server's reply the client."""
        read_until([self.server], lambda: bool(self.to_server))
        ident, body = self.to_server[0]
        assert body == SECRET
        self.server.send([ident, b"reply: " + body])
        read_until([self.client], lambda: bool(self.to_client))
        assert self.to_client == [[b"reply: " + SECRET]]


def test_curve_pair_exchanges_messages_both_ways(contexts: Any, keys: CurveKeys) -> None:
    """A bound and a connected ZmqSocket with the cluster keys talk as with NULL."""
    Pair(contexts(keys), contexts(keys)).connect().round_trip()


@pytest.mark.parametrize(
    ("client", "event"),
    [
        # A mechanism or key mismatch is reported as a protocol failure, or, when the
        # client hangs up first (timing), without detail.
        ("null", {zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL}),
        (
            "other cluster",
            {zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL},
        ),
        ("unauthorized key", {zmq.EVENT_HANDSHAKE_FAILED_AUTH}),
    ],
)
def test_curve_server_refuses_clients_without_the_cluster_keys(
    contexts: Any, keys: CurveKeys, other_cluster: CurveKeys, client: str, event: set[int]
) -> None:
    """NULL clients, another cluster's and unauthorized keys fail the handshake; nothing passes."""
    client_keys = {
        "null": None,
        "other cluster": other_cluster,
        # The right server key, but a client key that authorized/ does not hold.
        "unauthorized key": dataclasses.replace(
            keys, public_key=other_cluster.public_key, secret_key=other_cluster.secret_key
        ),
    }[client]
    server = contexts(keys)
    pair = Pair(server, contexts(client_keys))
    with handshake_failures(pair.server) as next_failure:
        pair.client.connect(pair.address)
        # Between a failed handshake and the next attempt the client has no connection to
        # queue the message on (a busy machine makes that likely): refused all the same.
        with contextlib.suppress(zmq.Again):
            pair.client.send([SECRET])
        assert next_failure() in event
    pair.server.doRead()
    assert pair.to_server == []
    if client == "unauthorized key":
        with capturedLogs() as events:
            for call in server.reactor.from_threads:
                call()
        (refused,) = [e for e in events if "refused a ZeroMQ client" in e["log_format"]]
        assert refused["key"] == other_cluster.public_key.decode()


def test_null_pair_still_works_without_keys(contexts: Any) -> None:
    """With CURVE off (the default) a pair talks plain NULL as before."""
    Pair(contexts(None), contexts(None)).connect().round_trip()


def test_inproc_links_stay_plain(contexts: Any, keys: CurveKeys) -> None:
    """Only tcp:// links get CURVE options; inproc:// (monitor sockets) stay NULL."""
    context = contexts(keys)
    assert context.security_options("inproc://mmo-monitor-1", server=True) == {}
    assert context.security_options("inproc://mmo-monitor-1", server=False) == {}
    assert context.security_options("tcp://127.0.0.1:1", server=True)[zmq.CURVE_SERVER] == 1
    assert context.security_options("tcp://127.0.0.1:1", server=False)[zmq.CURVE_SERVERKEY] == (
        keys.public_key
    )
    assert contexts(None).security_options("tcp://127.0.0.1:1", server=True) == {}


def test_closing_the_context_stops_the_authenticator(contexts: Any, keys: CurveKeys) -> None:
    """The ZAP thread a CURVE bind starts ends with the context."""
    context = contexts(keys)
    before = set(threading.enumerate())
    context.socket(zmq.ROUTER).bind("tcp://127.0.0.1:*")
    started = set(threading.enumerate()) - before
    assert started
    context.close()
    assert not any(thread.is_alive() for thread in started)


class Relay:
    """Forwards one TCP connection to ``port`` on 127.0.0.1, keeping every byte it saw."""

    def __init__(self, port: int) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(5)
        self.address = f"tcp://127.0.0.1:{self.listener.getsockname()[1]}"
        self.seen = bytearray()
        self.thread = threading.Thread(target=self._run, args=(port,), daemon=True)
        self.thread.start()

    def _run(self, port: int) -> None:
        with self.listener, selectors.DefaultSelector() as selector:
            inbound, _ = self.listener.accept()
            outbound = socket.create_connection(("127.0.0.1", port))
            peers = {inbound: outbound, outbound: inbound}
            for sock in peers:
                selector.register(sock, selectors.EVENT_READ)
            try:
                while True:
                    for key, _ in selector.select():
                        data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                        if not data:
                            return
                        self.seen += data
                        peers[key.fileobj].sendall(data)  # type: ignore[index]
            finally:
                for sock in peers:
                    sock.close()


@pytest.mark.parametrize("secure", [False, True], ids=["null", "curve"])
def test_payload_is_readable_on_the_wire_only_without_curve(
    contexts: Any, keys: CurveKeys, secure: bool
) -> None:
    """Bytes relayed between the pair hold the payload in clear with NULL, never with CURVE."""
    curve = keys if secure else None
    pair = Pair(contexts(curve), contexts(curve))
    relay = Relay(int(pair.address.rsplit(":", 1)[1]))
    pair.connect(relay.address).round_trip()
    assert (SECRET in relay.seen) is not secure
    assert (b"reply: " + SECRET in relay.seen) is not secure


def test_a_failing_handler_is_logged_and_the_messages_after_it_are_read(contexts: Any) -> None:
    """A message whose handler raises is logged; the messages behind it in the same read
    still reach the handler (the edge-triggered descriptor would not raise another edge)."""
    got: list[bytes] = []

    def handle(frames: list[bytes]) -> None:
        got.append(frames[-1])
        if frames[-1] == b"1":
            raise ValueError("bad message")

    server = contexts(None).socket(zmq.ROUTER, handle)
    address = server.bind("tcp://127.0.0.1:*")
    client = contexts(None).socket(zmq.DEALER)
    client.connect(address)
    for body in (b"1", b"2", b"3"):
        client.send([body])
    with capturedLogs() as events:
        read_until([server], lambda: len(got) == 3)
    assert got == [b"1", b"2", b"3"]
    (failed,) = [e for e in events if e.get("log_failure") is not None]
    assert failed["log_failure"].check(ValueError)


def test_a_send_only_socket_reads_nothing_and_fails_nothing(contexts: Any) -> None:
    """A PUB socket (it cannot receive) is made, read by the reactor and closed quietly."""
    pub = contexts(None).socket(zmq.PUB)
    pub.bind("tcp://127.0.0.1:*")
    pub.send([b"topic", b"body"])
    pub.doRead()
    pub.close()
