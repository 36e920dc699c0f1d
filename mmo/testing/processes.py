"""Real ``twistd`` processes for integration tests (and the demo)."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _port_range() -> tuple[int, int]:
    """The ports :func:`free_port` picks from: 10000 up to the kernel's ephemeral range,
    split between pytest-xdist's workers (``PYTEST_XDIST_WORKER=gwN``), so that tests
    running at once never pick the same port."""
    low, _ = _ephemeral_range()
    first, last = 10000, max(low - 1, 11000)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if worker.startswith("gw") and worker[2:].isdigit() and count > 1:
        size = (last - first + 1) // count
        first += int(worker[2:]) % count * size
        last = first + size - 1
    return first, last


#: Ports :func:`free_port` has handed out in this process: never handed out twice, since
#: the first may not be bound yet when the second is asked for.
_given: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago, and that no earlier call in this
    process returned.

    It is taken below the kernel's ephemeral range, where ports bound to ``:0``
    (ZeroMQ's ``tcp://127.0.0.1:*`` among them) come from, so a process started
    later cannot be handed the same port by the kernel; under pytest-xdist, from this
    worker's share of that range.
    """
    first, last = _port_range()
    if len(_given) > (last - first) // 2:
        _given.clear()  # a long run: the oldest ones are long bound or free again
    for _ in range(200):
        port = random.randint(first, last)
        if port in _given:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _given.add(port)
        return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def twistd_command() -> list[str]:
    """How to run ``twistd`` with this interpreter."""
    script = Path(sys.executable).with_name("twistd")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


class TwistdProcess:
    """One ``twistd -n <role> ...`` child process, its output in a log file.

    Args:
        role: the twistd plugin, e.g. ``"mmo-worker"``.
        args: the role's arguments.
        log_dir: where ``<name>.log`` is written.
        name: a readable name (default: the role); also its ``$MMO_NAME``.
        env: extra environment variables.
    """

    def __init__(
        self,
        role: str,
        args: list[str],
        log_dir: Path,
        name: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.env = dict(env or {})
        self.role = role
        self.args = list(args)
        self.name = name or role
        self.log_path = Path(log_dir) / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """The child's process id."""
        assert self.proc is not None, "not started"
        return self.proc.pid

    def command(self) -> list[str]:
        """The child's argv (subclasses run other programs the same way)."""
        return [*twistd_command(), "-n", "--pidfile=", self.role, *self.args]

    def start(self) -> TwistdProcess:
        """Start the child (returns at once; wait for it through the registry)."""
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        env = dict(os.environ, PYTHONUNBUFFERED="1", MMO_NAME=self.name, **self.env)
        self.proc = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        log.close()
        return self

    def alive(self) -> bool:
        """Whether the child is still running."""
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the child (only ever to the process we started)."""
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(sig)

    def kill(self) -> None:
        """``kill -9`` the child and reap it."""
        self.signal(signal.SIGKILL)
        self.wait(5)

    def wait(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` seconds for the child to exit; its exit code or None."""
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; return the exit code."""
        if not self.alive():
            return self.proc.returncode if self.proc is not None else None
        if self.proc is not None and self.proc.poll() is None:
            # SIGCONT first: a stopped child cannot handle SIGTERM.
            self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        code = self.wait(timeout)
        if code is None:
            self.kill()
            code = self.proc.returncode if self.proc is not None else None
        return code

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the child's output."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_for_log(self, needle: str, timeout: float = 10.0) -> bool:
        """Poll the log until ``needle`` appears (or ``timeout``); whether it did."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.log_tail(400):
                return True
            time.sleep(0.05)
        return False
