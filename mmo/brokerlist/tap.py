"""``twistd mmo-brokerlist``: serve the list of live brokers over HTTP."""

from __future__ import annotations

from typing import Any, ClassVar

from twisted.application.service import MultiService

from mmo.brokerlist.config import BrokerlistConfig
from mmo.tap import RoleOptions, build_role


class Options(RoleOptions):
    """Options of ``twistd mmo-brokerlist``."""

    section = "brokerlist"
    config_class = BrokerlistConfig
    multi = ("yellow",)
    optParameters: ClassVar[list[list[Any]]] = [
        *RoleOptions.optParameters,
        ["listen", "l", None, "HTTP port, a strports description: tcp:6000:interface=127.0.0.1."],
    ]

    def opt_yellow(self, address: str) -> None:
        """Yellow address (repeat, or separate with commas, for several)."""
        self["yellow"].extend(a.strip() for a in address.split(",") if a.strip())


def makeService(options: Options) -> MultiService:
    """Build the brokerlist service tree from parsed options."""
    from mmo.brokerlist.service import make_brokerlist_service

    return build_role("mmo-brokerlist", lambda: make_brokerlist_service(options.config))
