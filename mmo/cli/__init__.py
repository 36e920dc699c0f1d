"""``mmo``: the command-line tool for people operating an mmo cluster.

    mmo services --yellow URL [--json]
    mmo call --yellow URL SERVICE.METHOD [JSON_KWARGS] [--timeout S]
    mmo bench {w1,w2,w3,floor,all} [--duration S] [--clients C] [--against HOST:PORT] [--json]
    mmo bench calls [--concurrency 1 50] [--duration S] [--yellow URL] [--json]
    mmo chat --brokerlist URL --user NAME --password PW --room ROOM [--register]
    mmo fights --yellow URL [--json]
    mmo drain INSTANCE [--undrain] [--service S] [--pool DISPATCHER] --yellow URL [--json]
    mmo reload SERVICE [--batch N] [--yellow URL] [--timeout S] [--json]
    mmo keys DIR [--force]
    mmo logs --yellow URL [--role R] [--instance I] [--level L] [--trace ID] [--since T]
             [--follow] [--json]
    mmo trace ID --yellow URL [--json]
    mmo status [--yellow URL] [--interval S] [--target HOST:PORT] [--json] [--watch]
    mmo admin-password NAME [--stdin]

``--yellow`` defaults to ``$MMO_YELLOW`` or ``tcp://127.0.0.1:5555``; several
addresses may be given, separated by commas. Exit status: 0 on success, 1 when
the operation failed (the reason goes to stderr), 2 for bad usage.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, task

from mmo.cli.common import DEFAULT_YELLOW, CommandError, to_json, yellows

__all__ = ["DEFAULT_YELLOW", "CommandError", "build_parser", "main", "to_json", "yellows"]

#: The subcommand modules, in the order ``mmo --help`` lists them: each has
#: ``add_parser(subparsers)``.
SUBCOMMANDS = (
    "services",
    "call",
    "bench",
    "chat",
    "fights",
    "drain",
    "reload",
    "keys",
    "logs",
    "status",
    "admin_password",
)


def build_parser() -> argparse.ArgumentParser:
    """The ``mmo`` argument parser."""
    parser = argparse.ArgumentParser(prog="mmo", description="Operate an mmo cluster.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"mmo.cli.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``mmo`` console script."""
    args = build_parser().parse_args(argv)
    command: Callable[[Any, argparse.Namespace], defer.Deferred[None]] = args.run
    failed: list[str] = []

    def run(reactor: Any) -> defer.Deferred[None]:
        def report(failure: Any) -> None:
            if failure.check(CommandError):
                failed.append(str(failure.value))
            else:
                failed.append(failure.getTraceback())

        return command(reactor, args).addErrback(report)

    try:
        task.react(run)
    except SystemExit as e:
        if e.code not in (0, None):
            raise
    if failed:
        print(f"error: {failed[0]}", file=sys.stderr)
        sys.exit(1)
