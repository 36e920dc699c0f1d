"""``mmo drain``: drain one instance (it takes no new work, finishes what it holds), or
take it back.

    mmo drain INSTANCE [--undrain] [--service S] [--yellow URL] [--json] [--timeout S]
    mmo drain PROCESS --pool DISPATCHER [--undrain] ...

The instance is found in the registry (``--service`` when its id is registered under
several services). A broker is told with its internal ``drain`` (one-way: the command
waits until the registry entry says so); any other served instance (worker, session
service, log collector, fight dispatcher or process) with its built-in ``ops_drain``.
With ``--pool``, PROCESS is a fight process of the dispatcher DISPATCHER (an instance
id), drained in its pool (``drain_process``: no new fight, stopped once its fights are
over). The command calls as role ``tool`` (docs/operations.md, "Drain and undrain").
"""

from __future__ import annotations

import argparse
from typing import Any

from twisted.internet import defer

from mmo.cli.common import CommandError, add_yellow, connected, to_json
from mmo.types import InlineCallbacks

__all__ = ["add_parser", "cmd_drain"]

BROKER_SERVICE = "broker"


def _services_of(view: Any, instance_id: str) -> list[str]:
    """The services ``instance_id`` is registered under, as ``view`` has them."""
    return sorted(name for name, held in view.instances.items() if instance_id in held)


@defer.inlineCallbacks
def _find(directory: Any, instance_id: str, service: str | None, timeout: float) -> Any:
    """The service of ``instance_id`` (``service`` if given), once the registry lists it."""
    view = directory.view

    def found() -> bool:
        return view.synced and (
            instance_id in view.instances.get(service, {})
            if service
            else bool(_services_of(view, instance_id))
        )

    try:
        yield view.wait_for(lambda: found() or (view.synced and view.warm), timeout)
    except defer.TimeoutError as e:
        raise CommandError(f"the registry at {', '.join(view.yellows)} did not answer") from e
    if not found():
        where = f" of service {service!r}" if service else ""
        raise CommandError(f"no instance {instance_id!r}{where} in the registry")
    if service:
        return service
    services = _services_of(view, instance_id)
    if len(services) > 1:
        raise CommandError(
            f"{instance_id!r} is registered under {', '.join(services)}: say which (--service)"
        )
    return services[0]


@defer.inlineCallbacks
def _drain_broker(directory: Any, instance_id: str, draining: bool, timeout: float) -> Any:
    """Tell the broker, then wait for its registry entry to say so."""
    from mmo.logic.links import drained
    from mmo.wire import encode_value

    sent = directory.send(
        BROKER_SERVICE, "drain", encode_value({"draining": draining}), instance=instance_id
    )
    if sent is None:
        raise CommandError(f"no live broker {instance_id!r}")
    view = directory.view

    def told() -> bool:
        held = view.instances.get(BROKER_SERVICE, {}).get(instance_id)
        return held is not None and drained(held) == draining

    try:
        yield view.wait_for(told, timeout)
    except defer.TimeoutError as e:
        raise CommandError(f"broker {instance_id!r} did not say so within {timeout:g}s") from e
    return {"instance": instance_id, "draining": draining}


@defer.inlineCallbacks
def cmd_drain(reactor: Any, args: argparse.Namespace) -> InlineCallbacks[None]:
    """Drain INSTANCE (or take it back with ``--undrain``) and print the outcome."""

    draining = not args.undrain

    @defer.inlineCallbacks
    def drain(directory: Any) -> InlineCallbacks[tuple[str, Any]]:
        if args.pool:
            service = yield _find(directory, args.pool, args.service, args.timeout)
            answer = yield directory.call(
                service,
                "drain_process",
                {"instance": args.instance, "draining": draining},
                instance=args.pool,
                timeout=args.timeout,
            )
            return service, answer
        service = yield _find(directory, args.instance, args.service, args.timeout)
        if service == BROKER_SERVICE:
            answer = yield _drain_broker(directory, args.instance, draining, args.timeout)
        else:
            answer = yield directory.call(
                service,
                "ops_drain",
                {"draining": draining},
                instance=args.instance,
                timeout=args.timeout,
            )
        return service, answer

    service, answer = yield connected(reactor, args.yellow, drain)
    if args.json:
        print(to_json(answer))
    else:
        state = "draining" if answer.get("draining") else "taking work again"
        print(f"{answer.get('instance', args.instance)} ({service}): {state}")


def add_parser(sub: Any) -> None:
    """Add ``drain`` to the ``mmo`` tool's subcommands."""
    drain = sub.add_parser(
        "drain", help="drain an instance (no new work; it finishes what it holds), or undrain it"
    )
    add_yellow(drain)
    drain.add_argument("instance", metavar="INSTANCE", help="the instance id")
    drain.add_argument("--undrain", action="store_true", help="take the instance back")
    drain.add_argument(
        "--service", help="its service (with --pool: the dispatcher's), if its id is under several"
    )
    drain.add_argument(
        "--pool", metavar="DISPATCHER", help="INSTANCE is a fight process of this dispatcher"
    )
    drain.add_argument("--json", action="store_true", help="print the answer as JSON")
    drain.add_argument("--timeout", type=float, default=5.0, help="deadline in seconds")
    drain.set_defaults(run=cmd_drain)
