"""What every role's ``tap.Options`` shares: ``--config FILE``, ``--insecure``, overrides,
and building the role's service tree while the options are checked.

A role's options class names its TOML section and config class, lists its own
``optParameters`` with ``None`` defaults (a value given on the command line replaces
the file's, the rest comes from the file or the class defaults) and builds its service
tree in :meth:`RoleOptions.build`. Everything that can be wrong before the process
starts (a value, a handler path, a missing key in the environment) is found while
the options are parsed, and twistd shows it as a usage error naming the option.
"""

from __future__ import annotations

import os
import sys
from typing import Any, ClassVar

from twisted.application.service import IService
from twisted.logger import Logger
from twisted.python import usage
from typing_extensions import override

from mmo.config import INSECURE_ENV, ConfigError, build, load_toml, section
from mmo.ops import OPS_KEYS, OpsConfig, attach
from mmo.service import PreparedService
from mmo.telemetry import logs
from mmo.telemetry.site import parse_listen

__all__ = ["MemberOptions", "RoleOptions", "exit_if_start_fails", "inherit_ops", "usage_error"]

log = Logger()


def usage_error(error: ConfigError, options: usage.Options) -> usage.UsageError:
    """``error`` as twistd shows it: naming the option (``--handler: ...``) or the
    environment variable (``$MMO_AUTH_KEY: ...``) it is about."""
    key = error.key
    if key in {name.rstrip("=") for name in options.longOpt}:
        return usage.UsageError(f"--{key}: {error.reason}")
    if key.isupper() and key.startswith("MMO_"):
        return usage.UsageError(f"${key}: {error.reason}")
    return usage.UsageError(str(error))


def inherit_ops(ops: OpsConfig, args: tuple[str, ...]) -> tuple[str, ...]:
    """A child process's arguments ``args`` with the operators' settings of its parent
    that it does not set itself: an operator listener on the parent's host, on a free
    port (published in the registry), and the parent's log format."""
    extra: list[str] = []
    if ops.metrics is not None and "--metrics" not in args:
        host, _ = parse_listen(ops.metrics)
        extra += ["--metrics", f"[{host}]:0" if ":" in host else f"{host}:0"]
    if ops.log_format != "text" and "--log-format" not in args:
        extra += ["--log-format", ops.log_format]
    return (*args, *extra)


class RoleOptions(usage.Options):
    """Options of a role: ``--config FILE`` plus the role's own overrides.

    Args:
        build: build the service tree as the last step of parsing (the default);
            ``mmo-cluster`` passes False to check a child's arguments before it starts
            anything (the child checks its environment itself).

    Every role also takes the operators' settings (:class:`mmo.ops.OpsConfig`:
    ``--metrics``, ``--log-format``, ``--log-queue``, ``--otel-endpoint``), from its TOML
    section or the command line, and the tree it builds gets what they ask for.

    Attributes:
        config: the role's settings, once parsed.
        ops: the operators' settings, once parsed.
        service: the role's service tree, once built (what ``makeService`` returns).
    """

    #: TOML table holding this role's settings, e.g. ``"yellow"``.
    section: ClassVar[str]
    #: Frozen dataclass the settings are built into.
    config_class: ClassVar[type]
    #: Options that may be given more than once, collected into a list by ``opt_<name>``.
    multi: ClassVar[tuple[str, ...]] = ()
    #: Repeatable ``NAME=VALUE`` options (``opt_<name>`` calls :meth:`add_pair`) and the
    #: table of the config their pairs join, over the file's: ``{"set": "settings"}``.
    pairs: ClassVar[dict[str, str]] = {}

    optParameters: ClassVar[list[list[Any]]] = [
        ["config", "c", None, "TOML configuration file (see etc/)."],
        [
            "metrics",
            None,
            None,
            "Operator listener: /metrics, /healthz, /readyz (PORT on 127.0.0.1, or "
            "HOST:PORT; port 0: a free one, published in the registry).",
        ],
        ["log-format", None, None, "text (default) or json: one JSON object per line."],
        [
            "log-queue",
            None,
            None,
            "Log events held for the log collector at most (default 10000; 0: ship none).",
        ],
        ["otel-endpoint", None, None, "OTLP/HTTP URL to export traced requests' spans to."],
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
    ops: OpsConfig
    service: IService

    def __init__(self, build: bool = True) -> None:
        super().__init__()
        self._build = build
        for name in (*self.multi, *self.pairs):
            self[name] = []

    def add_pair(self, option: str, text: str) -> None:
        """Collect ``NAME=VALUE`` given to ``--option``."""
        name, eq, value = text.partition("=")
        if not eq or not name.strip():
            raise usage.UsageError(f"--{option} takes NAME=VALUE, not {text!r}")
        self[option].append((name.strip(), value.strip()))

    def build(self) -> IService:
        """The role's service tree, from ``self.config`` (not started)."""
        raise NotImplementedError

    def check(self) -> None:
        """Checks of the arguments beyond the config's own (a handler path, its settings).

        Raises:
            ConfigError: an argument is wrong.
        """

    def merge(self, values: dict[str, Any]) -> dict[str, Any]:
        """The file's settings (``values``) with the command line's over them."""
        for name, *_ in self.optParameters:
            if name != "config" and self[name] is not None:
                values[name] = self[name]
        for name in self.multi:
            if self[name]:
                values[name] = list(self[name])
        for option, table in self.pairs.items():
            if self[option]:
                values[table] = {**section(values, table), **dict(self[option])}
        return values

    @override
    def postOptions(self) -> None:
        """Merge file and command line into ``self.config``, check, build ``self.service``;
        anything wrong is a UsageError naming the option."""
        if self["insecure"] and self._build:
            # In the environment, so that the role's children (fight processes,
            # mmo-cluster's processes) make the same choice.
            os.environ[INSECURE_ENV] = "1"
        try:
            data = load_toml(self["config"]) if self["config"] else {}
            values = self.merge(section(data, self.section))
            ops = {k: values.pop(k) for k in list(values) if k.replace("_", "-") in OPS_KEYS}
            self.ops = build(OpsConfig, ops, prefix=f"[{self.section}] ")
            self.config = build(self.config_class, values, prefix=f"[{self.section}] ")
            self.check()
            if self._build:
                self.service = self.build()
                attach(self.service, self.ops)  # type: ignore[arg-type]
        except ConfigError as e:
            raise usage_error(e, self) from e
        parent = getattr(self, "parent", None)
        if self._build and self.ops.log_format == "json" and parent is not None:
            # twistd starts logging after parsing, with the observer its ``--logger`` names.
            # (twistd resolves the name after this, then calls it).
            logs.TWISTD_LOGFILE = parent.get("logfile")
            parent["logger"] = f"{logs.__name__}.{logs.twistd_json_logger.__name__}"


class MemberOptions(RoleOptions):
    """Options of a role that finds the others through yellow: ``--yellow ADDRESS``."""

    multi: ClassVar[tuple[str, ...]] = ("yellow",)

    def opt_yellow(self, address: str) -> None:
        """Yellow address (repeat, or separate with commas, for several)."""
        self["yellow"].extend(a.strip() for a in address.split(",") if a.strip())


def exit_if_start_fails(service: PreparedService, reactor: Any = None) -> None:
    """The policy of a role's process for ``service`` (its worker): if it cannot start,
    the process stops its tree and exits with status 1, so that what runs it (systemd's
    ``Restart=on-failure``, ``mmo-cluster``) sees the failure and starts it again.

    twistd has no way to end with a status other than 0 once the reactor runs: the
    process ends itself, after the tree has stopped and the log has been written (a
    stale pidfile, if any, is removed by the next twistd).
    """
    if reactor is None:
        from twisted.internet import reactor

    def failed(_: Any) -> None:
        log.error("the process cannot serve: stopping it (exit status 1)")
        reactor.addSystemEventTrigger("after", "shutdown", _exit, 1)
        reactor.stop()

    service.when_started().addErrback(failed)


def _exit(status: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(status)
