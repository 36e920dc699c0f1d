"""``LogCollector``: the service (``logs``) that takes every process's log events.

Every process of the cluster ships its log records here (:mod:`mmo.ops.shipper`:
one-way ``logs.ship(events=[json, ...])``); the collector numbers them in the order it
takes them (``seq``, rising by one), keeps the latest :attr:`CollectorSettings.ring` in
memory for :meth:`LogCollector.on_query` (``mmo logs``, ``mmo trace``) and appends each,
one JSON object per line, to ``DIR/mmo.log``.

The file is a ``twisted.python.logfile.LogFile``: what twistd writes its own
``--logfile`` with, kept by Twisted for years, rotating by size (``mmo.log`` becomes
``mmo.log.1``, the older ones move up one, and past ``keep`` they are deleted). It is
written unbuffered, so what the collector took is on disk even if it is killed.

``ship`` is for cluster members only (its methods are not open to players), and so is
``query``. A line that is not a JSON object is counted (``mmo_logs_bad_events_total``)
and skipped.
"""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice
from typing import Any

from twisted.logger import Logger
from twisted.python.logfile import LogFile

from mmo.config import ConfigError
from mmo.errors import BadRequest
from mmo.logic import Context, ServiceHandler, idempotent
from mmo.telemetry.logs import iso_time
from mmo.telemetry.metrics import Metric, counter, gauge

__all__ = [
    "LEVELS",
    "CollectorSettings",
    "LogCollector",
    "epoch_of",
    "level_rank",
    "since_time",
]

log = Logger()

#: Log levels, least severe first (``twisted.logger``'s names).
LEVELS = ("debug", "info", "warn", "error", "critical")
_RANK = {name: rank for rank, name in enumerate(LEVELS)}
_RANK["warning"] = _RANK["warn"]
#: The most events one query returns.
MAX_LIMIT = 10_000


def level_rank(level: str) -> int:
    """The severity of ``level`` (``debug`` 0 ... ``critical`` 4; ``warning`` is ``warn``).

    Raises:
        ValueError: not a level.
    """
    rank = _RANK.get(level.lower())
    if rank is None:
        raise ValueError(f"unknown level {level!r}: use one of {', '.join(LEVELS)}")
    return rank


def epoch_of(text: str) -> float:
    """Seconds since the epoch of an ISO 8601 time (``2024-05-01T12:00:00.5Z``; without
    a zone it is UTC).

    Raises:
        ValueError: not an ISO 8601 time.
    """
    when = datetime.fromisoformat(text.strip())
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def since_time(since: Any) -> str:
    """The record time (ISO 8601 UTC, to the microsecond, as records have it) of ``since``:
    seconds since the epoch, or an ISO 8601 time.

    Raises:
        ValueError: neither.
    """
    if isinstance(since, bool):
        raise ValueError(f"expected a time, got {since!r}")
    if isinstance(since, str):
        try:
            seconds = float(since)
        except ValueError:
            try:
                seconds = epoch_of(since)
            except ValueError:
                raise ValueError(
                    f"expected a time (epoch seconds or ISO 8601), got {since!r}"
                ) from None
    elif isinstance(since, int | float):
        seconds = float(since)
    else:
        raise ValueError(f"expected a time, got {since!r}")
    if not 0 <= seconds < 253402300800:  # year 10000
        raise ValueError(f"time out of range: {since!r}")
    return iso_time(seconds)


@dataclass(frozen=True)
class CollectorSettings:
    """Where and how much the collector keeps (``twistd mmo-logs`` fills these from its
    options; under ``mmo-worker``, ``--set dir=...``).

    Attributes:
        dir: the directory of ``mmo.log`` and its rotated files.
        ring: events kept in memory for queries (the oldest go first).
        rotate_bytes: ``mmo.log`` is rotated once it is this long.
        keep: rotated files kept (``mmo.log.1`` ... ``mmo.log.N``).
    """

    dir: str = "var/logs"
    ring: int = 100_000
    rotate_bytes: int = 10 * 1024 * 1024
    keep: int = 10

    def validate(self) -> None:
        """Check the values."""
        if not self.dir:
            raise ConfigError("dir", "must name a directory")
        if not 1 <= self.ring <= 10_000_000:
            raise ConfigError("ring", "must be between 1 and 10000000")
        if self.rotate_bytes < 1024:
            raise ConfigError("rotate-bytes", "must be at least 1024")
        if not 1 <= self.keep <= 1000:
            raise ConfigError("keep", "must be between 1 and 1000")


class LogCollector(ServiceHandler):
    """Takes shipped log events, keeps them in memory and on disk, answers queries.

    Attributes:
        ring: the latest events, oldest first, each with its ``seq``.
        seq: the number of the latest event taken (0: none yet).
        bad: lines refused (not a JSON object).
        write_errors: batches that could not be written to disk (kept in memory all
            the same).
        logfile: ``DIR/mmo.log`` while the service runs.
    """

    default_service = "logs"
    Settings = CollectorSettings

    #: Lines of JSON written to the file at once (one system call per chunk).
    chunk_bytes = 64 * 1024
    #: Seconds between two warnings that the file cannot be written.
    warn_interval = 60.0

    def __init__(self, runtime: Any) -> None:
        super().__init__(runtime)
        self.ring: deque[dict[str, Any]] = deque(maxlen=self.settings.ring)
        self.seq = 0
        self.taken = 0
        self.bad = 0
        self.write_errors = 0
        self.logfile: LogFile | None = None
        self._warned_at = float("-inf")

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        """Open ``DIR/mmo.log`` (creating the directory)."""
        settings = self.settings
        os.makedirs(settings.dir, exist_ok=True)
        self.logfile = LogFile(
            "mmo.log",
            settings.dir,
            rotateLength=settings.rotate_bytes,
            maxRotatedFiles=settings.keep,
        )

    def stop(self) -> None:
        """Close the file."""
        if self.logfile is not None:
            logfile, self.logfile = self.logfile, None
            logfile.close()

    # -- methods -----------------------------------------------------------------

    def on_ship(self, ctx: Context, events: list[Any]) -> None:
        """Take a batch of log records (JSON objects, one per string), in order."""
        if not isinstance(events, list):
            raise BadRequest("events must be a list of JSON strings")
        self.take(events)

    @idempotent
    def on_query(
        self,
        ctx: Context,
        role: str | None = None,
        instance: str | None = None,
        level: str | None = None,
        trace: str | None = None,
        since: Any = None,
        after: int = 0,
        limit: int = 1000,
    ) -> dict[str, Any]:
        """The events kept that match, oldest first, and ``last``: the ``seq`` up to which
        the answer covers (ask again with ``after=last`` for what comes next).

        Args:
            role, instance: of the process that logged it.
            level: this level or a more severe one (``debug`` < ``info`` < ``warn`` <
                ``error`` < ``critical``).
            trace: the trace id of the request it was logged for.
            since: logged at or after this time (seconds since the epoch, or ISO 8601).
            after: only events with a greater ``seq``; then the first ``limit`` matches
                are returned (``last`` is the last one's seq when there were more).
                Without it, the latest ``limit`` matches.
            limit: the most events returned (at most 10000).
        """
        try:
            return self.query(
                role=role,
                instance=instance,
                level=level,
                trace=trace,
                since=since,
                after=after,
                limit=limit,
            )
        except (TypeError, ValueError) as e:
            raise BadRequest(f"logs.query: {e}") from e

    # -- the store ---------------------------------------------------------------

    def take(self, lines: Iterable[Any]) -> int:
        """Number, keep and write each JSON line; return how many were taken."""
        written: list[bytes] = []
        ring = self.ring
        taken = 0
        for line in lines:
            event = _parse(line)
            if event is None:
                self.bad += 1
                continue
            changed = "\n" in line or "seq" in event
            if not isinstance(event.get("time"), str):
                event["time"] = iso_time(self.clock.seconds())
                changed = True
            if changed:
                # Written as the collector keeps it: one line, with a time, without a seq.
                event.pop("seq", None)
                line = json.dumps(event, separators=(",", ":"))
            self.seq += 1
            event["seq"] = self.seq
            ring.append(event)
            written.append(line.encode("utf-8") + b"\n")
            taken += 1
        self.taken += taken
        if written:
            self._write(written)
        return taken

    def _write(self, lines: list[bytes]) -> None:
        """Append ``lines`` to the file in chunks, so that it rotates within a line of
        ``rotate_bytes``."""
        logfile = self.logfile
        if logfile is None:
            return
        limit = self.settings.rotate_bytes
        try:
            chunk: list[bytes] = []
            size = 0
            room = limit - logfile.size
            for line in lines:
                chunk.append(line)
                size += len(line)
                if size >= room or size >= self.chunk_bytes:
                    logfile.write(b"".join(chunk))
                    chunk, size = [], 0
                    room = limit - logfile.size if logfile.size < limit else 0
            if chunk:
                logfile.write(b"".join(chunk))
        except OSError as e:
            self.write_errors += 1
            now = self.clock.seconds()
            if now - self._warned_at >= self.warn_interval:
                self._warned_at = now
                log.error(
                    "logs: cannot write {path}: {e} (events are kept in memory; "
                    "{n} batches not written so far)",
                    path=logfile.path,
                    e=e,
                    n=self.write_errors,
                )

    def query(
        self,
        *,
        role: str | None = None,
        instance: str | None = None,
        level: str | None = None,
        trace: str | None = None,
        since: Any = None,
        after: int = 0,
        limit: int = 1000,
    ) -> dict[str, Any]:
        """What :meth:`on_query` answers (a ValueError or TypeError for a bad argument)."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValueError(f"limit must be a count, got {limit!r}")
        if isinstance(after, bool) or not isinstance(after, int) or after < 0:
            raise ValueError(f"after must be a seq, got {after!r}")
        limit = min(limit, MAX_LIMIT)
        least = level_rank(level) if level else None
        start = since_time(since) if since is not None else None
        ring = self.ring

        def matches(event: dict[str, Any]) -> bool:
            if role is not None and event.get("role") != role:
                return False
            if instance is not None and event.get("instance") != instance:
                return False
            if trace is not None and event.get("trace_id") != trace:
                return False
            if least is not None and _RANK.get(str(event.get("level")), 1) < least:
                return False
            return start is None or str(event.get("time", "")) >= start

        if after:
            first = ring[0]["seq"] if ring else self.seq + 1
            skip = max(0, after - first + 1)
            found: list[dict[str, Any]] = []
            last = self.seq
            for event in islice(ring, skip, None):
                if matches(event):
                    if len(found) >= limit:
                        # More than asked for: the next query goes on from here.
                        last = found[-1]["seq"] if found else after
                        break
                    found.append(event)
            return {"events": found, "last": last}
        latest: deque[dict[str, Any]] = deque(maxlen=limit)
        for event in ring:
            if matches(event):
                latest.append(event)
        return {"events": list(latest), "last": self.seq}

    # -- metrics -----------------------------------------------------------------

    def metrics(self) -> Iterator[Metric]:
        """Events taken and refused, the ring and the file (a metrics source)."""
        yield counter("mmo_logs_events", "Log events the collector took.", values=self.taken)
        yield counter(
            "mmo_logs_bad_events",
            "Shipped lines the collector refused (not a JSON object).",
            values=self.bad,
        )
        yield counter(
            "mmo_logs_write_errors",
            "Batches of log events the collector could not write to its file.",
            values=self.write_errors,
        )
        yield gauge(
            "mmo_logs_ring_events",
            "Log events the collector keeps in memory for queries.",
            values=len(self.ring),
        )


def _parse(line: Any) -> dict[str, Any] | None:
    if not isinstance(line, str):
        return None
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) else None
