"""``mmo reload``: replace the instances of a service that ``mmo-cluster`` supervises by
processes running the code on disk now, a batch at a time, without a failed call (a fight
pool's processes: each finishes its fights, then stops, and fresh ones take new fights).

    mmo reload SERVICE [--batch N] [--yellow URL] [--timeout S] [--json]

The cluster's control endpoint (service ``cluster``, which ``mmo-cluster`` registers when
its ``[cluster] yellow`` is set) is found in the registry and called as role ``tool``
(docs/operations.md, "Rolling reload").
"""

from __future__ import annotations

import argparse
from typing import Any

from twisted.internet import defer

from mmo.cli.common import CommandError, add_yellow, connected, to_json
from mmo.types import InlineCallbacks

__all__ = ["add_parser", "cmd_reload"]

CLUSTER_SERVICE = "cluster"
#: How long the command waits for the registry to list the cluster's control endpoint.
FIND_WAIT = 10.0


@defer.inlineCallbacks
def cmd_reload(reactor: Any, args: argparse.Namespace) -> InlineCallbacks[None]:
    """Ask the cluster to roll SERVICE; print what was replaced."""

    @defer.inlineCallbacks
    def roll(directory: Any) -> InlineCallbacks[Any]:
        view = directory.view
        try:
            yield view.wait_for(lambda: bool(view.get(CLUSTER_SERVICE)), FIND_WAIT)
        except defer.TimeoutError as e:
            raise CommandError(
                f"no cluster control endpoint (service {CLUSTER_SERVICE!r}) in the registry at "
                f"{', '.join(view.yellows)}: is mmo-cluster running with [cluster] yellow set?"
            ) from e
        return (
            yield directory.call(
                CLUSTER_SERVICE,
                "reload",
                {"service": args.service, "batch": args.batch},
                timeout=args.timeout,
            )
        )

    answer = yield connected(reactor, args.yellow, roll)
    if args.json:
        print(to_json(answer))
        return
    service = answer.get("service", args.service)
    if "recycled" in answer:
        recycled = answer["recycled"]
        print(
            f"{service}: {len(recycled)} fight process(es) drained: they finish their "
            f"{answer.get('fights', 0)} fight(s) and stop; fresh ones take new fights"
        )
        for instance_id in recycled:
            print(f"  {instance_id}")
        return
    replaced = answer.get("replaced") or []
    print(f"{service}: {len(replaced)} instance(s) replaced")
    for old, new in replaced:
        print(f"  {old} -> {new}")


def add_parser(sub: Any) -> None:
    """Add ``reload`` to the ``mmo`` tool's subcommands."""
    reload = sub.add_parser(
        "reload",
        help="replace a supervised service's instances by ones running the code on disk now",
    )
    add_yellow(reload)
    reload.add_argument("service", metavar="SERVICE", help="the service to reload")
    reload.add_argument("--batch", type=int, default=1, help="instances replaced at a time")
    reload.add_argument(
        "--timeout", type=float, default=300.0, help="deadline of the whole reload in seconds"
    )
    reload.add_argument("--json", action="store_true", help="print the answer as JSON")
    reload.set_defaults(run=cmd_reload)
