"""``mmo status``: one screen of the whole cluster, from every process's operator listener.

    mmo status [--yellow URL] [--interval S] [--timeout S] [--target HOST:PORT]... [--json]
               [--watch]

Finds every live process through the registry (every registered instance; a process that
registered under several services is one process, known by the operator listener it
publishes as meta ``metrics``), reads ``/readyz`` and ``/metrics`` from each twice
(``--interval`` seconds after the first read is done), and prints the cluster's totals,
one row per process and one row per service (see docs/status.md). A process that does not
answer within ``--timeout`` shows as unreachable. ``--target`` adds an operator listener
the registry does not list (a yellow's). ``--json`` prints the same as a JSON object;
``--watch`` prints it again every ``--interval`` seconds until interrupted.

What it reads and computes is :mod:`mmo.ops.status` (the admin console shows the same);
:func:`render` makes the screen.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from twisted.internet import defer, task

from mmo.cli.common import CommandError, add_yellow, to_json
from mmo.ops.status import NoRegistry, gather, scrape, summarize
from mmo.types import InlineCallbacks

__all__ = ["add_parser", "cmd_status", "render"]


def _num(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def render(status: Mapping[str, Any]) -> str:
    """The status (what :func:`summarize` returns) as a screen of text."""
    c = status["cluster"]
    head = (
        f"{c['processes']} processes: {c['ready']} ready, {c['not_ready']} not ready, "
        f"{c['unreachable']} unreachable"
        + (f", {c['no_metrics']} without metrics" if c.get("no_metrics") else "")
    )
    lines = [
        head,
        f"sessions {c['sessions']}, {_num(c['requests_per_s'])} req/s, "
        f"{_num(c['errors_per_s'])} err/s, p99 {_num(c['p99_ms'])} ms "
        f"(over {status['interval']:g} s)",
        "",
    ]
    rows: list[tuple[str, ...]] = [
        (
            "ROLE",
            "SERVICE",
            "INSTANCE",
            "REQ/S",
            "ERR/S",
            "P99 MS",
            "CPU%",
            "RSS MiB",
            "SESSIONS",
            "HEALTH",
        )
    ]
    for p in status["processes"]:
        health = p["health"].upper() if p["health"] == "not ready" else p["health"]
        if p["detail"] and p["health"] in ("not ready", "unreachable"):
            health += f": {p['detail']}"
        rows.append(
            (
                str(p["role"]),
                str(p["service"]),
                str(p["instance"]),
                _num(p["requests_per_s"]),
                _num(p["errors_per_s"]),
                _num(p["p99_ms"], 2),
                _num(p["cpu_percent"]),
                _num(p["rss_mib"]),
                _num(p["sessions"]),
                health,
            )
        )
    lines.extend(_table(rows, right=range(3, 9)))
    if status["services"]:
        lines.append("")
        table: list[tuple[str, ...]] = [
            ("SERVICE", "INSTANCES", "REQ/S", "ERR/S", "P50 MS", "P99 MS")
        ]
        for s in status["services"]:
            table.append(
                (
                    str(s["service"]),
                    str(s["instances"]),
                    _num(s["requests_per_s"]),
                    _num(s["errors_per_s"]),
                    _num(s["p50_ms"], 2),
                    _num(s["p99_ms"], 2),
                )
            )
        lines.extend(_table(table, right=range(1, 6)))
    return "\n".join(lines)


def _table(rows: list[tuple[str, ...]], right: Iterable[int]) -> list[str]:
    """Rows as aligned columns (those of ``right`` aligned right; the last is not padded)."""
    right = set(right)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            if i == len(row) - 1 and i not in right:
                cells.append(cell)
            else:
                cells.append(cell.rjust(widths[i]) if i in right else cell.ljust(widths[i]))
        lines.append("  ".join(cells).rstrip())
    return lines


# -- I/O -----------------------------------------------------------------------------------


# -- the command ---------------------------------------------------------------------------


def _show(status: dict[str, Any], as_json: bool, clear: bool) -> None:
    if as_json:
        print(to_json(status))
    else:
        if clear:
            sys.stdout.write("\x1b[H\x1b[2J")
        print(render(status))
        if not clear:
            print()
    sys.stdout.flush()


@defer.inlineCallbacks
def cmd_status(reactor: Any, args: argparse.Namespace) -> InlineCallbacks[None]:
    """Print the cluster's status (again every interval with ``--watch``)."""
    from mmo.logic import connect

    if args.interval <= 0:
        raise CommandError("--interval must be more than 0")
    directory = connect(args.yellow, reactor=reactor, caller_id=f"mmo-status-{os.getpid()}")
    try:
        extra = [t for option in args.target for t in option.split(",") if t.strip()]
        if not args.watch:
            status = yield gather(
                reactor, directory, args.interval, timeout=args.timeout, extra=extra
            )
            _show(status, args.json, clear=False)
            return
        clear = sys.stdout.isatty() and not args.json
        before = yield scrape(reactor, directory, args.timeout, extra)
        read = reactor.seconds()
        while True:
            yield task.deferLater(reactor, args.interval, lambda: None)
            after = yield scrape(reactor, directory, args.timeout, extra)
            now = reactor.seconds()
            _show(summarize(before, after, now - read), args.json, clear)
            before, read = after, now
    except NoRegistry as e:
        raise CommandError(str(e)) from None
    finally:
        yield directory.stopService()


def add_parser(sub: Any) -> None:
    """Add ``status`` to the ``mmo`` tool's subcommands."""
    status = sub.add_parser(
        "status", help="one screen of the cluster: health, rates, latency, CPU, memory"
    )
    add_yellow(status)
    status.add_argument(
        "--interval", type=float, default=1.0, help="seconds between the two reads (rates)"
    )
    status.add_argument(
        "--timeout", type=float, default=2.0, help="seconds a process has to answer"
    )
    status.add_argument(
        "--target",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="also this operator listener (a yellow's: the registry does not list it)",
    )
    status.add_argument("--json", action="store_true", help="print JSON")
    status.add_argument("--watch", action="store_true", help="repeat until interrupted")
    status.set_defaults(run=cmd_status)
