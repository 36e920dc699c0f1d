"""``mmo``: the command-line tool for people operating an mmo cluster.

    mmo services --yellow URL [--json]
    mmo call --yellow URL SERVICE.METHOD [JSON_KWARGS] [--timeout S]
    mmo bench {w1,w2,w3,floor,all} [--duration S] [--clients C] [--against HOST:PORT] [--json]
    mmo bench calls [--concurrency 1 50] [--duration S] [--yellow URL] [--json]
    mmo chat --brokerlist URL --user NAME --password PW --room ROOM [--register]
    mmo fights --yellow URL [--json]
    mmo keys DIR [--force]

``--yellow`` defaults to ``$MMO_YELLOW`` or ``tcp://127.0.0.1:5555``; several
addresses may be given, separated by commas. Exit status: 0 on success, 1 when
the operation failed (the reason goes to stderr), 2 for bad usage.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, task

from mmo.errors import MmoError, RemoteError
from mmo.types import InlineCallbacks

DEFAULT_YELLOW = "tcp://127.0.0.1:5555"


class CommandError(Exception):
    """A command failed; the message is printed and the exit status is 1."""


def to_json(value: Any) -> str:
    """JSON text of a reply; bytes become ``{"$bytes": "<base64>"}``."""

    def default(obj: Any) -> Any:
        if isinstance(obj, bytes):
            return {"$bytes": base64.b64encode(obj).decode()}
        raise TypeError(f"cannot show a {type(obj).__name__}")

    return json.dumps(value, default=default, ensure_ascii=False, sort_keys=True)


def yellows(text: str) -> list[str]:
    """The yellow addresses in a comma-separated option."""
    return [part.strip() for part in text.split(",") if part.strip()]


@defer.inlineCallbacks
def cmd_services(reactor: Any, args: argparse.Namespace) -> InlineCallbacks[None]:
    """List the live instances the first answering yellow knows."""
    from mmo.registry import YellowLink
    from mmo.wire import from_value
    from mmo.wire.gen.mmo.ttypes import RegistryMessage, RegistryOp
    from mmo.zmq import ZmqContext

    context = ZmqContext(reactor)
    try:
        reply = None
        for address in yellows(args.yellow):
            link = YellowLink(context, address)
            try:
                reply = yield link.request(
                    RegistryMessage(op=RegistryOp.QUERY, service_name=args.service),
                    timeout=args.timeout,
                )
                break
            except MmoError:
                continue
            finally:
                link.close()
        if reply is None:
            raise CommandError(f"no yellow answered at {args.yellow}")
    finally:
        context.close()
    rows = sorted(
        (
            {
                "service": inst.service_name,
                "instance": inst.instance_id,
                "endpoints": dict(inst.endpoints or {}),
                "meta": {k: from_value(v) for k, v in (inst.meta or {}).items()},
            }
            for inst in reply.instances or []
        ),
        key=lambda row: (row["service"], row["instance"]),
    )
    if args.json:
        print(to_json(rows))
        return
    if not rows:
        print("no live instances")
        return
    for row in rows:
        endpoints = " ".join(f"{k}={v}" for k, v in sorted(row["endpoints"].items()))
        meta = " ".join(
            f"{k}={to_json(v)}" for k, v in sorted(row["meta"].items()) if k != "methods"
        )
        print(f"{row['service']:<12} {row['instance']:<24} {endpoints}")
        methods = row["meta"].get("methods")
        if methods:
            print(f"{'':<12} methods: {', '.join(methods)}")
        print(f"{'':<12} {meta}")


@defer.inlineCallbacks
def cmd_call(reactor: Any, args: argparse.Namespace) -> InlineCallbacks[None]:
    """Call SERVICE.METHOD with JSON keyword arguments and print the reply."""
    from mmo.logic import connect

    service, dot, method = args.target.partition(".")
    if not dot or not service or not method:
        raise CommandError(f"expected SERVICE.METHOD, got {args.target!r}")
    try:
        kwargs = json.loads(args.kwargs) if args.kwargs else {}
    except json.JSONDecodeError as e:
        raise CommandError(f"JSON_KWARGS is not valid JSON: {e}") from e
    if not isinstance(kwargs, dict):
        raise CommandError("JSON_KWARGS must be a JSON object of keyword arguments")
    directory = connect(yellows(args.yellow), reactor=reactor, caller_id=f"mmo-cli-{os.getpid()}")
    try:
        reply = yield directory.call(service, method, kwargs, timeout=args.timeout)
    except RemoteError as e:
        raise CommandError(f"RemoteError: {e.type}: {e.message}") from e
    except MmoError as e:
        raise CommandError(f"{type(e).__name__}: {e}") from e
    finally:
        yield directory.stopService()
    print(to_json(reply))


def cmd_keys(reactor: Any, args: argparse.Namespace) -> defer.Deferred[None]:
    """Make a CURVE keys directory for ``$MMO_CURVE_KEYS`` (docs/security.md)."""
    from mmo.zmq.curve import ENV_KEYS, create_keys

    def make() -> None:
        try:
            written = create_keys(args.directory, force=args.force)
        except FileExistsError as e:
            raise CommandError(f"{e}: keys are already there (--force replaces them)") from e
        except OSError as e:
            raise CommandError(f"cannot write the keys: {e}") from e
        for path in written:
            print(f"wrote {path}")
        print(f"give every process of the cluster {ENV_KEYS}={os.path.abspath(args.directory)}")

    return defer.maybeDeferred(make)


def build_parser() -> argparse.ArgumentParser:
    """The ``mmo`` argument parser."""
    parser = argparse.ArgumentParser(prog="mmo", description="Operate an mmo cluster.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    yellow_default = os.environ.get("MMO_YELLOW", DEFAULT_YELLOW)

    services = sub.add_parser("services", help="list live service instances")
    services.add_argument("--yellow", default=yellow_default, help="yellow address(es)")
    services.add_argument("--service", default=None, help="only this service")
    services.add_argument("--json", action="store_true", help="print JSON")
    services.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for yellow")
    services.set_defaults(run=cmd_services)

    call = sub.add_parser("call", help="call SERVICE.METHOD and print the reply as JSON")
    call.add_argument("--yellow", default=yellow_default, help="yellow address(es)")
    call.add_argument("target", metavar="SERVICE.METHOD")
    call.add_argument("kwargs", metavar="JSON_KWARGS", nargs="?", default="")
    call.add_argument("--timeout", type=float, default=5.0, help="deadline in seconds")
    call.set_defaults(run=cmd_call)

    from mmo.bench.cli import add_parser as add_bench

    add_bench(sub)

    from mmo.client.chat import add_parser as add_chat

    add_chat(sub)

    from mmo.fight.cli import add_parser as add_fights

    add_fights(sub)

    keys = sub.add_parser(
        "keys", help="make the CURVE keys that encrypt internal links (docs/security.md)"
    )
    keys.add_argument("directory", metavar="DIR", help="directory to create (mode 0700)")
    keys.add_argument("--force", action="store_true", help="replace the keys already in DIR")
    keys.set_defaults(run=cmd_keys)
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
