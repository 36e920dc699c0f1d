"""Real servers for data-layer tests: throwaway PostgreSQL and Redis, private schemas.

Tests that restart a server must not touch the shared ones, so
:class:`ThrowawayPostgres` (``initdb`` into a temporary directory, trust auth,
127.0.0.1 on a free port) and :class:`ThrowawayRedis` (no persistence) run
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
    "postgres_schema",
    "redis_command",
    "redis_prefix",
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
    """A ``redis-server`` child on 127.0.0.1, without persistence, on a free port.

    Args:
        root: a directory for its files.
        port: the port (default: a free one).
    """

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root = Path(root)
        self.port = port or free_port()
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
        return [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            str(self.root),
        ]

    def start(self, timeout: float = 10.0) -> ThrowawayRedis:
        """Start the server and wait until it answers PING."""
        self.root.mkdir(parents=True, exist_ok=True)
        log = open(self.root / f"redis-{self.port}.log", "ab")  # noqa: SIM115 - child keeps it
        self.proc = subprocess.Popen(
            self.command_line(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        log.close()
        _wait(
            lambda: redis_command("127.0.0.1", self.port, "PING", timeout=0.5) == "PONG",
            timeout,
            f"redis on port {self.port}",
        )
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Stop the server (by its pid) and reap it."""
        _stop(self.proc, sig, timeout)


class ThrowawaySentinel(ThrowawayRedis):
    """A Redis Sentinel child watching the master at ``master_port`` as ``name``."""

    def __init__(self, root: Path, master_port: int, name: str = "mymaster") -> None:
        super().__init__(root)
        self.master_port = master_port
        self.name = name

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
            f"sentinel down-after-milliseconds {self.name} 5000\n"
        )
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found: run scripts/ensure-servers")
        return [binary, str(conf), "--sentinel"]


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
