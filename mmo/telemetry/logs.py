"""Structured log events: one JSON object per line, with the process's role and instance
and the trace id of the request being served.

:func:`record` turns a ``twisted.logger`` event into the flat record every mmo tool reads
(``time``, ``level``, ``role``, ``instance``, ``namespace``, ``message``, ``trace_id`` when
there is one, ``traceback`` for a failure, then the event's own fields);
:func:`json_observer` writes records with ``twisted.logger``'s JSON support
(``jsonFileLogObserver``, one record per line), and is what ``--log-format json`` installs
in twistd (:func:`twistd_json_logger`).

:data:`LEVEL` is the process's log level (``log-level``): the observer twistd logs to is
wrapped in a filter asking it (:func:`filtered`, :func:`twistd_logger`), as is what the
log shipper ships, so that a reload can change it while the process runs.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import IO, Any

from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    LegacyLogObserverWrapper,
    LogLevel,
    PredicateResult,
    eventAsJSON,
    formatEvent,
)
from twisted.python.failure import Failure
from zope.interface import implementer, provider

from mmo.telemetry.trace import CURRENT

__all__ = [
    "LEVEL",
    "LEVELS",
    "PROCESS",
    "Identity",
    "LevelFilter",
    "filtered",
    "iso_time",
    "json_observer",
    "record",
    "twistd_json_logger",
    "twistd_logger",
]

_PLAIN = (str, int, float, bool, type(None))


@dataclass
class Identity:
    """Who is logging: set by the role when it knows (the instance id, once chosen)."""

    role: str = ""
    instance: str = ""


#: This process's identity, as its log records show it.
PROCESS = Identity()


#: The ``log-level`` settings, least severe first.
LEVELS: dict[str, LogLevel] = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
}
_ORDER = {level: i for i, level in enumerate(LogLevel.iterconstants())}


@implementer(ILogFilterPredicate)
class LevelFilter:
    """Lets through the events at least as severe as :attr:`level` (an event without a
    level, such as a legacy one not yet converted, goes through).

    Attributes:
        level: the least severe level let through; set it to change what is logged.
    """

    def __init__(self, level: LogLevel = LogLevel.debug) -> None:
        self.level = level

    @property
    def name(self) -> str:
        """The level's ``log-level`` name."""
        return self.level.name

    def set(self, name: str) -> None:
        """Set the level by its ``log-level`` name (``debug``, ``info``, ``warn``, ``error``)."""
        self.level = LEVELS[name]

    def __call__(self, event: dict[str, Any]) -> Any:
        """``PredicateResult.no`` for an event below the level, else ``maybe``."""
        level = event.get("log_level")
        if level in _ORDER and _ORDER[level] < _ORDER[self.level]:
            return PredicateResult.no
        return PredicateResult.maybe


#: This process's log level (``log-level``), asked by :func:`filtered` observers.
LEVEL = LevelFilter()


def filtered(observer: Any) -> ILogObserver:
    """``observer`` (a ``twisted.logger`` observer, or a legacy one) behind :data:`LEVEL`."""
    if not ILogObserver.providedBy(observer):
        observer = LegacyLogObserverWrapper(observer)
    return FilteringLogObserver(observer, [LEVEL])


def iso_time(seconds: float) -> str:
    """``seconds`` since the epoch as ISO 8601 in UTC, to the microsecond: records sort as
    strings in time order."""
    whole = int(seconds)
    micros = round((seconds - whole) * 1e6)
    if micros == 1_000_000:
        whole, micros = whole + 1, 0
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{micros:06d}Z"


def record(event: dict[str, Any]) -> dict[str, Any]:
    """The flat, JSON-ready record of a log event (read in the context it was emitted in,
    for its trace id)."""
    level = event.get("log_level")
    out: dict[str, Any] = {
        "time": iso_time(event.get("log_time") or time.time()),
        "level": level.name if isinstance(level, type(LogLevel.info)) else "info",
        "role": PROCESS.role,
        "instance": PROCESS.instance,
        "namespace": event.get("log_namespace") or "",
        "message": formatEvent(event) if "log_format" in event or "log_failure" in event else "",
    }
    trace = CURRENT.get()
    if trace is not None and "trace_id" not in event:
        out["trace_id"] = trace.id
    failure = event.get("log_failure")
    if isinstance(failure, Failure):
        out["traceback"] = failure.getTraceback()
    for key, value in event.items():
        if key.startswith("log_") or key in out or key == "message":
            continue
        if isinstance(value, _PLAIN):
            out[key] = value
        elif isinstance(value, (list, tuple)) and all(isinstance(v, _PLAIN) for v in value):
            out[key] = list(value)
        elif isinstance(value, dict) and all(
            isinstance(k, str) and isinstance(v, _PLAIN) for k, v in value.items()
        ):
            out[key] = value
        else:
            out[key] = repr(value) if not isinstance(value, bytes) else value.decode("latin-1")
    if not out["message"] and "message" in event:  # legacy (twisted.python.log) events
        out["message"] = " ".join(str(m) for m in event["message"])
    return out


def json_observer(out: IO[str]) -> ILogObserver:
    """An observer writing each event's :func:`record` to ``out``, one JSON object per line
    (``twisted.logger.jsonFileLogObserver``'s encoding, without its record separator)."""
    inner = FileLogObserver(out, lambda rec: eventAsJSON(rec) + "\n")

    @provider(ILogObserver)
    def observe(event: dict[str, Any]) -> None:
        inner(record(event))

    return observe


#: Where :func:`twistd_json_logger` writes: twistd's ``--logfile`` (None or ``-``: stdout).
TWISTD_LOGFILE: str | None = None
#: twistd's options (``--logfile``, ``--syslog``, ``--nodaemon``, ``--logger``), for
#: :func:`twistd_logger`.
TWISTD_OPTIONS: dict[str, Any] = {}
#: The observer factory twistd's ``--logger`` named before the role put
#: :func:`twistd_logger` there (a dotted name), or None.
TWISTD_LOGGER: str | None = None
#: Whether :func:`twistd_logger` writes JSON lines (``--log-format json``).
TWISTD_JSON = False


def twistd_json_logger() -> ILogObserver:
    """The observer for twistd's ``--logger`` slot (it takes a name: this function's):
    JSON lines to :data:`TWISTD_LOGFILE` (a ``LogFile``, rotated as twistd's are) or stdout."""
    if not TWISTD_LOGFILE or TWISTD_LOGFILE == "-":
        return json_observer(sys.stdout)
    from twisted.python import logfile as logfiles

    return json_observer(logfiles.LogFile.fromFullPath(TWISTD_LOGFILE))


def twistd_text_logger() -> Any:
    """twistd's own observer for its options (:data:`TWISTD_OPTIONS`): ``--syslog``, the
    ``--logfile`` (rotated on SIGUSR1), or stdout."""
    from twisted.scripts._twistd_unix import UnixAppLogger

    return UnixAppLogger(TWISTD_OPTIONS)._getLogObserver()


def twistd_logger() -> ILogObserver:
    """The observer a role puts in twistd's ``--logger`` slot: the one twistd would use
    (its ``--logger``'s, JSON lines for ``--log-format json``, else its own text log)
    behind the process's log level (:data:`LEVEL`)."""
    if TWISTD_LOGGER:
        from twisted.python.reflect import namedAny

        return filtered(namedAny(TWISTD_LOGGER)())
    if TWISTD_JSON:
        return filtered(twistd_json_logger())
    return filtered(twistd_text_logger())
