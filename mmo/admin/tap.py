"""``twistd mmo-admin``: the operators' web console."""

from __future__ import annotations

from typing import Any, ClassVar

from twisted.application.service import IService
from typing_extensions import override

from mmo.admin.config import AdminConfig
from mmo.tap import MemberOptions


class Options(MemberOptions):
    """Options of ``twistd mmo-admin``."""

    section = "admin"
    config_class = AdminConfig
    optParameters: ClassVar[list[list[Any]]] = [
        *MemberOptions.optParameters,
        [
            "listen",
            "l",
            None,
            "HTTP(S) port, a strports description: tcp:7000:interface=127.0.0.1.",
        ],
        ["accounts", None, None, "File of admin accounts (lines from mmo admin-password NAME)."],
        ["poll", None, None, "Seconds between two reads of every process (default 2)."],
        ["history", None, None, "Seconds of traffic the charts show (default 300)."],
        ["session-ttl", None, None, "Seconds an admin stays logged in unused (default 28800)."],
    ]
    multi: ClassVar[tuple[str, ...]] = ("yellow", "target")

    def opt_target(self, address: str) -> None:
        """An operator listener the registry does not list (a yellow's), HOST:PORT."""
        self["target"].extend(a.strip() for a in address.split(",") if a.strip())

    @override
    def merge(self, values: dict[str, Any]) -> dict[str, Any]:
        """As every role's, but ``--target`` is not a setting of the config."""
        merged = super().merge(values)
        self.targets = tuple(merged.pop("target", ()))
        return merged

    @override
    def build(self) -> IService:
        """The console's tree (no admin account outside MMO_DEMO=1 is a usage error)."""
        from mmo.admin.service import make_admin_service

        return make_admin_service(self.config, extra=self.targets)


def makeService(options: Options) -> IService:
    """The service tree built while the options were checked."""
    return options.service
