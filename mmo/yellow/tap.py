"""``twistd mmo-yellow``: run a registry."""

from __future__ import annotations

from typing import Any, ClassVar

from twisted.application.service import IService
from typing_extensions import override

from mmo.tap import RoleOptions
from mmo.yellow.config import YellowConfig


class Options(RoleOptions):
    """Options of ``twistd mmo-yellow``."""

    section = "yellow"
    config_class = YellowConfig
    optParameters: ClassVar[list[list[Any]]] = [
        *RoleOptions.optParameters,
        ["listen", "l", None, "ZeroMQ address to bind, e.g. tcp://127.0.0.1:5555."],
        ["expire-interval", None, None, "Seconds between sweeps for expired instances."],
    ]

    @override
    def build(self) -> IService:
        """The yellow's service tree."""
        from mmo.yellow.service import make_yellow_service

        return make_yellow_service(self.config)


def makeService(options: Options) -> IService:
    """The service tree built while the options were checked."""
    return options.service
