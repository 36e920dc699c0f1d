"""What every role's ``tap.Options`` shares: ``--config FILE``, ``--insecure``, overrides.

A role's options class names its TOML section and config class and lists its
own ``optParameters`` with ``None`` defaults: a value given on the command
line replaces the file's, the rest comes from the file or the class defaults.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from twisted.python import usage
from typing_extensions import override

from mmo.config import INSECURE_ENV, ConfigError, build, load_toml, section

T = TypeVar("T")


def build_role(role: str, make: Callable[[], T]) -> T:
    """Build a role's service tree with ``make()``; a ConfigError raised while doing it
    (no CURVE keys, no token key, a handler refusing its settings) ends the process with
    its message instead of a traceback."""
    try:
        return make()
    except ConfigError as e:
        raise SystemExit(f"{role}: {e}") from None


class RoleOptions(usage.Options):
    """Options of a role: ``--config FILE`` plus the role's own overrides."""

    #: TOML table holding this role's settings, e.g. ``"yellow"``.
    section: ClassVar[str]
    #: Frozen dataclass the settings are built into.
    config_class: ClassVar[type]
    #: Options that may be given more than once, collected into a list.
    multi: ClassVar[tuple[str, ...]] = ()

    optParameters: ClassVar[list[list[Any]]] = [
        ["config", "c", None, "TOML configuration file (see etc/)."],
    ]
    optFlags: ClassVar[list[list[Any]]] = [
        [
            "insecure",
            None,
            "Run the internal links without CURVE keys, in the clear (logged as a warning; "
            "children inherit it as MMO_INSECURE=1). For a machine of your own only.",
        ],
    ]

    config: Any

    def __init__(self) -> None:
        super().__init__()
        for name in self.multi:
            self[name] = []

    def __getattr__(self, name: str) -> Any:
        # usage.Options looks up opt_<name> methods: collect repeatable options.
        if name.startswith("opt_") and name[4:].replace("_", "-") in self.multi:
            key = name[4:].replace("_", "-")
            return lambda value: self[key].append(value)
        raise AttributeError(name)

    @override
    def postOptions(self) -> None:
        """Merge file and command line into ``self.config``; bad values are a UsageError."""
        if self["insecure"]:
            # In the environment, so that the role's children (fight processes,
            # mmo-cluster's processes) make the same choice.
            os.environ[INSECURE_ENV] = "1"
        try:
            data = load_toml(self["config"]) if self["config"] else {}
            values = section(data, self.section)
            for name, *_ in self.optParameters:
                if name != "config" and self[name] is not None:
                    values[name] = self[name]
            for name in self.multi:
                if self[name]:
                    values[name] = list(self[name])
            self.config = build(self.config_class, values, prefix=f"[{self.section}] ")
        except ConfigError as e:
            raise usage.UsageError(str(e)) from e
