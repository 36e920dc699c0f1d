"""A whole edge cluster for integration tests: yellow, session, sso, chat, echo, brokers."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

from mmo.testing import TwistdProcess, free_port
from mmo.testing.rawclient import RawClient

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
    """

    def __init__(
        self,
        log_dir: Path,
        brokers: int = 2,
        broker_args: tuple[str, ...] = (),
        workers: dict[str, str] | None = None,
        accounts: str = ACCOUNTS,
        env: dict[str, str] | None = None,
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
        self._start("yellow", "mmo-yellow", ["--listen", self.yellow], self.env)
        for name, handler in (WORKERS if workers is None else workers).items():
            self.start_worker(name, handler)
        for i in range(brokers):
            self.start_broker(i)
        self._start(
            "brokerlist",
            "mmo-brokerlist",
            ["--yellow", self.yellow, "--listen", f"tcp:{self.http_port}:interface=127.0.0.1"],
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
