"""``mmo logs`` and ``mmo trace``: read the log collector (``twistd mmo-logs``).

    mmo logs [--yellow URL] [--role R] [--instance I] [--level L] [--trace ID]
             [--since T] [--limit N] [--follow] [--json]
    mmo trace ID [--yellow URL] [--json]

``mmo logs`` asks every live collector (``logs.query``), merges what they answer by
time and prints one line per event: ``time level role/instance namespace: message
[trace=ID]`` (a traceback follows, indented), or the records as JSON, one per line.
``--level`` means that level or a more severe one; ``--since`` takes an ISO 8601 time,
seconds since the epoch, or a duration ago (``90s``, ``10m``, ``2h``, ``1d``).
``--follow`` then asks every 0.5 s for what came since.

``mmo trace ID`` prints the path of a traced request through the cluster: each span
(one per hop and side: the caller's ``client`` span, the callee's ``server`` span), in
the order they started, with its offset from the first, indented under the span it
ran within, then the other events logged for that request.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Iterable
from typing import Any

from twisted.internet import defer, task

from mmo.cli.common import CommandError, add_yellow, to_json
from mmo.errors import MmoError, RemoteError
from mmo.types import InlineCallbacks

__all__ = ["add_parser", "cmd_logs", "cmd_trace", "format_event", "parse_since", "render_trace"]

SERVICE = "logs"
#: Seconds between two polls of ``--follow``.
FOLLOW_INTERVAL = 0.5
#: Namespace of span events (:func:`mmo.telemetry.trace.span`).
SPANS = "mmo.trace"
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: float | None = None) -> float:
    """Seconds since the epoch of ``--since``: a duration ago (``90s``, ``10m``, ``2h``,
    ``1d``), seconds since the epoch, or an ISO 8601 time (UTC if it names no zone).

    Raises:
        CommandError: none of these.
    """
    from mmo.logs.collector import epoch_of

    text = text.strip()
    match = _DURATION.fullmatch(text)
    if match:
        now = time.time() if now is None else now
        return now - float(match.group(1)) * _UNITS[match.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return epoch_of(text)
    except ValueError:
        raise CommandError(
            f"--since: expected a duration (10m), epoch seconds or an ISO time, got {text!r}"
        ) from None


def format_event(event: dict[str, Any]) -> str:
    """One event as a line (then its traceback, indented, if it has one)."""
    trace = event.get("trace_id")
    line = (
        f"{event.get('time', '?')} {event.get('level', '?')!s:<8} "
        f"{event.get('role') or '?'}/{event.get('instance') or '?'} "
        f"{event.get('namespace') or '-'}: {event.get('message', '')}"
        + (f" [trace={trace}]" if trace else "")
    )
    traceback = event.get("traceback")
    if traceback:
        line += "\n" + "\n".join("    " + row for row in str(traceback).rstrip().splitlines())
    return line


def _merged(events: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(
        events, key=lambda e: (str(e.get("time", "")), str(e.get("instance", "")), e.get("seq", 0))
    )


@defer.inlineCallbacks
def _collectors(directory: Any, timeout: float) -> InlineCallbacks[list[str]]:
    """The live collectors' instance ids (once the registry view has them)."""
    view = directory.view
    try:
        yield view.wait_for(lambda: view.synced and (view.get(SERVICE) or view.warm), timeout)
    except defer.TimeoutError:
        if not view.synced:
            raise CommandError(f"no yellow answered at {', '.join(view.yellows)}") from None
    ids = sorted(i.instance_id for i in view.get(SERVICE))
    if not ids:
        raise CommandError("no log collector is live (start one: twistd mmo-logs --yellow ...)")
    return ids


@defer.inlineCallbacks
def _query(
    directory: Any, ids: list[str], kwargs: dict[str, Any], after: dict[str, int], timeout: float
) -> InlineCallbacks[list[dict[str, Any]]]:
    """Ask each collector of ``ids`` (from ``after[id]`` on, updated); the events, merged."""
    calls = [
        directory.call(
            SERVICE, "query", {**kwargs, "after": after.get(iid, 0)}, instance=iid, timeout=timeout
        )
        for iid in ids
    ]
    results = yield defer.DeferredList(calls, consumeErrors=True)
    events: list[dict[str, Any]] = []
    errors: list[str] = []
    for iid, (ok, answer) in zip(ids, results, strict=True):
        if not ok:
            error = answer.value
            if isinstance(error, RemoteError):
                errors.append(f"{iid}: {error.type}: {error.message}")
            else:
                errors.append(f"{iid}: {type(error).__name__}: {error}")
            continue
        after[iid] = int(answer.get("last") or 0)
        events.extend(answer.get("events") or [])
    if errors and len(errors) == len(ids):
        raise CommandError("; ".join(errors))
    for error in errors:
        print(f"warning: {error}", file=sys.stderr)
    return _merged(events)


def _connect(reactor: Any, yellow: str) -> Any:
    from mmo.logic import connect

    return connect(yellow, reactor=reactor, caller_id=f"mmo-cli-{os.getpid()}")


def _print(events: list[dict[str, Any]], as_json: bool) -> None:
    for event in events:
        print(to_json(event) if as_json else format_event(event))
    sys.stdout.flush()


@defer.inlineCallbacks
def cmd_logs(reactor: Any, args: argparse.Namespace) -> InlineCallbacks[None]:
    """Print the events the collectors keep that match; with ``--follow``, keep going."""
    if args.level is not None:
        from mmo.logs.collector import level_rank

        try:
            level_rank(args.level)
        except ValueError as e:
            raise CommandError(f"--level: {e}") from None
    kwargs: dict[str, Any] = {
        key: value
        for key, value in (
            ("role", args.role),
            ("instance", args.instance),
            ("level", args.level),
            ("trace", args.trace),
        )
        if value is not None
    }
    if args.since is not None:
        kwargs["since"] = parse_since(args.since)
    kwargs["limit"] = args.limit
    directory = _connect(reactor, args.yellow)
    try:
        ids = yield _collectors(directory, args.timeout)
        after: dict[str, int] = {}
        started = time.time()
        try:
            events = yield _query(directory, ids, kwargs, after, args.timeout)
        except MmoError as e:
            raise CommandError(f"{type(e).__name__}: {e}") from e
        _print(events, args.json)
        while args.follow:
            yield task.deferLater(reactor, FOLLOW_INTERVAL, lambda: None)
            # A collector that came since: what it took from the start of the follow on.
            new = [i.instance_id for i in directory.view.get(SERVICE) if i.instance_id not in ids]
            try:
                events = yield _query(directory, ids, kwargs, after, args.timeout)
                if new:
                    since = {**kwargs, "since": kwargs.get("since", started)}
                    events = _merged(
                        [*events, *(yield _query(directory, new, since, after, args.timeout))]
                    )
                    ids.extend(new)
            except CommandError as e:
                print(f"warning: {e}", file=sys.stderr)
                continue
            _print(events, args.json)
    finally:
        yield directory.stopService()


def _span_times(event: dict[str, Any]) -> tuple[float, float]:
    """When a span started and ended (its record's time is its end)."""
    from mmo.logs.collector import epoch_of

    try:
        end = epoch_of(str(event.get("time")))
    except ValueError:
        end = 0.0
    duration = event.get("duration_ms")
    seconds = float(duration) / 1000 if isinstance(duration, int | float) else 0.0
    return end - seconds, end


def render_trace(trace_id: str, events: list[dict[str, Any]]) -> str:
    """The path of a traced request: its spans in the order they started, each with its
    offset from the first and indented under the span it ran within, then its other
    events."""
    spans = [e for e in events if e.get("namespace") == SPANS and "span" in e]
    others = [e for e in events if not (e.get("namespace") == SPANS and "span" in e)]
    timed = sorted(
        ((*_span_times(e), e) for e in spans),
        # Earliest first; of two starting together, the longer (the caller's) first.
        key=lambda t: (t[0], -(t[1] - t[0]), t[2].get("span") != "client"),
    )
    processes = {(e.get("role"), e.get("instance")) for e in events}
    lines: list[str] = []
    if timed:
        first = timed[0][0]
        whole = max(end for _, end, _ in timed) - first
        lines.append(
            f"trace {trace_id}: {len(timed)} spans in {len(processes)} processes, "
            f"{whole * 1000:.3f} ms"
        )
        # Spans still open at each one's start: it is indented under the innermost.
        open_ends: list[float] = []
        slack = 0.00002  # times and durations are rounded to the microsecond
        for start, end, event in timed:
            while open_ends and start > open_ends[-1] + slack:
                open_ends.pop()
            depth = len(open_ends)
            side = str(event.get("span"))
            arrow = "->" if side == "client" else "<-"
            lines.append(
                f"{(start - first) * 1000:+10.3f} ms  {'  ' * depth}"
                f"{event.get('role') or '?'}/{event.get('instance') or '?'} {side} "
                f"{event.get('service')}.{event.get('method')} {event.get('outcome')} "
                f"{event.get('duration_ms')} ms {arrow} {event.get('peer') or '?'}"
            )
            open_ends.append(end)
    else:
        lines.append(f"trace {trace_id}: no spans (the request was not traced)")
    if others:
        lines.append(f"events ({len(others)}):")
        lines.extend(format_event(e) for e in _merged(others))
    return "\n".join(lines)


@defer.inlineCallbacks
def cmd_trace(reactor: Any, args: argparse.Namespace) -> InlineCallbacks[None]:
    """Print the path of a traced request across the processes, then its events."""
    from mmo.logs.collector import MAX_LIMIT

    directory = _connect(reactor, args.yellow)
    try:
        ids = yield _collectors(directory, args.timeout)
        try:
            events = yield _query(
                directory, ids, {"trace": args.trace_id, "limit": MAX_LIMIT}, {}, args.timeout
            )
        except MmoError as e:
            raise CommandError(f"{type(e).__name__}: {e}") from e
    finally:
        yield directory.stopService()
    if not events:
        raise CommandError(f"no event of trace {args.trace_id} is kept by the collectors")
    if args.json:
        _print(events, True)
    else:
        print(render_trace(args.trace_id, events))


def add_parser(sub: Any) -> None:
    """Add ``logs`` and ``trace`` to the ``mmo`` tool's subcommands."""
    logs = sub.add_parser("logs", help="print the cluster's log events (from mmo-logs)")
    add_yellow(logs)
    logs.add_argument("--role", default=None, help="of processes of this role (worker...)")
    logs.add_argument("--instance", default=None, help="of this instance")
    logs.add_argument(
        "--level", default=None, help="this level or more severe (debug info warn error critical)"
    )
    logs.add_argument("--trace", default=None, help="logged for this trace id")
    logs.add_argument(
        "--since", default=None, help="since a time: 10m, 2h (ago), epoch seconds or ISO 8601"
    )
    logs.add_argument(
        "--limit", type=int, default=1000, help="most events per collector (the latest)"
    )
    logs.add_argument("--follow", "-f", action="store_true", help="then print new events")
    logs.add_argument("--json", action="store_true", help="print the records as JSON lines")
    logs.add_argument("--timeout", type=float, default=5.0, help="deadline of each query")
    logs.set_defaults(run=cmd_logs)

    trace = sub.add_parser("trace", help="print the path of a traced request across processes")
    trace.add_argument("trace_id", metavar="ID")
    add_yellow(trace)
    trace.add_argument("--json", action="store_true", help="print its events as JSON lines")
    trace.add_argument("--timeout", type=float, default=5.0, help="deadline of each query")
    trace.set_defaults(run=cmd_trace)
