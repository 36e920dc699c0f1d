"""``mmo call``: call a service's method through the cluster and print the reply.

mmo call [--yellow URL] SERVICE.METHOD [JSON_KWARGS] [--timeout S]
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from twisted.internet import defer

from mmo.cli.common import CommandError, add_yellow, call_once, to_json
from mmo.types import InlineCallbacks

__all__ = ["add_parser", "cmd_call"]


@defer.inlineCallbacks
def cmd_call(reactor: Any, args: argparse.Namespace) -> InlineCallbacks[None]:
    """Call SERVICE.METHOD with JSON keyword arguments and print the reply."""
    service, dot, method = args.target.partition(".")
    if not dot or not service or not method:
        raise CommandError(f"expected SERVICE.METHOD, got {args.target!r}")
    try:
        kwargs = json.loads(args.kwargs) if args.kwargs else {}
    except json.JSONDecodeError as e:
        raise CommandError(f"JSON_KWARGS is not valid JSON: {e}") from e
    if not isinstance(kwargs, dict):
        raise CommandError("JSON_KWARGS must be a JSON object of keyword arguments")
    reply = yield call_once(reactor, args.yellow, service, method, kwargs, args.timeout)
    print(to_json(reply))


def add_parser(sub: Any) -> None:
    """Add ``call`` to the ``mmo`` tool's subcommands."""
    call = sub.add_parser("call", help="call SERVICE.METHOD and print the reply as JSON")
    add_yellow(call)
    call.add_argument("target", metavar="SERVICE.METHOD")
    call.add_argument("kwargs", metavar="JSON_KWARGS", nargs="?", default="")
    call.add_argument("--timeout", type=float, default=5.0, help="deadline in seconds")
    call.set_defaults(run=cmd_call)
