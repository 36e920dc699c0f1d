"""CURVE on a real cluster: twistd yellow and echo worker given $MMO_CURVE_KEYS.

Callers with the cluster keys get through; a NULL caller, another cluster's and
an unauthorized key get nothing, fail within their deadline, and every socket
the processes bind refuses their handshake.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import zmq
from twisted.internet import reactor
from zmq.utils.monitor import recv_monitor_message

from mmo.errors import DeadlineExceeded
from mmo.logic import Directory
from mmo.testing import TwistdProcess, free_port
from mmo.zmq import ZmqContext
from mmo.zmq.curve import ENV_KEYS, CurveKeys, create_keys, load_curve_keys

from .conftest import ECHO, wait_instances

pytestmark = pytest.mark.timeout(90)

MMO = [sys.executable, "-c", "from mmo.cli import main; main()"]
HANDSHAKE = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)


@dataclasses.dataclass
class Keys:
    """The cluster's keys and the wrong ones callers may hold."""

    directory: Path
    cluster: CurveKeys
    other_cluster: CurveKeys
    #: The cluster's server key, but a client key not in authorized/.
    unauthorized: CurveKeys


@pytest.fixture
def keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Keys:
    """Keys made by `mmo keys`; $MMO_CURVE_KEYS names them for every process the test starts."""
    create_keys(tmp_path / "keys")
    create_keys(tmp_path / "other")
    monkeypatch.setenv(ENV_KEYS, str(tmp_path / "keys"))
    cluster = load_curve_keys(tmp_path / "keys")
    other = load_curve_keys(tmp_path / "other")
    return Keys(
        directory=tmp_path / "keys",
        cluster=cluster,
        other_cluster=other,
        unauthorized=dataclasses.replace(
            cluster, public_key=other.public_key, secret_key=other.secret_key
        ),
    )


@pytest.fixture
def callers() -> Iterator[Any]:
    """Start Directories on a context with the given CURVE keys; all stopped after the test."""
    made: list[Directory] = []

    def make(yellows: list[str], curve: CurveKeys | None) -> Directory:
        directory = Directory(ZmqContext(reactor, curve=curve), yellows, caller_id="curve-test")
        directory.owns_context = True
        directory.startService()
        made.append(directory)
        return directory

    yield make
    for directory in made:
        pytest_twisted.blockon(directory.stopService())


#: The socket type that connects to each kind of endpoint a worker registers.
PEERS = {"rep": zmq.DEALER, "pull": zmq.PUSH, "pub": zmq.SUB}


def handshake(address: str, peer: int, curve: CurveKeys | None, timeout: float = 30.0) -> int:
    """Connect a plain pyzmq ``peer`` socket to ``address`` with ``curve``; its first event."""
    with zmq.Context() as context, context.socket(peer) as sock:
        sock.linger = 0
        for option, value in (curve.client_options() if curve else {}).items():
            sock.set(option, value)
        monitor = sock.get_monitor_socket(HANDSHAKE)
        try:
            sock.connect(address)
            assert monitor.poll(timeout * 1000), f"no handshake with {address}"
            return int(recv_monitor_message(monitor)["event"])
        finally:
            sock.disable_monitor()
            monitor.close(linger=0)


@pytest_twisted.inlineCallbacks
def test_only_callers_with_the_cluster_keys_get_through(cluster, callers, keys):
    """echo.echo answers a caller with the keys; the others fail within their deadline."""
    yellow = cluster.yellow()
    cluster.worker("echo-curve")
    keyed = callers(cluster.yellows, keys.cluster)
    yield wait_instances(keyed, "echo", {"echo-curve"})
    reply = yield keyed.call("echo", "echo", {"text": "hello"})
    assert reply == {"text": "hello"}

    for curve in (None, keys.other_cluster, keys.unauthorized):
        stranger = callers(cluster.yellows, curve)
        # Ended by its own deadline (it does not hang), the registry never having answered.
        with pytest.raises(DeadlineExceeded, match=r"within 1\.5s \(no answer from the registry"):
            yield stranger.call("echo", "echo", {"text": "hello"}, timeout=1.5)
        assert stranger.view.get("echo") == []
    assert yellow.wait_for_log(
        f"refused a ZeroMQ client: its CURVE key {keys.other_cluster.public_key.decode()}"
    )


@pytest_twisted.inlineCallbacks
def test_every_bound_socket_refuses_a_handshake_without_the_keys(cluster, callers, keys):
    """The yellow's and the worker's sockets accept the cluster key and no other client."""
    cluster.yellow()
    cluster.worker("echo-curve")
    keyed = callers(cluster.yellows, keys.cluster)
    yield wait_instances(keyed, "echo", {"echo-curve"})
    (worker,) = keyed.view.get("echo")
    peers = [(cluster.yellows[0], zmq.DEALER)]
    peers += [(address, PEERS[kind]) for kind, address in worker.endpoints.items()]
    assert len(peers) == 4
    for address, peer in peers:
        assert handshake(address, peer, keys.cluster) == zmq.EVENT_HANDSHAKE_SUCCEEDED
        for curve in (None, keys.other_cluster, keys.unauthorized):
            event = handshake(address, peer, curve)
            assert event != zmq.EVENT_HANDSHAKE_SUCCEEDED, (address, curve)


@pytest_twisted.inlineCallbacks
def test_mmo_call_takes_the_keys_from_the_environment(cluster, callers, keys):
    """`mmo call` with $MMO_CURVE_KEYS gets the reply; without it, a clear error in time."""
    cluster.yellow()
    cluster.worker("echo-curve")
    yield wait_instances(callers(cluster.yellows, keys.cluster), "echo", {"echo-curve"})
    command = [*MMO, "call", "--yellow", cluster.yellows[0], "echo.echo", '{"text": "hi"}']
    done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"text": "hi"}

    plain = dict(os.environ)
    del plain[ENV_KEYS]
    done = subprocess.run(
        [*command, "--timeout", "1.5"], capture_output=True, text=True, timeout=60, env=plain
    )
    assert done.returncode == 1
    assert "DeadlineExceeded" in done.stderr and "within 1.5s" in done.stderr, done.stderr


@pytest.mark.parametrize("role", ["mmo-yellow", "mmo-worker"])
def test_role_with_missing_keys_refuses_to_start(tmp_path, role):
    """A role whose $MMO_CURVE_KEYS lacks the keys exits at once, naming variable and file."""
    (tmp_path / "keys").mkdir()
    yellow = f"tcp://127.0.0.1:{free_port()}"
    args = {
        "mmo-yellow": ["--listen", yellow],
        "mmo-worker": ["--yellow", yellow, "--handler", ECHO],
    }[role]
    child = TwistdProcess(role, args, tmp_path, env={ENV_KEYS: str(tmp_path / "keys")}).start()
    try:
        assert child.wait(60) not in (None, 0)
    finally:
        child.stop()
    assert f"{ENV_KEYS}: {tmp_path / 'keys' / 'cluster.key_secret'}: missing" in child.log_tail()
