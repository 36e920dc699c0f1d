"""A small network of Linux network namespaces for multi-host tests, and partitions in it.

Every host is a network namespace with one veth pair: one end in the host (named after it,
holding its address), the other attached to a bridge in a namespace of its own (the
switch). Nothing is created in, routed through or read from the root namespace: the hosts
reach each other only through the switch, and only on :data:`SUBNET`.

Partitions:

- :meth:`Network.cut_host` sets the host's port on the switch down: its packets, and
  packets to it, vanish (as when its cable is pulled); :meth:`Network.heal_host` sets it
  up again.
- :meth:`Network.cut_pair` adds blackhole routes on both sides, so two hosts no longer
  reach each other while both reach everyone else; :meth:`Network.heal_pair` removes them.

Every namespace and link is named with :data:`PREFIX`. :meth:`Network.build` first removes
what a crashed run may have left with that prefix (processes still inside those
namespaces are killed by PID, then the namespaces deleted), under a lock file, so two runs
on one machine take turns instead of tearing down each other's network.
:meth:`Network.teardown` removes everything again; call it from a ``finally``.

It needs root and iproute2's ``ip``; without them :class:`NetworkError` says what is
missing.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from typing_extensions import override

from mmo.testing import TwistdProcess

#: Every namespace and link this module makes is named with this prefix.
PREFIX = "mmo-t-"
#: The addresses used inside the namespaces (a /24; nothing else is ever contacted).
SUBNET = "10.251.77"
#: The namespace of the switch (the bridge).
SWITCH = f"{PREFIX}sw"
#: The bridge, in :data:`SWITCH`.
BRIDGE = f"{PREFIX}br0"
#: Held while a network exists, so that runs on one machine take turns.
LOCK_PATH = Path("/run/lock") if Path("/run/lock").is_dir() else Path("/tmp")
LOCK_FILE = LOCK_PATH / "mmo-t-netns.lock"
#: Seconds one ``ip`` command may take.
IP_TIMEOUT = 10.0


class NetworkError(RuntimeError):
    """The namespaces could not be made (not root, no ``ip``, permission denied...)."""


@dataclass(frozen=True)
class Host:
    """One host of the network.

    Attributes:
        name: its short name, e.g. ``"c1"``.
        ns: its namespace, e.g. ``"mmo-t-c1"``.
        ip: its address in :data:`SUBNET`.
        link: its end of its veth pair (in ``ns``, named like the namespace).
        port: the other end, on the switch (``"mmo-t-c1-br"``).
    """

    name: str
    ns: str
    ip: str
    link: str
    port: str


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``ip ARGS`` (never through a shell).

    Raises:
        NetworkError: it failed (``check``) or did not finish within :data:`IP_TIMEOUT`.
    """
    try:
        done = subprocess.run(
            ["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise NetworkError(f"`ip {' '.join(args)}` failed: {e}") from e
    if check and done.returncode != 0:
        raise NetworkError(f"`ip {' '.join(args)}` exited {done.returncode}: {done.stderr.strip()}")
    return done


def preflight() -> None:
    """Check that namespaces can be made here.

    Raises:
        NetworkError: not root, or iproute2's ``ip`` is not installed.
    """
    if shutil.which("ip") is None:
        raise NetworkError("iproute2's `ip` is not installed (apt-get install iproute2)")
    if os.geteuid() != 0:
        raise NetworkError(f"network namespaces need root; running as uid {os.geteuid()}")


def our_namespaces() -> list[str]:
    """The namespaces named with :data:`PREFIX` that exist now."""
    listed = ip("netns", "list").stdout.splitlines()
    return [line.split()[0] for line in listed if line.split() and line.startswith(PREFIX)]


def kill_inside(ns: str) -> list[int]:
    """``kill -9`` every process left in namespace ``ns`` (only this module makes them);
    return their PIDs."""
    pids = [int(p) for p in ip("netns", "pids", ns, check=False).stdout.split() if p.isdigit()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids


class Network:
    """Hosts joined by one switch, in network namespaces; see the module docstring.

    Args:
        hosts: host name -> the last byte of its address in :data:`SUBNET`.
    """

    def __init__(self, hosts: dict[str, int]) -> None:
        self.hosts = {
            name: Host(
                name,
                f"{PREFIX}{name}",
                f"{SUBNET}.{last}",
                f"{PREFIX}{name}",
                f"{PREFIX}{name}-br",
            )
            for name, last in hosts.items()
        }
        self._lock: IO[bytes] | None = None
        self._made: list[str] = []
        self._pairs: set[tuple[str, str]] = set()

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def build(self, lock_timeout: float = 120.0) -> None:
        """Take the lock, remove leftovers of a crashed run, then make the network.

        Raises:
            NetworkError: it cannot be made; what is made so far is removed again.
        """
        preflight()
        self._take_lock(lock_timeout)
        try:
            self.remove_leftovers()
            self._add_ns(SWITCH)
            ip("-n", SWITCH, "link", "add", BRIDGE, "type", "bridge")
            ip("-n", SWITCH, "link", "set", BRIDGE, "up")
            for host in self.hosts.values():
                self._add_ns(host.ns)
                ip("link", "add", host.link, "netns", host.ns, "type", "veth",
                   "peer", "name", host.port, "netns", SWITCH)  # fmt: skip
                ip("-n", SWITCH, "link", "set", host.port, "master", BRIDGE, "up")
                ip("-n", host.ns, "link", "set", "lo", "up")
                ip("-n", host.ns, "addr", "add", f"{host.ip}/24", "dev", host.link)
                ip("-n", host.ns, "link", "set", host.link, "up")
        except BaseException:
            self.teardown()
            raise

    def _take_lock(self, timeout: float) -> None:
        lock = open(LOCK_FILE, "ab")  # noqa: SIM115 - held until teardown
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    lock.close()
                    raise NetworkError(
                        f"another run holds {LOCK_FILE} for over {timeout:g} s"
                    ) from None
                time.sleep(0.2)
            except OSError as e:
                lock.close()
                raise NetworkError(f"cannot lock {LOCK_FILE}: {e}") from e
        self._lock = lock

    def _add_ns(self, ns: str) -> None:
        ip("netns", "add", ns)
        self._made.append(ns)

    @staticmethod
    def remove_leftovers() -> list[str]:
        """Remove the namespaces (and the processes in them) a crashed run left behind;
        return their names."""
        leftovers = our_namespaces()
        for ns in leftovers:
            kill_inside(ns)
        for ns in leftovers:
            ip("netns", "del", ns, check=False)
        return leftovers

    def teardown(self) -> None:
        """Kill what is still running inside the namespaces, delete them, drop the lock."""
        try:
            for ns in self._made:
                kill_inside(ns)
            for ns in reversed(self._made):
                ip("netns", "del", ns, check=False)
            self._made = []
            self._pairs.clear()
        finally:
            if self._lock is not None:
                self._lock.close()
                self._lock = None

    # -- partitions ----------------------------------------------------------------

    def cut_host(self, name: str) -> None:
        """Cut host ``name`` from everyone: its port on the switch goes down."""
        ip("-n", SWITCH, "link", "set", self.hosts[name].port, "down")

    def heal_host(self, name: str) -> None:
        """Undo :meth:`cut_host`."""
        ip("-n", SWITCH, "link", "set", self.hosts[name].port, "up")

    def cut_pair(self, one: str, other: str) -> None:
        """Cut hosts ``one`` and ``other`` from each other only (blackhole routes on both)."""
        a, b = self.hosts[one], self.hosts[other]
        ip("-n", a.ns, "route", "add", "blackhole", f"{b.ip}/32")
        ip("-n", b.ns, "route", "add", "blackhole", f"{a.ip}/32")
        self._pairs.add((one, other))

    def heal_pair(self, one: str, other: str) -> None:
        """Undo :meth:`cut_pair`."""
        a, b = self.hosts[one], self.hosts[other]
        ip("-n", a.ns, "route", "del", "blackhole", f"{b.ip}/32", check=False)
        ip("-n", b.ns, "route", "del", "blackhole", f"{a.ip}/32", check=False)
        self._pairs.discard((one, other))

    def heal_all(self) -> None:
        """Undo every cut (a failed scenario must not leave the next one partitioned)."""
        for pair in list(self._pairs):
            self.heal_pair(*pair)
        for name in self.hosts:
            self.heal_host(name)

    # -- running things inside -----------------------------------------------------

    def argv(self, host: str, command: list[str]) -> list[str]:
        """``command`` run inside host ``host``'s namespace (``ip netns exec`` execs it,
        so the child's PID is the command's own)."""
        return ["ip", "netns", "exec", self.hosts[host].ns, *command]


class NetnsTwistd(TwistdProcess):
    """A :class:`~mmo.testing.TwistdProcess` run inside one host of a :class:`Network`.

    Args:
        network: the network.
        host: the host's name.
        role, args, log_dir, name, env: as for :class:`~mmo.testing.TwistdProcess`.
    """

    def __init__(
        self,
        network: Network,
        host: str,
        role: str,
        args: list[str],
        log_dir: Path,
        name: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        super().__init__(role, args, log_dir, name, env)
        self.network = network
        self.host = host

    @override
    def command(self) -> list[str]:
        """``ip netns exec <ns> twistd -n <role> ...``."""
        return self.network.argv(self.host, super().command())
