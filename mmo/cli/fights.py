"""``mmo fights``: show the fight dispatcher's pool.

    mmo fights [--yellow URL] [--service fight] [--json] [--timeout S]

Asks the dispatcher (``fight.status``) and prints one line per fight process:
its state, load against the cap, fights, peak load and how long it has been idle.
"""

from __future__ import annotations

import argparse
from typing import Any

from twisted.internet import defer

from mmo.cli.common import add_yellow, call_once, to_json
from mmo.types import InlineCallbacks

__all__ = ["add_parser", "cmd_fights", "render"]


def render(status: dict[str, Any]) -> str:
    """The pool as a table."""
    lines = [
        f"fight dispatcher {status.get('instance')}: cap {status['cap']}, "
        f"min-spare {status['min_spare']}, max {status['max_processes']} processes"
        + (", DRAINING" if status.get("draining") else ""),
        f"{len(status['processes'])} processes, {status['fights']} fights, "
        f"{status['players']} players, {status['waiting']} allocations waiting",
    ]
    counts = status.get("counts") or {}
    if counts:
        lines.append(" ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    if status["processes"]:
        lines.append(
            f"{'INSTANCE':<16} {'PID':>7} {'STATE':<9} {'LOAD':>9} {'FIGHTS':>6} "
            f"{'PEAK':>5} {'IDLE':>7}"
        )
    for proc in status["processes"]:
        idle = "-" if proc["idle"] is None else f"{proc['idle']:.0f}s"
        load = f"{proc['load']}/{status['cap']}"
        lines.append(
            f"{proc['instance']:<16} {proc['pid'] or '-':>7} {proc['state']:<9} {load:>9} "
            f"{proc['fights']:>6} {proc['peak']:>5} {idle:>7}"
        )
    return "\n".join(lines)


@defer.inlineCallbacks
def cmd_fights(reactor: Any, args: argparse.Namespace) -> InlineCallbacks[None]:
    """Print the fight pool's status."""
    status = yield call_once(reactor, args.yellow, args.service, "status", {}, args.timeout)
    print(to_json(status) if args.json else render(status))


def add_parser(sub: Any) -> None:
    """Add ``fights`` to the ``mmo`` tool's subcommands."""
    fights = sub.add_parser("fights", help="show the fight dispatcher's pool of processes")
    add_yellow(fights)
    fights.add_argument("--service", default="fight", help="the dispatcher's service name")
    fights.add_argument("--json", action="store_true", help="print JSON")
    fights.add_argument("--timeout", type=float, default=3.0, help="deadline in seconds")
    fights.set_defaults(run=cmd_fights)
