"""Structured log events: one JSON object per line, with the process's role and instance
and the trace id of the request being served.

:func:`record` turns a ``twisted.logger`` event into the flat record every mmo tool reads
(``time``, ``level``, ``role``, ``instance``, ``namespace``, ``message``, ``trace_id`` when
there is one, ``traceback`` for a failure, then the event's own fields);
:func:`json_observer` writes records with ``twisted.logger``'s JSON support
(``jsonFileLogObserver``, one record per line), and is what ``--log-format json`` installs
in twistd (:func:`twistd_json_logger`).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import IO, Any

from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    LogLevel,
    eventAsJSON,
    formatEvent,
)
from twisted.python.failure import Failure
from zope.interface import provider

from mmo.telemetry.trace import CURRENT

__all__ = ["PROCESS", "Identity", "iso_time", "json_observer", "record", "twistd_json_logger"]

_PLAIN = (str, int, float, bool, type(None))


@dataclass
class Identity:
    """Who is logging: set by the role when it knows (the instance id, once chosen)."""

    role: str = ""
    instance: str = ""


#: This process's identity, as its log records show it.
PROCESS = Identity()


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


def twistd_json_logger() -> ILogObserver:
    """The observer for twistd's ``--logger`` slot (it takes a name: this function's):
    JSON lines to :data:`TWISTD_LOGFILE` (a ``LogFile``, rotated as twistd's are) or stdout."""
    if not TWISTD_LOGFILE or TWISTD_LOGFILE == "-":
        return json_observer(sys.stdout)
    from twisted.python import logfile as logfiles

    return json_observer(logfiles.LogFile.fromFullPath(TWISTD_LOGFILE))
