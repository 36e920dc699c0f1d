"""``twistd mmo-yellow``: run a registry."""

from __future__ import annotations

from typing import Any, ClassVar

from twisted.application.service import MultiService

from mmo.tap import RoleOptions, build_role
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


def makeService(options: Options) -> MultiService:
    """Build the yellow service tree from parsed options."""
    from mmo.yellow.service import make_yellow_service

    return build_role("mmo-yellow", lambda: make_yellow_service(options.config))
