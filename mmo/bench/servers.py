"""The servers a workload runs against: a fresh mmo edge, the floor chain, or a running broker.

Every workload gets fresh processes (:class:`ServerSet`), started as children of
the generator and stopped after it; their CPU time and memory are read from
``/proc``. With ``--against`` the generator uses a broker that is already
running and measures only the processes it is told of (``--server-pids``).
"""

from __future__ import annotations

import json
import secrets
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet import defer, task

from mmo.bench.client import BenchConnection, ClientPool
from mmo.bench.stats import cpu_seconds, machine_busy_seconds, rss_kib
from mmo.bench.wire import RESPONSE, Frame, encode_fast
from mmo.testing.processes import TwistdProcess, free_port
from mmo.types import InlineCallbacks
from mmo.zmq.curve import provide_curve_keys

__all__ = [
    "MACHINE",
    "BenchError",
    "PythonProcess",
    "ServerSet",
    "Target",
    "cpu_snapshot",
    "rss_snapshot",
]

SESSION = "mmo.sessions:SessionService"
SSO = "mmo.bench.sso:BenchSSOService"
CHAT = "mmo.examples.chat:ChatService"


class BenchError(Exception):
    """A benchmark could not run (servers did not start, clients could not log in)."""


@dataclass
class Target:
    """Where the generator connects, and which processes it measures.

    Attributes:
        host: the broker's (or floor server's) host.
        port: its client port.
        pids: name -> pid of the server processes measured.
        broker: the name in ``pids`` of the process holding the connections.
        metrics: the ``/metrics`` URLs of the servers (with telemetry on): the generator
            scrapes them as Prometheus would.
    """

    host: str
    port: int
    pids: dict[str, int] = field(default_factory=dict)
    broker: str | None = None
    metrics: list[str] = field(default_factory=list)


class PythonProcess(TwistdProcess):
    """A ``python -m MODULE ARGS...`` child process (the floor's programs).

    It stops like a :class:`TwistdProcess` (SIGTERM, then SIGKILL); ``role`` is
    the module run.
    """

    def command(self) -> list[str]:
        """``python -m MODULE ARGS...``."""
        return [sys.executable, "-m", self.role, *self.args]


#: The key of :func:`cpu_snapshot` holding the whole machine's busy CPU seconds.
MACHINE = "(machine)"


def cpu_snapshot(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds used so far by each named process (a gone process is left out).

    The entry :data:`MACHINE` is the busy time of all processors, so that CPU
    used by processes outside the benchmark can be told.
    """
    out = {MACHINE: machine_busy_seconds()}
    for name, pid in pids.items():
        try:
            out[name] = cpu_seconds(pid)
        except (OSError, ValueError, IndexError):
            continue
    return out


def rss_snapshot(pids: dict[str, int]) -> dict[str, int]:
    """Resident memory (KiB) of each named process (a gone process is left out)."""
    out = {}
    for name, pid in pids.items():
        try:
            out[name] = rss_kib(pid)
        except (OSError, ValueError):
            continue
    return out


class ServerSet:
    """Fresh server processes for one workload; :meth:`stop` stops them all.

    Args:
        log_dir: where each process writes ``<name>.log``.
    """

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.processes: list[TwistdProcess] = []

    def _start(self, process: TwistdProcess) -> TwistdProcess:
        self.processes.append(process.start())
        return process

    def start_mmo(
        self,
        *,
        accounts: str,
        rate: float,
        burst: int,
        capacity: int,
        telemetry: bool = False,
        colocated: bool = False,
    ) -> Target:
        """Start yellow, session, sso, chat and one broker; return where to connect.

        Args:
            accounts: ``user:password,...`` seeded into sso (its setting ``accounts``,
                in a config file: thousands of them make a long argument).
            rate: the broker's per-session packet rate.
            burst: the broker's per-session burst.
            capacity: sessions the broker takes.
            telemetry: every process gets an operator listener (``--metrics``) and ships
                its logs to a log collector (started too, and measured); without, none
                listens and none ships (``--log-queue 0``).
            colocated: chat runs in the broker's process (``--serve chat=...``), not as
                a worker of its own: the co-located layout.
        """
        yellow = f"tcp://127.0.0.1:{free_port()}"
        port = free_port()
        # A fresh token signing key per run, shared by sso and the broker; CURVE keys made
        # by the first run of the process unless the caller gives some (the links are
        # measured as deployed).
        env = {"MMO_AUTH_KEY": secrets.token_urlsafe(24)}
        sso_config = self.log_dir / "sso.toml"
        sso_config.write_text(f"[worker.settings]\naccounts = {json.dumps(accounts)}\n")
        provide_curve_keys(self.log_dir / "curve")
        pids: dict[str, int] = {}
        metrics: list[str] = []

        def ops() -> list[str]:
            if not telemetry:
                return ["--log-queue", "0"]
            port = free_port()
            metrics.append(f"http://127.0.0.1:{port}/metrics")
            return ["--metrics", str(port)]

        p = self._start(
            TwistdProcess("mmo-yellow", ["--listen", yellow, *ops()], self.log_dir, "yellow", env)
        )
        pids["yellow"] = p.pid
        if telemetry:
            logs = ["--yellow", yellow, "--dir", str(self.log_dir / "collected"), *ops()]
            p = self._start(TwistdProcess("mmo-logs", logs, self.log_dir, "logs", env))
            pids["logs"] = p.pid
        workers = (("session", SESSION), ("sso", SSO), *(() if colocated else (("chat", CHAT),)))
        for name, handler in workers:
            args = ["--yellow", yellow, "--handler", handler, "--instance-id", name, *ops()]
            if name == "session":
                # More clients than accounts share them, one session each (a game's
                # default, one session per user, would have them replace each other).
                args += ["--set", "max_sessions_per_user=1000000"]
            if name == "sso":
                args += ["--config", str(sso_config)]
            p = self._start(TwistdProcess("mmo-worker", args, self.log_dir, name, env))
            pids[name] = p.pid
        args = [
            "--yellow",
            yellow,
            "--listen",
            f"tcp:{port}:interface=127.0.0.1",  # the broker adds a 1024 backlog itself
            "--instance-id",
            "broker",
            "--rate",
            str(rate),
            "--burst",
            str(burst),
            "--capacity",
            str(capacity),
            # Every bench client comes from 127.0.0.1: no cap per address.
            "--max-per-address",
            "0",
            # W2 senders go as fast as asked (the budgets are still checked: their cost
            # is measured, as the packet rate's is).
            "--sender-rate",
            str(rate),
            "--sender-burst",
            str(burst),
            "--channel-budget",
            str(2**40),
            *(("--serve", f"chat={CHAT}") if colocated else ()),
            *ops(),
        ]
        p = self._start(TwistdProcess("mmo-broker", args, self.log_dir, "broker", env))
        pids["broker"] = p.pid
        return Target("127.0.0.1", port, pids, "broker", metrics)

    def start_floor(self) -> Target:
        """Start the floor's echo and TCP server (:mod:`mmo.bench.floor`)."""
        zmq_port = free_port()
        port = free_port()
        echo = self._start(
            PythonProcess(
                "mmo.bench.floor",
                ["echo", "--bind", f"tcp://127.0.0.1:{zmq_port}"],
                self.log_dir,
                "floor-echo",
            )
        )
        server = self._start(
            PythonProcess(
                "mmo.bench.floor",
                ["server", "--port", str(port), "--echo", f"tcp://127.0.0.1:{zmq_port}"],
                self.log_dir,
                "floor-server",
            )
        )
        return Target(
            "127.0.0.1", port, {"floor-server": server.pid, "floor-echo": echo.pid}, "floor-server"
        )

    def dead(self) -> TwistdProcess | None:
        """A child that has exited, if any."""
        for p in self.processes:
            if not p.alive():
                return p
        return None

    def logs(self, lines: int = 15) -> str:
        """The tail of every child's log."""
        return "\n".join(f"--- {p.name} ---\n{p.log_tail(lines)}" for p in self.processes)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM every child at once, then SIGKILL what is left after ``timeout``."""
        for p in reversed(self.processes):
            if p.alive():
                p.signal(signal.SIGCONT)
                p.signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in self.processes:
            if p.wait(max(0.1, deadline - time.monotonic())) is None:
                p.kill()
        self.processes = []


@defer.inlineCallbacks
def wait_ready(
    reactor: Any,
    target: Target,
    servers: ServerSet | None,
    *,
    user: str,
    password: str,
    probe_route: str | None,
    register: bool = False,
    timeout: float = 30.0,
) -> InlineCallbacks[None]:
    """Wait until a client can log in and (if given) ``probe_route`` answers.

    Raises:
        BenchError: a server exited, or nothing worked within ``timeout``.
    """
    deadline = time.monotonic() + timeout
    last = "no attempt"
    while time.monotonic() < deadline:
        if servers is not None:
            gone = servers.dead()
            if gone is not None:
                raise BenchError(f"{gone.name} exited:\n{gone.log_tail(30)}")
        pool = ClientPool(
            reactor,
            target.host,
            target.port,
            user=lambda i: user,
            password=password,
            register=register,
        )
        try:
            conns = yield pool.open(1, in_flight=1, timeout=5.0)
            if not conns:
                last = pool.first_error or "login failed"
            elif probe_route is None:
                return
            else:
                answer = yield _ask(conns[0], probe_route)
                if answer.kind == RESPONSE:
                    return
                last = f"{probe_route}: {answer.code} {answer.message}"
        finally:
            pool.close()
        yield task.deferLater(reactor, 0.2, lambda: None)
    logs = servers.logs() if servers is not None else ""
    raise BenchError(f"servers not ready after {timeout:.0f} s: {last}\n{logs}")


def _ask(conn: BenchConnection, route: str) -> defer.Deferred[Frame]:
    d: defer.Deferred[Frame] = defer.Deferred()
    conn.request(route, encode_fast({}), lambda _conn, frame: d.callback(frame))
    return d


def scrape_every(reactor: Any, urls: list[str], interval: float = 1.0) -> task.LoopingCall:
    """Fetch every ``/metrics`` URL each ``interval`` seconds, as Prometheus would (so
    that a run with telemetry pays for its scrapes); stop the returned loop when done."""
    from twisted.web.client import Agent, readBody

    agent = Agent(reactor)

    def fetch_all() -> None:
        for url in urls:
            d = agent.request(b"GET", url.encode())
            d.addCallback(readBody)
            d.addErrback(lambda _: None)  # a scrape missed is no failure of the run

    loop = task.LoopingCall(fetch_all)
    loop.clock = reactor
    loop.start(interval, now=False)
    return loop
