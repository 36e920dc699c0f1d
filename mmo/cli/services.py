"""``mmo services``: list the live instances the registry knows.

mmo services [--yellow URL] [--service NAME] [--json] [--timeout S]
"""

from __future__ import annotations

import argparse
from typing import Any

from twisted.internet import defer

from mmo.cli.common import CommandError, add_yellow, to_json, yellows
from mmo.errors import MmoError
from mmo.types import InlineCallbacks

__all__ = ["add_parser", "cmd_services"]


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


def add_parser(sub: Any) -> None:
    """Add ``services`` to the ``mmo`` tool's subcommands."""
    services = sub.add_parser("services", help="list live service instances")
    add_yellow(services)
    services.add_argument("--service", default=None, help="only this service")
    services.add_argument("--json", action="store_true", help="print JSON")
    services.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for yellow")
    services.set_defaults(run=cmd_services)
