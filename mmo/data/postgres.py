"""PostgreSQL through txpostgres: a pool of asynchronous connections with deadlines.

The pool opens ``min_size`` connections at start and up to ``max_size`` on
demand. A connection that breaks (the server restarted, the network dropped,
an operation passed its deadline) is closed and forgotten; the next operation
opens a fresh one, so the pool recovers from a server restart by itself. While
the server cannot be reached, operations fail at once with
``DatabaseUnavailable`` (connection attempts back off from 0.1 s to 2 s)
instead of queueing: the caller decides whether to retry.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import psycopg2  # type: ignore[import-untyped]
from twisted.application.service import Service
from twisted.internet import defer, error, main
from twisted.logger import Logger
from twisted.python.failure import Failure
from txpostgres import txpostgres
from typing_extensions import override

from mmo.data.base import Params, Row
from mmo.data.errors import (
    DatabaseError,
    DatabaseTimeout,
    DatabaseUnavailable,
    DataError,
    IntegrityError,
)
from mmo.data.sql import short

__all__ = ["PostgresDatabase"]

log = Logger()
T = TypeVar("T")

_FIRST_BACKOFF = 0.1
_MAX_BACKOFF = 2.0
_LOST = (error.ConnectionDone, error.ConnectionLost, txpostgres.RollbackFailed)


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0].strip()


def safe_url(dsn: str) -> str:
    """``dsn`` without its password and parameters, for messages."""
    parts = urlsplit(dsn)
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    return f"postgresql://{host}{port}{parts.path}"


class _Connection(txpostgres.Connection):
    """A txpostgres connection that tells its pool when it breaks while idle."""

    def __init__(self, pool: PostgresDatabase, reactor: Any) -> None:
        super().__init__(reactor=reactor)
        self.pool = pool
        self.broken = False

    def usable(self) -> bool:
        raw = self._connection
        return not self.broken and raw is not None and not raw.closed

    def doRead(self) -> Any:
        # An idle connection reads only when the server speaks first: a NOTIFY, or
        # the FATAL message of a shutdown. psycopg2 raises on the latter.
        try:
            return super().doRead()
        except Exception as e:
            self.broken = True
            log.info("postgres: connection closed by the server: {e}", e=_first_line(e))
            return main.CONNECTION_LOST

    def connectionLost(self, reason: Any) -> None:
        super().connectionLost(reason)
        self.broken = True
        self.pool._forget(self)

    def abort(self) -> None:
        """Close at once, failing whatever runs on it."""
        self.broken = True
        if self._connection is None:
            return
        for cursor in list(self._cursors):
            self.reactor.removeReader(cursor)
            self.reactor.removeWriter(cursor)
        try:
            self.close()
        except Exception as e:  # closing a broken connection may complain; it is gone anyway
            log.debug("postgres: close: {e}", e=e)


class _Cursor:
    """The cursor an interaction gets: txpostgres's, with mmo's errors."""

    def __init__(self, cursor: Any, db: PostgresDatabase) -> None:
        self._cursor = cursor
        self._db = db

    def execute(self, sql: str, params: Params = None) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = self._cursor.execute(sql, params)
        return d.addCallbacks(lambda _: self, lambda f: Failure(self._db._translate(f, sql)))

    def fetchall(self) -> list[Row]:
        return list(self._cursor.fetchall())

    def fetchone(self) -> Row | None:
        row = self._cursor.fetchone()
        return None if row is None else tuple(row)

    @property
    def rowcount(self) -> int:
        return int(self._cursor.rowcount)


class PostgresDatabase(Service):
    """PostgreSQL behind the :class:`mmo.data.Database` interface.

    Args:
        dsn: a libpq connection URI (``postgresql://user@127.0.0.1:5432/db?options=...``);
            the password may come from ``$PGPASSWORD`` or ``~/.pgpass``.
        min_size: connections opened at start (and kept when the server allows).
        max_size: connections open at most; operations beyond wait for one.
        timeout: default deadline of an operation, in seconds, waiting included.
        connect_timeout: deadline of opening one connection, in seconds.
        reactor: the reactor (default: the global one).
    """

    dialect = "postgresql"

    def __init__(
        self,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        timeout: float = 10.0,
        connect_timeout: float = 5.0,
        reactor: Any = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        if not 0 <= min_size <= max_size or max_size < 1:
            raise ValueError(f"need 0 <= min_size <= max_size, 1 <= max_size: {min_size, max_size}")
        self.dsn = dsn
        self.url = safe_url(dsn)
        self.min_size = min_size
        self.max_size = max_size
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._reactor = reactor
        self._all: set[_Connection] = set()  # open or opening
        self._idle: list[_Connection] = []
        self._busy: set[_Connection] = set()
        self._waiters: collections.deque[defer.Deferred[_Connection]] = collections.deque()
        self._retry_at = 0.0
        self._backoff = _FIRST_BACKOFF
        self._last_error = ""
        #: Operations that had to wait for a connection (every connection was busy).
        self.waits = 0
        self._filling = False
        self._fill_call: Any = None
        self._drained: list[defer.Deferred[None]] = []

    def __repr__(self) -> str:
        return f"<PostgresDatabase {self.url} {len(self._all)}/{self.max_size}>"

    def stats(self) -> dict[str, int]:
        """Connections: open (or opening), idle, busy; operations waiting for one."""
        return {
            "open": len(self._all),
            "idle": len(self._idle),
            "busy": len(self._busy),
            "waiting": len(self._waiters),
        }

    def reachable(self) -> tuple[bool, str]:
        """Whether the server answers (a readiness check): a connection is open, or
        none has failed since the last that opened."""
        if self._idle or self._busy or not self._last_error:
            return True, f"{self.url}: {len(self._idle) + len(self._busy)} connections"
        return False, f"{self.url} is unreachable: {self._last_error}"

    # -- lifecycle -------------------------------------------------------------

    @override
    def startService(self) -> None:
        """Start opening ``min_size`` connections (failures are retried in the background)."""
        super().startService()
        self._fill()

    @override
    @defer.inlineCallbacks
    def stopService(self) -> Any:
        """Refuse new operations, let running ones finish (within the deadline), close all."""
        super().stopService()
        if self._fill_call is not None and self._fill_call.active():
            self._fill_call.cancel()
        while self._waiters:
            self._waiters.popleft().errback(DatabaseUnavailable(f"{self.url} is stopping"))
        for conn in list(self._idle):
            self._discard(conn)
        if self._busy:
            done: defer.Deferred[None] = defer.Deferred()
            self._drained.append(done)
            done.addTimeout(self.timeout, self._reactor)
            try:
                yield done
            except defer.TimeoutError:
                log.warn("postgres: closing with {n} operations running", n=len(self._busy))
        for conn in list(self._all):
            self._discard(conn)

    # -- the Database interface ------------------------------------------------

    def run_query(
        self, sql: str, params: Params = None, *, timeout: float | None = None
    ) -> defer.Deferred[list[Row]]:
        """Run one statement; fire with its rows."""

        def work(conn: _Connection) -> defer.Deferred[list[Row]]:
            d: defer.Deferred[Any] = conn.runQuery(sql, params)
            return d.addCallback(lambda rows: [tuple(r) for r in rows])

        return self._run(sql, work, timeout)

    def run_operation(
        self, sql: str, params: Params = None, *, timeout: float | None = None
    ) -> defer.Deferred[None]:
        """Run one statement; fire with None."""
        return self._run(sql, lambda conn: conn.runOperation(sql, params), timeout)

    def run_interaction(
        self, fn: Callable[..., Any], *args: Any, timeout: float | None = None, **kwargs: Any
    ) -> defer.Deferred[Any]:
        """Run ``fn(cursor, ...)`` in one transaction; fire with its result."""

        @defer.inlineCallbacks
        def transaction(conn: _Connection) -> Any:
            # Like txpostgres's runInteraction, minus its traceback per failed rollback:
            # a rollback on a dead connection fails, and the connection is dropped anyway.
            cursor = conn.cursor()
            yield cursor.execute("BEGIN")
            try:
                result = yield defer.maybeDeferred(fn, _Cursor(cursor, self), *args, **kwargs)
            except BaseException:
                if conn.usable():
                    try:
                        yield cursor.execute("ROLLBACK")
                    except Exception as e:
                        log.info("postgres: rollback failed: {e}", e=_first_line(e))
                        conn.broken = True
                raise
            yield cursor.execute("COMMIT")
            return result

        name = getattr(fn, "__qualname__", repr(fn))
        return self._run(f"interaction {name}", transaction, timeout)

    # -- running an operation ----------------------------------------------------

    def _run(
        self, what: str, work: Callable[[_Connection], defer.Deferred[T]], timeout: float | None
    ) -> defer.Deferred[T]:
        if not self.running:
            return defer.fail(DatabaseUnavailable(f"{self.url} is not running"))
        timeout = self.timeout if timeout is None else timeout
        result: defer.Deferred[T] = defer.Deferred()
        conn: _Connection | None = None
        acquiring = self._acquire()

        def expire() -> None:
            if conn is None:
                reason = f"no connection to {self.url} within {timeout}s"
            else:
                reason = f"{self.url}: {short(what)!r} took over {timeout}s; connection closed"
            if not result.called:
                result.errback(DatabaseTimeout(reason))
            # Then stop the work: what it reports now is dropped (the caller has its answer).
            if conn is None:
                acquiring.cancel()
            else:
                conn.abort()

        timer = self._reactor.callLater(timeout, expire)

        def got(c: _Connection) -> defer.Deferred[T]:
            nonlocal conn
            conn = c
            if result.called:  # the deadline passed while we waited
                self._release(c)
                return defer.fail(defer.CancelledError())
            return work(c).addBoth(done, c)

        def done(outcome: Any, c: _Connection) -> Any:
            if isinstance(outcome, Failure):
                outcome = Failure(self._translate(outcome, what))
                if outcome.check(DatabaseUnavailable) and not c.usable():
                    c.broken = True
            self._release(c)
            return outcome

        def finish(outcome: Any) -> None:
            if timer.active():
                timer.cancel()
            if result.called:
                return  # reported already (deadline); the outcome is dropped
            if isinstance(outcome, Failure):
                result.errback(outcome)
            else:
                result.callback(outcome)

        acquiring.addCallback(got).addBoth(finish)
        return result

    def _translate(self, failure: Failure, what: str) -> BaseException:
        """The mmo error for what went wrong (user errors pass through)."""
        e = failure.value
        if e is None or isinstance(e, DataError):
            return e or DatabaseError("unknown failure")
        where = f"(in {short(what)!r})"
        if isinstance(e, psycopg2.IntegrityError):
            return IntegrityError(f"{_first_line(e)} {where}")
        if isinstance(e, txpostgres.RollbackFailed):
            original = getattr(e, "originalFailure", None)
            inner = getattr(original, "value", None) or e
            return DatabaseUnavailable(f"{self.url}: {_first_line(inner)} {where}")
        if isinstance(e, (psycopg2.OperationalError, psycopg2.InterfaceError, *_LOST)):
            return DatabaseUnavailable(f"{self.url}: {_first_line(e)} {where}")
        if isinstance(e, psycopg2.Error):
            code = f"[{e.pgcode}] " if e.pgcode else ""
            return DatabaseError(f"{code}{_first_line(e)} {where}")
        if isinstance(e, defer.CancelledError):
            return DatabaseUnavailable(f"{self.url}: cancelled {where}")
        return e  # raised by an interaction's function: the caller's own error

    # -- the pool ----------------------------------------------------------------

    def _acquire(self) -> defer.Deferred[_Connection]:
        while self._idle:
            conn = self._idle.pop()
            if conn.usable():
                self._busy.add(conn)
                return defer.succeed(conn)
            self._discard(conn)
        if len(self._all) < self.max_size:
            refusal = self._refusal()
            if refusal is not None:
                return defer.fail(refusal)
            return self._open().addCallback(self._checkout)
        waiter: defer.Deferred[_Connection] = defer.Deferred(self._cancel_waiter)
        self._waiters.append(waiter)
        self.waits += 1
        return waiter

    def _cancel_waiter(self, waiter: defer.Deferred[_Connection]) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)

    def _checkout(self, conn: _Connection) -> _Connection:
        self._busy.add(conn)
        return conn

    def _refusal(self) -> DatabaseUnavailable | None:
        """The error to fail at once with while connecting is backing off, else None."""
        if self._reactor.seconds() < self._retry_at:
            return DatabaseUnavailable(f"{self.url} is unreachable: {self._last_error}")
        return None

    def _open(self) -> defer.Deferred[_Connection]:
        """Open one more connection; fires with it (not checked out) or DatabaseUnavailable."""
        conn = _Connection(self, self._reactor)
        self._all.add(conn)
        connecting: defer.Deferred[Any] = conn.connect(self.dsn)
        result: defer.Deferred[_Connection] = defer.Deferred()

        def expire() -> None:
            if not result.called:
                result.errback(
                    DatabaseUnavailable(f"{self.url}: no connection within {self.connect_timeout}s")
                )
            conn.abort()

        timer = self._reactor.callLater(self.connect_timeout, expire)

        def opened(_: Any) -> None:
            if timer.active():
                timer.cancel()
            self._backoff, self._retry_at, self._last_error = _FIRST_BACKOFF, 0.0, ""
            if not self.running:
                self._discard(conn)
            elif result.called:  # the caller gave up meanwhile: keep it for the next one
                self._checkin(conn)
            else:
                result.callback(conn)

        def failed(f: Failure) -> None:
            if timer.active():
                timer.cancel()
            self._all.discard(conn)
            conn.abort()
            message = _first_line(f.value or Exception("connection failed"))
            if not self._last_error:
                log.warn("postgres: cannot connect to {url}: {e}", url=self.url, e=message)
            self._last_error = message
            self._retry_at = self._reactor.seconds() + self._backoff
            self._backoff = min(self._backoff * 2, _MAX_BACKOFF)
            if not result.called:
                result.errback(DatabaseUnavailable(f"cannot connect to {self.url}: {message}"))
            if self._waiters and self.running:  # tell them now, not at their deadline
                self._reactor.callLater(0, self._serve_waiters)

        connecting.addCallbacks(opened, failed)
        return result

    def _release(self, conn: _Connection) -> None:
        """Give a connection back after an operation (closing it if broken)."""
        self._busy.discard(conn)
        if not conn.usable() or not self.running:
            self._discard(conn)
        elif self._waiters:
            self._waiters.popleft().callback(conn)
            self._busy.add(conn)
        else:
            self._idle.append(conn)
        if not self._busy:
            drained, self._drained = self._drained, []
            for d in drained:
                d.callback(None)

    def _discard(self, conn: _Connection) -> None:
        self._forget(conn)
        conn.abort()

    def _forget(self, conn: _Connection) -> None:
        """A connection is gone: drop it, and open another for whoever waits."""
        if conn not in self._all:
            return
        self._all.discard(conn)
        if conn in self._idle:
            self._idle.remove(conn)
        self._busy.discard(conn)
        if self.running:
            self._reactor.callLater(0, self._serve_waiters)
            self._reactor.callLater(0, self._fill)

    def _serve_waiters(self) -> None:
        while self._waiters and len(self._all) < self.max_size and self.running:
            waiter = self._waiters.popleft()
            refusal = self._refusal()
            if refusal is not None:
                waiter.errback(refusal)
                continue
            self._open().addCallbacks(self._handed(waiter), self._refused(waiter))

    def _handed(self, waiter: defer.Deferred[_Connection]) -> Callable[[_Connection], None]:
        def hand(conn: _Connection) -> None:
            self._busy.add(conn)
            if waiter.called:  # its deadline passed meanwhile
                self._release(conn)
            else:
                waiter.callback(conn)

        return hand

    def _refused(self, waiter: defer.Deferred[_Connection]) -> Callable[[Failure], None]:
        def refuse(failure: Failure) -> None:
            if not waiter.called:
                waiter.errback(failure)

        return refuse

    def _fill(self) -> None:
        """Open connections up to ``min_size`` (retrying in the background)."""
        if self._filling or not self.running or len(self._all) >= self.min_size:
            return
        delay = self._retry_at - self._reactor.seconds()
        if delay > 0:
            self._filling = True
            self._fill_call = self._reactor.callLater(delay, self._refill)
            return
        self._filling = True
        missing = self.min_size - len(self._all)
        opening = [self._open().addCallback(self._checkin) for _ in range(missing)]
        done = defer.DeferredList(opening, consumeErrors=True)
        done.addCallback(lambda _: self._refill())

    def _refill(self) -> None:
        self._filling = False
        self._fill()

    def _checkin(self, conn: _Connection) -> None:
        self._busy.add(conn)
        self._release(conn)
