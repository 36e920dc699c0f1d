"""What every role's ``tap.Options`` shares: ``--config FILE`` and overrides.

A role's options class names its TOML section and config class and lists its
own ``optParameters`` with ``None`` defaults: a value given on the command
line replaces the file's, the rest comes from the file or the class defaults.
"""

from __future__ import annotations

from typing import Any, ClassVar

from twisted.python import usage
from typing_extensions import override

from mmo.config import ConfigError, build, load_toml, section


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
