"""``PlayerService`` (service ``player``): a player's state, loaded and saved with write-behind.

``save`` is acknowledged as soon as the new state is in this process's memory;
it reaches the database (table ``players``, migration ``0002_players.sql``)
within ``flush_interval`` seconds (1 s; the setting ``flush-interval``), when
the player ``leave``s, and when the worker stops gracefully: nothing
acknowledged is lost on a normal stop. A flush that fails (the database is
down) is retried at the next interval; the state stays in memory meanwhile.
A ``kill -9`` loses at most the last ``flush_interval`` of saves.

A player's state must be served by one instance at a time (this process is its
cache): run one ``player`` worker, or route by player (e.g. hash by user at the
broker). Each save bumps the player's ``version``; a write never replaces a
newer version in the database.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from mmo.config import ConfigError
from mmo.data import Cursor, Database, DataError
from mmo.errors import BadRequest, MmoError
from mmo.logic import Context, ServiceHandler, idempotent
from mmo.types import InlineCallbacks
from mmo.wire.gen.mmo.ttypes import ErrorCode

__all__ = ["PlayerService", "PlayerSettings", "StaleState"]

log = Logger()

_UPSERT = (
    "INSERT INTO players (player_id, state, version, updated_at) VALUES (%s, %s, %s, %s) "
    "ON CONFLICT (player_id) DO UPDATE SET state = excluded.state, "
    "version = excluded.version, updated_at = excluded.updated_at "
    "WHERE players.version < excluded.version"
)


@dataclass(frozen=True)
class PlayerSettings:
    """Settings of the player service (``[worker.settings]`` or ``--set NAME=VALUE``).

    Attributes:
        flush_interval: seconds between write-behind flushes (1).
    """

    flush_interval: float = 1.0

    def validate(self) -> None:
        """Check the values."""
        if not 0 < self.flush_interval <= 3600:
            raise ConfigError("flush-interval", "must be between 0 and 3600 seconds")


class StaleState(MmoError):
    """``save(..., version=N)`` was given a version other than the player's current one."""

    code = ErrorCode.REMOTE


@dataclass
class _Player:
    state: dict[str, Any]
    version: int
    flushed: int  # the version known to be in the database
    encoded: str = field(default="", repr=False)

    @property
    def dirty(self) -> bool:
        return self.version > self.flushed


def _check_id(player_id: Any) -> str:
    if not isinstance(player_id, str) or not 1 <= len(player_id) <= 128:
        raise BadRequest("player_id must be a string of 1-128 characters")
    return player_id


def _encode(state: Any) -> str:
    if not isinstance(state, dict):
        raise BadRequest("a player's state is a map")
    try:
        return json.dumps(state, separators=(",", ":"), allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise BadRequest(f"a player's state must be JSON-like: {e}") from None


@defer.inlineCallbacks
def _write(cursor: Cursor, rows: list[tuple[str, str, int, int]]) -> InlineCallbacks[None]:
    for row in rows:
        yield cursor.execute(_UPSERT, row)


class PlayerService(ServiceHandler):
    """The ``player`` service: ``load``, ``save``, ``leave``, ``flush``, ``stats``.

    Attributes:
        flush_interval: seconds between write-behind flushes (the setting).
        stop_timeout: how long a graceful stop keeps retrying the last flush.
        players: the players held in memory, by id.
    """

    default_service = "player"
    Settings = PlayerSettings
    settings: PlayerSettings
    stop_timeout: float = 10.0

    def __init__(self, runtime: Any) -> None:
        super().__init__(runtime)
        self.flush_interval = self.settings.flush_interval
        self.players: dict[str, _Player] = {}
        self._dirty: set[str] = set()  # ids of the players with unwritten saves
        self._loading: dict[str, list[defer.Deferred[_Player]]] = {}
        self._flush_lock = defer.DeferredLock()
        self._loop: task.LoopingCall | None = None
        self._failing = False
        self.counters = {"flushes": 0, "rows_written": 0, "flush_failures": 0, "loads": 0}

    @property
    def database(self) -> Database:
        """The database (a worker without ``--database`` cannot run this service)."""
        if self.db is None:
            raise ConfigError("database", "the player service needs a database (--database)")
        return self.db

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        """Check there is a database and start the flush loop."""
        _ = self.database
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = self.clock  # type: ignore[assignment]
        self._loop.start(self.flush_interval, now=False)

    @defer.inlineCallbacks
    def stop(self) -> InlineCallbacks[None]:
        """Stop the loop and flush everything, retrying for up to ``stop_timeout``."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        deadline = self.clock.seconds() + self.stop_timeout
        while self._dirty:
            try:
                yield self.flush()
            except DataError as e:
                if self.clock.seconds() >= deadline:
                    lost = sorted(self._dirty)
                    log.error(
                        "player: could not flush {n} players before stopping ({e}): {ids}",
                        n=len(lost),
                        e=e,
                        ids=lost,
                    )
                    return
                yield task.deferLater(self.clock, 0.5, lambda: None)  # type: ignore[arg-type]
        log.info("player: everything flushed ({n} players in memory)", n=len(self.players))

    # -- the service ---------------------------------------------------------------

    @idempotent
    @defer.inlineCallbacks
    def on_load(self, ctx: Context, player_id: str) -> InlineCallbacks[dict[str, Any]]:
        """A player's state: ``{"player_id", "state", "version"}`` (version 0, ``{}``: new)."""
        player = yield self._get(_check_id(player_id))
        return {"player_id": player_id, "state": player.state, "version": player.version}

    @defer.inlineCallbacks
    def on_save(
        self, ctx: Context, player_id: str, state: dict[str, Any], version: int | None = None
    ) -> InlineCallbacks[dict[str, Any]]:
        """Replace a player's state; acknowledged once in memory (written behind).

        Args:
            version: if given, the version the caller last saw: a save over a newer
                one fails with StaleState.

        Returns:
            ``{"version": n}``, the new version.
        """
        encoded = _encode(state)
        player = yield self._get(_check_id(player_id))
        if version is not None and version != player.version:
            raise StaleState(f"player {player_id!r} is at version {player.version}, not {version}")
        player.state = json.loads(encoded)  # a copy: later changes by the caller do not leak
        player.encoded = encoded
        player.version += 1
        self._dirty.add(player_id)
        return {"version": player.version}

    @defer.inlineCallbacks
    def on_leave(self, ctx: Context, player_id: str) -> InlineCallbacks[dict[str, Any]]:
        """Write a player's state now and drop it from memory; ``{"version": n}``.

        Raises:
            DatabaseUnavailable: the write failed; the state stays in memory and is
                retried by the flush loop.
        """
        _check_id(player_id)
        player = self.players.get(player_id)
        if player is None:
            return {"version": None}
        yield self.flush({player_id})
        if not player.dirty and self.players.get(player_id) is player:
            del self.players[player_id]
        return {"version": player.version}

    def on_flush(self, ctx: Context) -> defer.Deferred[dict[str, int]]:
        """Write every unsaved state now; ``{"written": n}``."""
        return self.flush().addCallback(lambda n: {"written": n})

    @idempotent
    def on_stats(self, ctx: Context) -> dict[str, Any]:
        """Players in memory, unsaved ones, and the flush counters."""
        return {"players": len(self.players), "dirty": len(self._dirty), **self.counters}

    # -- internals -------------------------------------------------------------------

    def _get(self, player_id: str) -> defer.Deferred[_Player]:
        """The player in memory, loading it (once, whoever asks meanwhile) if needed."""
        player = self.players.get(player_id)
        if player is not None:
            return defer.succeed(player)
        waiter: defer.Deferred[_Player] = defer.Deferred()
        waiters = self._loading.get(player_id)
        if waiters is not None:
            waiters.append(waiter)
        else:
            self._loading[player_id] = [waiter]
            self._load(player_id).addBoth(self._loaded, player_id)
        return waiter

    def _loaded(self, outcome: _Player | Failure, player_id: str) -> None:
        for waiter in self._loading.pop(player_id):
            if isinstance(outcome, Failure):
                waiter.errback(outcome)
            else:
                waiter.callback(outcome)

    @defer.inlineCallbacks
    def _load(self, player_id: str) -> InlineCallbacks[_Player]:
        rows = yield self.database.run_query(
            "SELECT state, version FROM players WHERE player_id = %s", (player_id,)
        )
        self.counters["loads"] += 1
        if rows:
            text, version = str(rows[0][0]), int(rows[0][1])
            player = _Player(json.loads(text), version, version, text)
        else:
            player = _Player({}, 0, 0, "{}")
        self.players[player_id] = player
        return player

    def flush(self, only: set[str] | None = None) -> defer.Deferred[int]:
        """Write the unsaved states (of ``only`` these players); fire with how many."""
        return self._flush_lock.run(self._flush, only)

    @defer.inlineCallbacks
    def _flush(self, only: set[str] | None) -> InlineCallbacks[int]:
        now = int(time.time())
        # Only the players saved since their last write: a flush costs what changed.
        ids = self._dirty if only is None else self._dirty & only
        batch = [(pid, p, p.version) for pid in ids if (p := self.players[pid]).dirty]
        if not batch:
            return 0
        rows = [(pid, p.encoded, version, now) for pid, p, version in batch]
        try:
            if len(rows) == 1:  # one statement is its own transaction: one round trip
                yield self.database.run_operation(_UPSERT, rows[0])
            else:
                yield self.database.run_interaction(_write, rows)
        except DataError:
            self.counters["flush_failures"] += 1
            raise
        for pid, player, version in batch:
            player.flushed = max(player.flushed, version)
            if not player.dirty:
                self._dirty.discard(pid)
        self.counters["flushes"] += 1
        self.counters["rows_written"] += len(rows)
        return len(rows)

    @defer.inlineCallbacks
    def _tick(self) -> InlineCallbacks[None]:
        try:
            written = yield self.flush()
        except DataError as e:
            if not self._failing:
                log.warn("player: flush failed, will retry: {e}", e=e)
            self._failing = True
            return
        if self._failing:
            log.info("player: flushing again ({n} written)", n=written)
        self._failing = False
