"""Prometheus service discovery from the registry: ``GET /sd`` on the yellow's operator
listener answers in Prometheus' HTTP SD format
(https://prometheus.io/docs/prometheus/latest/http_sd/), so that Prometheus scrapes every
process that publishes its operator listener, and the yellow itself.

A registered instance is a target when its registry meta has ``metrics`` (its operator
listener's ``host:port``, which every role started with ``--metrics`` publishes). Each
target group has one target and three labels:

* ``role``: the process's role: its meta ``role`` if it has one, else ``broker`` and
  ``brokerlist`` for the services of those names, ``fight`` for a fight dispatcher (meta
  ``fight_handler``), else ``worker``;
* ``mmo_service``: the service it registered as (not ``service``: the metrics already use
  ``service`` for the service called or served, and a target label of that name would
  push theirs aside as ``exported_service``);
* ``mmo_instance``: its instance id.

A process that registers more than once (under several services) publishes one listener:
it is one target, labelled after its first registration in service order. The yellow
lists itself (role and service ``yellow``) but no other yellow: point Prometheus at each
yellow's ``/sd`` (it drops the duplicates).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from twisted.web import resource, server

from mmo.wire import WireError, from_value
from mmo.wire.gen.mmo.ttypes import Instance

__all__ = ["ServiceDiscovery", "instance_role", "target_groups"]

#: Hosts that say "every interface": not an address to scrape.
_UNSPECIFIED = frozenset({"", "0.0.0.0", "::", "[::]", "*"})
#: Roles that register under their own name as the service (the broker's is
#: ``mmo.logic.sessions.BROKER_SERVICE``: the registry does not load the logic layer for it).
ROLE_SERVICES = frozenset({"broker", "brokerlist"})


def _meta(instance: Instance, key: str) -> Any:
    value = (instance.meta or {}).get(key)
    if value is None:
        return None
    try:
        return from_value(value)
    except (WireError, ValueError, TypeError, AttributeError):
        return None


def instance_role(instance: Instance) -> str:
    """The role of the process that registered ``instance`` (see the module's docstring)."""
    role = _meta(instance, "role")
    if isinstance(role, str) and role:
        return role
    if instance.service_name in ROLE_SERVICES:
        return str(instance.service_name)
    if (instance.meta or {}).get("fight_handler") is not None:
        return "fight"
    return "worker"


def _group(address: str, role: str, service: str, instance_id: str) -> dict[str, Any]:
    return {
        "targets": [address],
        "labels": {"role": role, "mmo_service": service, "mmo_instance": instance_id},
    }


def target_groups(
    instances: Iterable[Instance], own: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Prometheus' target groups for ``instances`` (those with meta ``metrics``), after
    ``own`` (the yellow's group) if given; one group per address."""
    groups: dict[str, dict[str, Any]] = {}
    if own is not None:
        groups[own["targets"][0]] = own
    ordered = sorted(instances, key=lambda i: (i.service_name or "", i.instance_id or ""))
    for instance in ordered:
        address = _meta(instance, "metrics")
        if not isinstance(address, str) or not address or address in groups:
            continue
        groups[address] = _group(
            address, instance_role(instance), instance.service_name, instance.instance_id
        )
    return list(groups.values())


def _with_host(address: str, host: str) -> str:
    """``address`` (``host:port``) with the host replaced when it is unspecified."""
    listen_host, _, port = address.rpartition(":")
    if listen_host not in _UNSPECIFIED or not host:
        return address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ServiceDiscovery(resource.Resource):
    """``GET /sd``: the registry's live instances as Prometheus HTTP SD target groups.

    Args:
        instances: the registry's live instances now.
        own: the yellow's own ``(address, instance id)``; address None while it does not
            listen (then it is not listed). An unspecified host (``0.0.0.0``) is replaced
            by the host the request was sent to, where Prometheus reaches the yellow.
    """

    isLeaf = True

    def __init__(
        self,
        instances: Callable[[], Iterable[Instance]],
        own: Callable[[], tuple[str | None, str]],
    ) -> None:
        super().__init__()
        self._instances = instances
        self._own = own

    def render_GET(self, request: server.Request) -> bytes:
        """The target groups, as JSON."""
        address, instance_id = self._own()
        own = None
        if address:
            host = request.getRequestHostname().decode("latin-1")
            own = _group(_with_host(address, host), "yellow", "yellow", instance_id)
        groups = target_groups(self._instances(), own)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(groups, sort_keys=True).encode() + b"\n"
