"""``twistd mmo-brokerlist``: serve the list of live brokers over HTTP."""

from __future__ import annotations

from typing import Any, ClassVar

from twisted.application.service import IService
from typing_extensions import override

from mmo.brokerlist.config import BrokerlistConfig
from mmo.tap import MemberOptions


class Options(MemberOptions):
    """Options of ``twistd mmo-brokerlist``."""

    section = "brokerlist"
    config_class = BrokerlistConfig
    optParameters: ClassVar[list[list[Any]]] = [
        *MemberOptions.optParameters,
        ["listen", "l", None, "HTTP port, a strports description: tcp:6000:interface=127.0.0.1."],
    ]

    @override
    def build(self) -> IService:
        """The brokerlist's service tree."""
        from mmo.brokerlist.service import make_brokerlist_service

        return make_brokerlist_service(self.config)


def makeService(options: Options) -> IService:
    """The service tree built while the options were checked."""
    return options.service
