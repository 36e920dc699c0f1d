"""Real servers for data-layer tests: throwaway PostgreSQL, Redis and Twemproxy, private schemas.

Tests that restart a server must not touch the shared ones, so
:class:`ThrowawayPostgres` (``initdb`` into a temporary directory, trust auth,
127.0.0.1 on a free port), :class:`ThrowawayRedis` (no persistence) and
:class:`ThrowawayTwemproxy` (``nutcracker`` in front of given Redis servers) run
their own as child processes, stopped by their pid. Tests that only need a
server use the shared ones with a private namespace: :func:`postgres_schema`
(a schema created and dropped around the test) and :func:`redis_prefix` (a key
prefix whose keys are deleted afterwards).

The shared servers are ``$MMO_TEST_POSTGRES`` (default
``postgresql://postgres@127.0.0.1:5432/test``) and ``$MMO_TEST_REDIS`` (default
``redis://127.0.0.1:6379/0``); ``scripts/ensure-servers`` starts them.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from mmo.testing.processes import free_port

__all__ = [
    "ThrowawayPostgres",
    "ThrowawayRedis",
    "ThrowawaySentinel",
    "ThrowawayTwemproxy",
    "postgres_schema",
    "redis_command",
    "redis_prefix",
    "sentinel_layout",
    "shared_postgres_url",
    "shared_redis_url",
]


def shared_postgres_url() -> str:
    """The shared PostgreSQL of the test suite."""
    return os.environ.get("MMO_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def shared_redis_url() -> str:
    """The shared Redis of the test suite."""
    return os.environ.get("MMO_TEST_REDIS", "redis://127.0.0.1:6379/0")


def _wait(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as e:  # the server is not up yet
            last = e
        time.sleep(0.05)
    raise RuntimeError(f"{what} not ready within {timeout}s: {last}")


# -- Redis ---------------------------------------------------------------------------


def redis_command(host: str, port: int, *args: str, timeout: float = 3.0) -> Any:
    """Send one command to Redis and return its decoded reply (a tiny blocking client)."""
    # Close the reader too: left open, it keeps the socket open until the garbage collector
    # finds both (a ResourceWarning).
    with (
        socket.create_connection((host, port), timeout=timeout) as sock,
        sock.makefile("rb") as reader,
    ):
        payload = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
        sock.sendall(payload.encode())

        def read() -> Any:
            line = reader.readline()
            if not line:
                raise ConnectionError("Redis closed the connection")
            kind, rest = line[:1], line[1:-2].decode()
            if kind == b"+":
                return rest
            if kind == b"-":
                raise RuntimeError(rest)
            if kind == b":":
                return int(rest)
            if kind == b"$":
                if rest == "-1":
                    return None
                data = reader.read(int(rest) + 2)[:-2]
                return data.decode()
            if kind == b"*":
                return None if rest == "-1" else [read() for _ in range(int(rest))]
            raise RuntimeError(f"unexpected Redis reply {line!r}")

        return read()


@contextlib.contextmanager
def redis_prefix(url: str | None = None) -> Iterator[str]:
    """A cache URL on the shared Redis with a private key prefix; its keys are deleted after."""
    url = url or shared_redis_url()
    prefix = f"mmo-test-{uuid.uuid4().hex[:12]}:"
    sep = "&" if "?" in url else "?"
    yield f"{url}{sep}prefix={quote(prefix)}"
    host_port = url.split("://", 1)[1].split("/", 1)[0].split("@")[-1]
    host, _, port = host_port.rpartition(":")
    cursor = "0"
    while True:
        cursor, keys = redis_command(host, int(port), "SCAN", cursor, "MATCH", prefix + "*")
        if keys:
            redis_command(host, int(port), "DEL", *keys)
        if cursor == "0":
            break


def _stop(proc: subprocess.Popen[bytes] | None, sig: int, timeout: float) -> None:
    """Signal a server child we started (by its pid) and reap it; kill it if it lingers."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class ThrowawayRedis:
    """A ``redis-server`` child on 127.0.0.1, on a free port.

    Args:
        root: a directory for its files.
        port: the port (default: a free one).
        replica_of: the port of a master on 127.0.0.1 to replicate (default: a master).
        password: ``requirepass`` (default: none).
        persist: keep the data across restarts (an append-only file in ``root``, synced at
            every write), as a production Redis would; by default nothing is kept.
    """

    def __init__(
        self,
        root: Path,
        port: int | None = None,
        replica_of: int | None = None,
        password: str | None = None,
        persist: bool = False,
    ) -> None:
        self.root = Path(root)
        self.persist = persist
        self.port = port or free_port()
        self.replica_of = replica_of
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def command_line(self) -> list[str]:
        """How the server is started."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found: run scripts/ensure-servers")
        extra = (
            [] if self.replica_of is None else ["--replicaof", "127.0.0.1", str(self.replica_of)]
        )
        if self.password is not None:
            extra += ["--requirepass", self.password]
        return [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes" if self.persist else "no",
            "--appendfsync",
            "always",
            "--daemonize",
            "no",
            "--dir",
            str(self.root),
            *extra,
        ]

    def start(self, timeout: float = 10.0) -> ThrowawayRedis:
        """Start the server and wait until it answers PING (AUTH, with a password)."""
        self.root.mkdir(parents=True, exist_ok=True)
        log = open(self.root / f"redis-{self.port}.log", "ab")  # noqa: SIM115 - child keeps it
        self.proc = subprocess.Popen(
            self.command_line(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        log.close()
        probe = ("AUTH", self.password) if self.password else ("PING",)
        _wait(
            lambda: redis_command("127.0.0.1", self.port, *probe, timeout=0.5) in ("PONG", "OK"),
            timeout,
            f"redis on port {self.port}",
        )
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Stop the server (by its pid) and reap it."""
        _stop(self.proc, sig, timeout)


class ThrowawaySentinel(ThrowawayRedis):
    """A Redis Sentinel child watching the master at ``master_port`` as ``name``."""

    def __init__(
        self, root: Path, master_port: int, name: str = "mymaster", down_after: float = 5.0
    ) -> None:
        super().__init__(root)
        self.master_port = master_port
        self.name = name
        self.down_after = down_after

    @property
    def url(self) -> str:
        """``sentinel://127.0.0.1:PORT/NAME``."""
        return f"sentinel://127.0.0.1:{self.port}/{self.name}"

    def command_line(self) -> list[str]:
        """A config file naming the master, then ``redis-server CONF --sentinel``."""
        conf = self.root / f"sentinel-{self.port}.conf"
        conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.root}\n"
            f"sentinel monitor {self.name} 127.0.0.1 {self.master_port} 1\n"
            f"sentinel down-after-milliseconds {self.name} {round(self.down_after * 1000)}\n"
            f"sentinel failover-timeout {self.name} {round(self.down_after * 4000)}\n"
        )
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found: run scripts/ensure-servers")
        return [binary, str(conf), "--sentinel"]

    def master(self) -> tuple[str, int]:
        """The master's address as this Sentinel reports it now."""
        host, port = redis_command(
            "127.0.0.1", self.port, "SENTINEL", "get-master-addr-by-name", self.name
        )
        return host, int(port)


def sentinel_layout(
    root: Path, name: str = "mymaster", down_after: float = 1.0, timeout: float = 10.0
) -> tuple[ThrowawayRedis, ThrowawayRedis, ThrowawaySentinel]:
    """A master, its replica and a Sentinel watching it as ``name``, all started: returns
    once the replica is linked and the Sentinel knows it (so it can promote it)."""
    master = ThrowawayRedis(root / f"{name}-master").start()
    replica = ThrowawayRedis(root / f"{name}-replica", replica_of=master.port).start()
    sentinel = ThrowawaySentinel(root / f"{name}-sentinel", master.port, name, down_after)
    try:
        _wait(
            lambda: (
                "master_link_status:up"
                in redis_command("127.0.0.1", replica.port, "INFO", "replication")
            ),
            timeout,
            "the replica's link to its master",
        )
        sentinel.start()
        # Sentinel learns of replicas from the master's INFO.
        _wait(
            lambda: redis_command("127.0.0.1", sentinel.port, "SENTINEL", "replicas", name),
            timeout,
            "Sentinel's knowledge of the replica",
        )
    except BaseException:
        for server in (sentinel, replica, master):
            server.stop()
        raise
    return master, replica, sentinel


# -- Twemproxy -----------------------------------------------------------------------


def _nutcracker_bin() -> str:
    # Debian installs it in /usr/sbin, which a non-root PATH often lacks.
    found = shutil.which("nutcracker") or shutil.which(
        "nutcracker", path="/usr/sbin:/usr/local/sbin"
    )
    if found is None:
        raise RuntimeError("nutcracker not found (apt-get install nutcracker): run ensure-servers")
    return found


class ThrowawayTwemproxy:
    """A Twemproxy (``nutcracker``) child on 127.0.0.1 in front of Redis servers.

    The pool is the seed layout's: ``hash: murmur`` (``fnv1a_64``, twemproxy's
    example, puts runs of similar keys such as ``handoff:p0``...``p7`` all on one
    server of two), ``distribution: ketama``,
    ``hash_tag: "{}"`` (a ``{tag}`` key is placed by its tag alone) and
    ``auto_eject_hosts: false`` (a key never moves to another server: while its
    server is down, commands on it fail with ``ERR Connection refused``). Each
    server is listed with a name (``s0``, ``s1``... or ``names``); ketama places
    keys by the names, so :meth:`reconfigure` can point a name at another address
    (a promoted replica) without moving any key. The listen and stats ports are
    free ones; the config and the log are files in ``root``.

    Args:
        root: a directory for its files.
        servers: ``(host, port)`` of each Redis behind it.
        names: the servers' names in the pool (default ``s0``, ``s1``...).
        password: ``redis_auth``: clients must AUTH with it, and it is sent to the servers.
        timeout: ``timeout`` of a server's answer, in seconds.
        port: the listen port (default: a free one).
    """

    def __init__(
        self,
        root: Path,
        servers: list[tuple[str, int]],
        *,
        names: list[str] | None = None,
        password: str | None = None,
        timeout: float = 2.0,
        port: int | None = None,
    ) -> None:
        self.root = Path(root)
        self.servers = list(servers)
        self.names = list(names or [f"s{i}" for i in range(len(servers))])
        if len(self.names) != len(self.servers):
            raise ValueError("one name per server")
        self.password = password
        self.timeout = timeout
        self.port = port or free_port()
        self.stats_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``twemproxy://127.0.0.1:PORT`` (with the password, if there is one)."""
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"twemproxy://{auth}127.0.0.1:{self.port}"

    def config(self) -> str:
        """The pool's YAML."""
        lines = [
            "mmo:",
            f"  listen: 127.0.0.1:{self.port}",
            "  hash: murmur",
            '  hash_tag: "{}"',
            "  distribution: ketama",
            "  redis: true",
            "  auto_eject_hosts: false",
            f"  timeout: {round(self.timeout * 1000)}",
            *([f'  redis_auth: "{self.password}"'] if self.password else []),
            "  servers:",
            *(
                f"    - {host}:{port}:1 {name}"
                for (host, port), name in zip(self.servers, self.names, strict=True)
            ),
        ]
        return "\n".join(lines) + "\n"

    def command_line(self) -> list[str]:
        """Write the config file; how nutcracker is started on it."""
        conf = self.root / f"nutcracker-{self.port}.yml"
        conf.write_text(self.config())
        return [
            _nutcracker_bin(),
            "--conf-file", str(conf),
            "--stats-port", str(self.stats_port),
            "--stats-addr", "127.0.0.1",
            "--output", str(self.root / f"nutcracker-{self.port}.log"),
        ]  # fmt: skip

    def start(self, timeout: float = 10.0) -> ThrowawayTwemproxy:
        """Check the config, start the proxy and wait until it answers PING."""
        self.root.mkdir(parents=True, exist_ok=True)
        command = self.command_line()
        checked = subprocess.run(
            [*command[:3], "--test-conf"], capture_output=True, timeout=30, check=False
        )
        if checked.returncode != 0:
            raise RuntimeError(f"nutcracker refuses its config: {checked.stderr.decode()}")
        self.proc = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL
        )

        def answers() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"nutcracker exited with status {self.proc.returncode}")
            if self.password:
                # AUTH is the first thing a client must send; PING alone would be refused.
                answer = redis_command("127.0.0.1", self.port, "AUTH", self.password, timeout=0.5)
                return answer == "OK"
            return redis_command("127.0.0.1", self.port, "PING", timeout=0.5) == "PONG"

        _wait(answers, timeout, f"nutcracker on port {self.port}")
        return self

    def reconfigure(self, servers: list[tuple[str, int]], timeout: float = 10.0) -> None:
        """Point the pool's names at ``servers`` and restart on the same port.

        nutcracker reads its config only at start, so this is what a fail-over
        agent does after Sentinel promotes a replica: clients see their
        connections close and reconnect.
        """
        self.stop()
        self.servers = list(servers)
        self.start(timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Stop the proxy (by its pid) and reap it."""
        _stop(self.proc, sig, timeout)


# -- PostgreSQL ----------------------------------------------------------------------


@contextlib.contextmanager
def postgres_schema(url: str | None = None) -> Iterator[str]:
    """A database URL on the shared PostgreSQL whose tables go to a fresh schema, dropped after.

    The URL sets ``search_path`` to the schema (``options=-csearch_path=...``).
    """
    import psycopg2  # type: ignore[import-untyped]

    url = url or shared_postgres_url()
    schema = f"mmo_test_{uuid.uuid4().hex[:12]}"

    def run(sql: str) -> None:
        conn = psycopg2.connect(url, connect_timeout=5)
        try:
            conn.autocommit = True
            with conn.cursor() as cursor:
                cursor.execute(sql)
        finally:
            conn.close()

    run(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in url else "?"
    try:
        yield f"{url}{sep}options={quote(f'-csearch_path={schema}')}"
    finally:
        run(f"DROP SCHEMA {schema} CASCADE")


def _postgres_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
    )
    if not candidates:
        raise RuntimeError(f"{name} not found (apt-get install postgresql): run ensure-servers")
    return candidates[-1]


class ThrowawayPostgres:
    """A PostgreSQL server of its own: ``initdb`` into ``root``, trust auth, 127.0.0.1 only.

    PostgreSQL refuses to run as root, so as root the server runs as the
    ``postgres`` user (``root`` is handed to it); otherwise as the caller.

    Args:
        root: an empty directory for the cluster (default: a new one under the system's
            temporary directory, which the ``postgres`` user can reach; removed by
            :meth:`cleanup`).
        port: the port (default: a free one).
    """

    def __init__(self, root: Path | None = None, port: int | None = None) -> None:
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="mmo-pg-")) if root is None else Path(root)
        self.data = self.root / "data"
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._user: str | None = None
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError(
                    "running as root needs a 'postgres' user to run initdb"
                ) from None
            self._user = "postgres"

    @property
    def url(self) -> str:
        """``postgresql://postgres@127.0.0.1:PORT/postgres``."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run_as(self) -> dict[str, Any]:
        return {"user": self._user, "group": self._user} if self._user else {}

    def init(self) -> ThrowawayPostgres:
        """``initdb`` the cluster (trust auth, superuser ``postgres``, no fsync)."""
        self.root.mkdir(parents=True, exist_ok=True)
        if self._user:
            entry = pwd.getpwnam(self._user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        subprocess.run(
            [_postgres_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
             "-E", "UTF8", "--no-sync", "--no-instructions"],
            check=True,
            capture_output=True,
            cwd=self.root,
            timeout=60,
            **self._run_as(),
        )  # fmt: skip
        return self

    def start(self, timeout: float = 20.0) -> ThrowawayPostgres:
        """Start the server and wait until it accepts connections."""
        import psycopg2

        log = open(self.root / "postgres.log", "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            [
                _postgres_bin("postgres"),
                "-D", str(self.data),
                "-p", str(self.port),
                "-c", "listen_addresses=127.0.0.1",
                "-c", f"unix_socket_directories={self.root}",
                "-c", "fsync=off",
                "-c", "synchronous_commit=off",
                "-c", "full_page_writes=off",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.root,
            **self._run_as(),
        )  # fmt: skip
        log.close()
        _wait(
            lambda: psycopg2.connect(self.url, connect_timeout=1).close() is None,
            timeout,
            f"postgres on port {self.port}",
        )
        return self

    def cleanup(self) -> None:
        """Stop the server and remove the directory this object made."""
        self.stop()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def stop(self, sig: int = signal.SIGINT, timeout: float = 20.0) -> None:
        """Stop the server by its pid (SIGINT: fast shutdown) and reap it."""
        _stop(self.proc, sig, timeout)
