"""SQLite through ``twisted.enterprise.adbapi``: the embedded database of one machine.

One connection (``cp_max=1``) in one thread serves every operation, one after
another (a ``DeferredLock`` keeps a transaction's statements together), so an
interaction's function may be asynchronous like on PostgreSQL. Several processes
may share one file: it is opened in WAL mode with a busy timeout, and
transactions begin with ``BEGIN IMMEDIATE`` so that writers queue instead of
failing half-way.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from twisted.application.service import Service
from twisted.enterprise import adbapi
from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.failure import Failure
from typing_extensions import override

from mmo.data.base import Params, Row
from mmo.data.errors import (
    DatabaseError,
    DatabaseTimeout,
    DatabaseUnavailable,
    DataError,
    IntegrityError,
)
from mmo.data.sql import short, to_qmark

__all__ = ["SQLiteDatabase", "StepCursor", "run_statement", "run_transaction"]

log = Logger()
T = TypeVar("T")

#: Runs one statement and fires with ``(rows, rowcount)``.
Step = Callable[[str, Params], defer.Deferred[tuple[list[Row], int]]]

# Errors of an OperationalError that mean "try again later" rather than "bad SQL".
_TRANSIENT = ("locked", "busy", "interrupted", "unable to open", "disk i/o", "readonly")


def configure(conn: sqlite3.Connection, path: str, busy_timeout: float) -> None:
    """Set up a new connection: WAL journal (files only), foreign keys, busy timeout."""
    if path != ":memory:":
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")


def run_statement(conn: sqlite3.Connection, sql: str, params: Params) -> tuple[list[Row], int]:
    """Run one statement on ``conn`` (``%s`` placeholders); its rows and rowcount.

    Raises:
        IntegrityError: a constraint was violated.
        DatabaseUnavailable: the file is locked, busy, unreadable, or the statement
            was interrupted.
        DatabaseError: any other error (bad SQL...).
    """
    try:
        cursor = conn.cursor()
        if params is None:
            cursor.execute(sql)
        else:
            cursor.execute(to_qmark(sql), tuple(params))
        rows = cursor.fetchall()
        return rows, cursor.rowcount
    except sqlite3.IntegrityError as e:
        raise IntegrityError(f"{e} (in {short(sql)!r})") from None
    except sqlite3.OperationalError as e:
        if any(word in str(e).lower() for word in _TRANSIENT):
            raise DatabaseUnavailable(f"SQLite: {e} (in {short(sql)!r})") from None
        raise DatabaseError(f"SQLite: {e} (in {short(sql)!r})") from None
    except (sqlite3.Error, ValueError, TypeError, OverflowError) as e:
        # ValueError/TypeError: a parameter of a type SQLite cannot bind, or a bad count.
        raise DatabaseError(f"SQLite: {e} (in {short(sql)!r})") from None


class StepCursor:
    """An asynchronous cursor over a step function (implements ``mmo.data.Cursor``)."""

    def __init__(self, step: Step) -> None:
        self._step = step
        self._rows: list[Row] = []
        self._pos = 0
        self._rowcount = -1

    def execute(self, sql: str, params: Params = None) -> defer.Deferred[Any]:
        """Run one statement; fires with this cursor."""

        def ran(result: tuple[list[Row], int]) -> StepCursor:
            self._rows, self._rowcount = result
            self._pos = 0
            return self

        return self._step(sql, params).addCallback(ran)

    def fetchall(self) -> list[Row]:
        """The remaining rows of the last statement."""
        rows = self._rows[self._pos :]
        self._pos = len(self._rows)
        return rows

    def fetchone(self) -> Row | None:
        """The next row of the last statement, or None."""
        if self._pos >= len(self._rows):
            return None
        self._pos += 1
        return self._rows[self._pos - 1]

    @property
    def rowcount(self) -> int:
        """Rows the last statement changed (-1 for a query, as sqlite3 says)."""
        return self._rowcount


@defer.inlineCallbacks
def run_transaction(
    step: Step,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    aborted: Callable[[], bool] = lambda: False,
) -> Any:
    """Run ``fn(cursor, *args, **kwargs)`` between ``BEGIN IMMEDIATE`` and ``COMMIT``.

    Rolls back when ``fn`` fails, or when ``aborted()`` says the caller gave up.
    """
    yield step("BEGIN IMMEDIATE", None)
    try:
        result = yield defer.maybeDeferred(fn, StepCursor(step), *args, **kwargs)
        if aborted():
            raise DatabaseTimeout("the transaction passed its deadline; rolled back")
    except BaseException:
        try:
            yield step("ROLLBACK", None)
        except DataError as e:
            log.warn("sqlite: rollback failed: {e}", e=e)
        raise
    yield step("COMMIT", None)
    return result


class SQLiteDatabase(Service):
    """A SQLite file (or ``:memory:``) behind the :class:`mmo.data.Database` interface.

    Args:
        path: the database file (its directory is created), or ``":memory:"``.
        timeout: default deadline of an operation, in seconds (waiting for the
            connection included); on expiry the running statement is interrupted.
        busy_timeout: how long a statement waits for another process's lock.
        reactor: the reactor (default: the global one).
    """

    dialect = "sqlite"

    def __init__(
        self,
        path: str,
        *,
        timeout: float = 10.0,
        busy_timeout: float = 5.0,
        reactor: Any = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.path = path
        self.timeout = timeout
        self.busy_timeout = busy_timeout
        self._reactor = reactor
        self._pool: adbapi.ConnectionPool | None = None
        self._raw: sqlite3.Connection | None = None
        self._lock = defer.DeferredLock()

    def __repr__(self) -> str:
        return f"<SQLiteDatabase {self.path}>"

    # -- lifecycle -------------------------------------------------------------

    @override
    def startService(self) -> None:
        """Create the file's directory and the one-connection pool."""
        super().startService()
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._pool = adbapi.ConnectionPool(
            "sqlite3",
            self.path,
            check_same_thread=False,
            isolation_level=None,  # autocommit; transactions are explicit
            timeout=self.busy_timeout,
            cp_min=1,
            cp_max=1,
            cp_openfun=self._opened,
            cp_noisy=False,
            cp_reactor=self._reactor,
        )

    def _opened(self, conn: sqlite3.Connection) -> None:
        configure(conn, self.path, self.busy_timeout)
        self._raw = conn

    @override
    @defer.inlineCallbacks
    def stopService(self) -> Any:
        """Wait (within the deadline) for the operation in progress, then close."""
        super().stopService()
        pool, self._pool = self._pool, None
        if pool is None:
            return
        waiting = self._lock.acquire()
        waiting.addTimeout(self.timeout, self._reactor)
        try:
            yield waiting
        except defer.TimeoutError:
            log.warn("sqlite: closing {path} with an operation still running", path=self.path)
        else:
            self._lock.release()
        pool.close()
        self._raw = None

    # -- the Database interface ------------------------------------------------

    def run_query(
        self, sql: str, params: Params = None, *, timeout: float | None = None
    ) -> defer.Deferred[list[Row]]:
        """Run one statement; fire with its rows."""
        return self._run(
            sql, lambda aborted: self._step(sql, params).addCallback(lambda r: r[0]), timeout
        )

    def run_operation(
        self, sql: str, params: Params = None, *, timeout: float | None = None
    ) -> defer.Deferred[None]:
        """Run one statement; fire with None."""
        return self._run(
            sql, lambda aborted: self._step(sql, params).addCallback(lambda _: None), timeout
        )

    def run_interaction(
        self, fn: Callable[..., Any], *args: Any, timeout: float | None = None, **kwargs: Any
    ) -> defer.Deferred[Any]:
        """Run ``fn(cursor, ...)`` in one transaction; fire with its result."""

        def work(aborted: Callable[[], bool]) -> defer.Deferred[Any]:
            def step(sql: str, params: Params) -> defer.Deferred[tuple[list[Row], int]]:
                if aborted() and sql != "ROLLBACK":
                    return defer.fail(DatabaseTimeout("the transaction passed its deadline"))
                return self._step(sql, params)

            return run_transaction(step, fn, args, kwargs, aborted)

        name = getattr(fn, "__qualname__", repr(fn))
        return self._run(f"interaction {name}", work, timeout)

    # -- internals ---------------------------------------------------------------

    def _step(self, sql: str, params: Params) -> defer.Deferred[tuple[list[Row], int]]:
        pool = self._pool
        if pool is None:
            return defer.fail(DatabaseUnavailable(f"SQLite {self.path} is closed"))

        def in_thread() -> tuple[list[Row], int]:
            return run_statement(pool.connect(), sql, params)

        return threads.deferToThreadPool(self._reactor, pool.threadpool, in_thread)

    def _run(
        self,
        what: str,
        work: Callable[[Callable[[], bool]], defer.Deferred[T]],
        timeout: float | None,
    ) -> defer.Deferred[T]:
        if self._pool is None:
            return defer.fail(DatabaseUnavailable(f"SQLite {self.path} is not open"))
        timeout = self.timeout if timeout is None else timeout
        result: defer.Deferred[T] = defer.Deferred()
        timed_out = False
        holding = False
        locked = self._lock.acquire()

        def expire() -> None:
            nonlocal timed_out
            timed_out = True
            if holding and self._raw is not None:
                self._raw.interrupt()  # thread-safe: stops the statement running now
            if not result.called:
                result.errback(
                    DatabaseTimeout(f"SQLite {self.path}: {short(what)!r} took over {timeout}s")
                )
            if not locked.called:
                locked.cancel()

        timer = self._reactor.callLater(timeout, expire)

        def run(_: Any) -> defer.Deferred[T]:
            nonlocal holding
            holding = True

            def release(outcome: Any) -> Any:
                self._lock.release()
                return outcome

            return work(lambda: timed_out).addBoth(release)

        def finish(outcome: Any) -> None:
            if timer.active():
                timer.cancel()
            if result.called:
                if isinstance(outcome, Failure) and not outcome.check(
                    defer.CancelledError, DataError
                ):
                    log.failure("sqlite: after the deadline", outcome)
                return
            if isinstance(outcome, Failure):
                result.errback(outcome)  # a data error, or what the interaction raised
            else:
                result.callback(outcome)

        locked.addCallback(run).addBoth(finish)
        return result
