"""``mmo reload``: replace the instances of a service that ``mmo-cluster`` supervises by
processes running the code on disk now, a batch at a time, without a failed call (a fight
pool's processes: each finishes its fights, then stops, and fresh ones take new fights).

    mmo reload SERVICE [--batch N] [--yellow URL] [--timeout S] [--json]
    mmo reload SERVICE --restart CMD | --systemd

With ``--restart`` (or ``--systemd``) the instances are run by another supervisor: each in
turn is drained, restarted in place by CMD, and waited for until it is ready again
(:class:`mmo.cluster.roll.RestartRoll`).

The cluster's control endpoint (service ``cluster``, which ``mmo-cluster`` registers when
its ``[cluster] yellow`` is set) is found in the registry and called as role ``tool``
(docs/operations.md, "Rolling reload").
"""

from __future__ import annotations

import argparse
import os
import shlex
from typing import Any

from twisted.internet import defer
from twisted.internet.utils import getProcessOutputAndValue

from mmo.cli.common import CommandError, add_yellow, connected, to_json
from mmo.cluster.control import ClusterRegistry
from mmo.cluster.roll import RestartRoll, RollError
from mmo.types import InlineCallbacks

__all__ = ["add_parser", "cmd_reload"]

CLUSTER_SERVICE = "cluster"
#: ``--systemd``: the restart command of the units in etc/systemd/.
SYSTEMD = "systemctl restart mmo-worker@{instance}"
#: How long the command waits for the registry to list the cluster's control endpoint.
FIND_WAIT = 10.0


class CommandRestarter:
    """Restarts an instance by running a shell command (``{instance}`` replaced by its
    instance id; ``systemctl restart mmo-worker@{instance}``, say), which must return once
    the instance is restarted (as ``systemctl restart`` does)."""

    def __init__(self, reactor: Any, template: str) -> None:
        self.reactor = reactor
        self.template = template

    @defer.inlineCallbacks
    def restart(self, instance_id: str) -> InlineCallbacks[None]:
        """Run the command for ``instance_id``.

        Raises (through the Deferred):
            RollError: it exited with a status other than 0 (with the end of its output).
        """
        command = self.template.replace("{instance}", shlex.quote(instance_id))
        out, err, code = yield getProcessOutputAndValue(
            "/bin/sh", ["-c", command], env=dict(os.environ), reactor=self.reactor
        )
        if code != 0:
            said = (err or out).decode(errors="replace").strip().splitlines()[-5:]
            raise RollError(f"`{command}` exited with {code}: {' / '.join(said) or 'no output'}")


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

    @defer.inlineCallbacks
    def restart(directory: Any) -> InlineCallbacks[Any]:
        view = directory.view
        try:
            yield view.wait_for(lambda: view.synced, FIND_WAIT)
        except defer.TimeoutError as e:
            raise CommandError(f"no answer from the yellow at {', '.join(view.yellows)}") from e
        registry = ClusterRegistry(directory, reactor)
        rolling = RestartRoll(registry, CommandRestarter(reactor, template), reactor)
        try:
            return (yield rolling.run(args.service).addTimeout(args.timeout, reactor))
        except defer.TimeoutError as e:
            raise CommandError(f"the reload did not end within {args.timeout:g} s") from e

    template = SYSTEMD if args.systemd else args.restart
    if template is not None and "{instance}" not in template:
        raise CommandError("--restart: the command needs {instance} (the instance to restart)")
    answer = yield connected(reactor, args.yellow, roll if template is None else restart)
    if args.json:
        print(to_json(answer))
        return
    service = answer.get("service", args.service)
    if "restarted" in answer:
        print(f"{service}: {len(answer['restarted'])} instance(s) restarted in place")
        for instance_id in answer["restarted"]:
            print(f"  {instance_id}")
        return
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
    how = reload.add_mutually_exclusive_group()
    how.add_argument(
        "--restart",
        metavar="CMD",
        help="instances another supervisor runs: drain each, run CMD (a shell command, "
        "{instance} replaced by its instance id) to restart it, wait until it is ready",
    )
    how.add_argument(
        "--systemd",
        action="store_true",
        help=f"the same with CMD {SYSTEMD!r} (etc/systemd/'s units)",
    )
    reload.add_argument("--json", action="store_true", help="print the answer as JSON")
    reload.set_defaults(run=cmd_reload)
