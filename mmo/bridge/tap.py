"""``twistd mmo-bridge``: one bridge of a cluster to the others (docs/bridge.md)."""

from __future__ import annotations

from typing import Any, ClassVar

from twisted.application.service import IService
from typing_extensions import override

from mmo.bridge.config import BridgeConfig
from mmo.tap import MemberOptions


class Options(MemberOptions):
    """Options of ``twistd mmo-bridge``."""

    section = "bridge"
    config_class = BridgeConfig
    multi = ("yellow", "export", "channel")
    pairs = {"peer": "peers"}
    optParameters: ClassVar[list[list[Any]]] = [
        *MemberOptions.optParameters,
        ["cluster", None, None, "This cluster's name (its services: CLUSTER:SERVICE elsewhere)."],
        ["listen", "l", None, "ZeroMQ address other clusters' bridges connect to."],
        ["link-keys", None, None, "Keys of the links to other clusters (mmo keys DIR; peers' "
         "bridge keys as DIR/authorized/CLUSTER.key)."],
        ["instance-id", None, None, "Instance id (default: $MMO_NAME or bridge-host-pid)."],
        ["bind-host", None, None, "Interface of the sockets this cluster reaches it at."],
        ["advertise-host", None, None, "Host (or interface) the registry lists."],
        ["heartbeat", None, None, "Seconds between registry heartbeats and link hellos."],
        ["link-timeout", None, None, "Seconds of silence before a peer's link is dead."],
        ["hop-margin", None, None, "Seconds a forwarded call's deadline loses at a bridge."],
    ]  # fmt: skip

    def opt_peer(self, mapping: str) -> None:
        """Another cluster's bridge(s): CLUSTER=ADDRESS[,ADDRESS...] (repeat for several)."""
        self.add_pair("peer", mapping)

    def opt_export(self, services: str) -> None:
        """A service the other clusters may use (repeat, or separate with commas)."""
        self["export"].extend(s.strip() for s in services.split(",") if s.strip())

    def opt_channel(self, prefixes: str) -> None:
        """A prefix of the channels shared with the other clusters (repeat, or commas)."""
        self["channel"].extend(p.strip() for p in prefixes.split(",") if p.strip())

    @override
    def merge(self, values: dict[str, Any]) -> dict[str, Any]:
        """The file's settings with the command line's over them (``--export`` and
        ``--channel`` are the config's ``exports`` and ``channels``)."""
        values = super().merge(values)
        for option, key in (("export", "exports"), ("channel", "channels")):
            if option in values:
                values[key] = values.pop(option)
        return values

    @override
    def build(self) -> IService:
        """The bridge's service tree."""
        from mmo.bridge.service import make_bridge_service

        return make_bridge_service(self.config)


def makeService(options: Options) -> IService:
    """The service tree built while the options were checked."""
    return options.service
