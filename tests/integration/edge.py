"""A whole edge cluster for integration tests: yellow, session, sso, chat, echo, brokers."""

from __future__ import annotations

import contextlib
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mmo.testing import TwistdProcess, free_port
from mmo.testing.rawclient import RawClient, Received
from mmo.wire.gen.mmo.ttypes import PacketKind

ACCOUNTS = ",".join(f"{u}:pw-{u}" for u in ["alice", "bob", "carol", "dave", "erin", "frank"])
WORKERS = {
    "session": "mmo.sessions:SessionService",
    "sso": "mmo.examples.sso:SSOService",
    "chat": "mmo.examples.chat:ChatService",
    "echo-1": "mmo.testing.handlers:ClientEcho",
    "echo-2": "mmo.testing.handlers:ClientEcho",
}


class EdgeCluster:
    """Starts the processes of an edge cluster; :meth:`stop` stops them all.

    Args:
        env: more environment for the yellow, the workers and the brokerlist (say, a
            ``PYTHONPATH`` that holds a test's handlers).
        yellow_args, brokerlist_args: more arguments of the yellow and of the brokerlist
            (say, ``("--metrics", ADDRESS)``), as ``broker_args`` are the brokers'.
    """

    def __init__(
        self,
        log_dir: Path,
        brokers: int = 2,
        broker_args: tuple[str, ...] = (),
        workers: dict[str, str] | None = None,
        accounts: str = ACCOUNTS,
        env: dict[str, str] | None = None,
        yellow_args: tuple[str, ...] = (),
        brokerlist_args: tuple[str, ...] = (),
    ) -> None:
        self.log_dir = log_dir
        self.yellow = f"tcp://127.0.0.1:{free_port()}"
        self.ports = [free_port() for _ in range(brokers)]
        self.ws_ports = [free_port() for _ in range(brokers)]
        self.http_port = free_port()
        self.broker_args = broker_args
        self.processes: dict[str, TwistdProcess] = {}
        self.env = {"MMO_DEMO": "1", **(env or {})}
        #: Handler settings (``--set``) of the workers, by name.
        self.settings = {"sso": {"accounts": accounts}}
        self._start("yellow", "mmo-yellow", ["--listen", self.yellow, *yellow_args], self.env)
        for name, handler in (WORKERS if workers is None else workers).items():
            self.start_worker(name, handler)
        for i in range(brokers):
            self.start_broker(i)
        self._start(
            "brokerlist",
            "mmo-brokerlist",
            [
                "--yellow",
                self.yellow,
                "--listen",
                f"tcp:{self.http_port}:interface=127.0.0.1",
                *brokerlist_args,
            ],
            self.env,
        )

    def _start(self, name: str, role: str, args: list[str], env: dict[str, str]) -> None:
        self.processes[name] = TwistdProcess(role, args, self.log_dir, name, env).start()

    def start_worker(
        self,
        name: str,
        handler: str,
        extra: tuple[str, ...] = (),
    ) -> TwistdProcess:
        """Start worker ``name`` (its instance id) serving ``handler`` in this cluster.

        Args:
            extra: more ``mmo-worker`` arguments (e.g. ``("--database", url)``).
        """
        args = ["--yellow", self.yellow, "--handler", handler, "--instance-id", name, *extra]
        for setting, value in self.settings.get(name, {}).items():
            args += ["--set", f"{setting}={value}"]
        self._start(name, "mmo-worker", args, self.env)
        return self.processes[name]

    def start_broker(self, i: int) -> TwistdProcess:
        """(Re)start broker ``i`` (named broker-<i+1>)."""
        name = f"broker-{i + 1}"
        args = [
            "--yellow",
            self.yellow,
            "--listen",
            f"tcp:{self.ports[i]}:interface=127.0.0.1",
            "--websocket",
            f"tcp:{self.ws_ports[i]}:interface=127.0.0.1",
            "--instance-id",
            name,
            *self.broker_args,
        ]
        self._start(name, "mmo-broker", args, {})
        return self.processes[name]

    @property
    def brokerlist_url(self) -> str:
        """The brokerlist's URL."""
        return f"http://127.0.0.1:{self.http_port}/"

    def brokerlist(self) -> dict:
        """GET the brokerlist."""
        with urllib.request.urlopen(self.brokerlist_url, timeout=2) as response:
            return json.loads(response.read())

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until every broker is listed and a login works on each."""
        deadline = time.monotonic() + timeout
        want = {f"127.0.0.1:{p}" for p in self.ports}
        last: object = None
        while time.monotonic() < deadline:
            try:
                listed = set(self.brokerlist()["brokerList"])
                if listed == want:
                    for port in self.ports:
                        client = RawClient(port, timeout=3)
                        try:
                            client.login("alice", "pw-alice")
                        finally:
                            client.close()
                    return
                last = listed
            except (OSError, AssertionError, ConnectionError) as e:
                last = e
            time.sleep(0.2)
        raise AssertionError(f"edge cluster not ready: {last}\n{self.logs()}")

    def logs(self) -> str:
        """The tail of every process's log."""
        return "\n".join(f"--- {n} ---\n{p.log_tail(30)}" for n, p in self.processes.items())

    def stop(self) -> None:
        """Stop everything (brokers first)."""
        for name in reversed(list(self.processes)):
            self.processes[name].stop(timeout=10)


@contextlib.contextmanager
def running(edge: EdgeCluster) -> Iterator[EdgeCluster]:
    """``edge`` once ready (see :meth:`EdgeCluster.wait_ready`); stopped after."""
    try:
        edge.wait_ready()
        yield edge
    finally:
        edge.stop()


class Player:
    """A logged-in client that keeps the pushes it reads while waiting for replies."""

    def __init__(self, port: int, user: str) -> None:
        self.user = user
        self.client = RawClient(port)
        self.client.login(user, f"pw-{user}")
        self.pushes: list[Received] = []

    def send(self, route: str, body: Any = None) -> int:
        """Send a request without waiting; its seq."""
        return self.client.send(PacketKind.REQUEST, route, body if body is not None else {})

    def reply(self, seq: int, timeout: float = 8.0) -> Received:
        """The RESPONSE or ERROR to request ``seq`` (pushes read meanwhile are kept)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            packet = self.client.recv()
            if packet.kind == PacketKind.PUSH:
                self.pushes.append(packet)
            elif packet.seq == seq and packet.kind in (PacketKind.RESPONSE, PacketKind.ERROR):
                return packet
        raise AssertionError(f"{self.user}: no reply to {seq} in {timeout}s")

    def request(self, route: str, body: Any = None) -> Any:
        """Send a request and return its reply's value (fail on an ERROR)."""
        packet = self.reply(self.send(route, body))
        assert packet.kind == PacketKind.RESPONSE, (self.user, route, packet)
        return packet.value

    def push(self, route: str, timeout: float = 5.0) -> Any:
        """The body of the first push on ``route`` (kept or arriving within ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            for i, packet in enumerate(self.pushes):
                if packet.route == route:
                    return self.pushes.pop(i).value
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{self.user}: no push {route} in {timeout}s")
            self.client.sock.settimeout(left)
            try:
                packet = self.client.recv()
            except TimeoutError:
                continue
            finally:
                self.client.sock.settimeout(5.0)
            if packet.kind == PacketKind.PUSH:
                self.pushes.append(packet)

    def close(self) -> None:
        """Disconnect."""
        self.client.close()
