"""What every role's ``tap.Options`` shares: ``--config FILE``, ``--insecure``, overrides,
and building the role's service tree while the options are checked.

A role's options class names its TOML section and config class, lists its own
``optParameters`` with ``None`` defaults (a value given on the command line replaces
the file's, the rest comes from the file or the class defaults) and builds its service
tree in :meth:`RoleOptions.build`. Everything that can be wrong before the process
starts (a value, a handler path, a missing key in the environment) is found while
the options are parsed, and twistd shows it as a usage error naming the option.

A role's process reloads its configuration on SIGHUP (:class:`Reloader`, the tree's
child ``reload``, whose :meth:`Reloader.reload` is also the entry point for a call): it
reads its ``--config`` file again, with the command line over it, checks it as at start,
and applies what may change while it runs: the log level (every role), and what the
tree's ``reload`` hook takes (the broker: limits and routes). A bad file changes nothing.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import threading
from collections.abc import Callable, Collection
from typing import Any, ClassVar

from twisted.application.service import IService, MultiService, Service
from twisted.logger import Logger
from twisted.python import usage
from typing_extensions import override

from mmo.config import INSECURE_ENV, ConfigError, build, load_toml, section
from mmo.ops import OPS_KEYS, OpsConfig, attach
from mmo.service import PreparedService
from mmo.telemetry import logs
from mmo.telemetry.site import parse_listen

__all__ = [
    "MemberOptions",
    "Reloaded",
    "Reloader",
    "RoleOptions",
    "exit_if_start_fails",
    "inherit_ops",
    "usage_error",
]

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
    if ops.log_level != "debug" and "--log-level" not in args:
        extra += ["--log-level", ops.log_level]
    return (*args, *extra)


class RoleOptions(usage.Options):
    """Options of a role: ``--config FILE`` plus the role's own overrides.

    Args:
        build: build the service tree as the last step of parsing (the default);
            ``mmo-cluster`` passes False to check a child's arguments before it starts
            anything (the child checks its environment itself).

    Every role also takes the operators' settings (:class:`mmo.ops.OpsConfig`:
    ``--metrics``, ``--log-format``, ``--log-level``, ``--log-queue``, ``--otel-endpoint``),
    from its TOML section or the command line, and the tree it builds gets what they ask for.

    Under twistd, the tree gets a :class:`Reloader` (child ``reload``): SIGHUP reloads
    the settings (:meth:`reparse`).

    Attributes:
        config: the role's settings, once parsed (a reload replaces it with the
            settings in force).
        ops: the operators' settings, once parsed.
        service: the role's service tree, once built (what ``makeService`` returns).
        config_path: the ``--config`` file as an absolute path (a reload reads it again,
            whatever the process's directory is by then), or None.
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
            "log-level",
            None,
            None,
            "Least severe events logged: debug (default: everything), info, warn or error.",
        ],
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
    config_path: str | None = None

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
        if self["config"] and self.config_path is None:
            self.config_path = os.path.abspath(self["config"])
        try:
            data = load_toml(self.config_path) if self.config_path else {}
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
        if self._build:
            logs.LEVEL.set(self.ops.log_level)
        parent = getattr(self, "parent", None)
        if self._build and parent is not None:
            # twistd starts logging after parsing, with the observer its ``--logger`` names
            # (twistd resolves the name after this, then calls it): the one it would use,
            # behind the log level.
            logs.TWISTD_LOGFILE = parent.get("logfile")
            logs.TWISTD_OPTIONS = dict(parent)
            logs.TWISTD_JSON = self.ops.log_format == "json"
            logs.TWISTD_LOGGER = parent.get("logger")
            parent["logger"] = f"{logs.__name__}.{logs.twistd_logger.__name__}"
            if isinstance(self.service, MultiService):
                Reloader(self).setServiceParent(self.service)

    def reparse(self) -> RoleOptions:
        """Options parsed again as at start: the same command line, the ``--config`` file
        read now, every check made (nothing is built). Its ``config`` and ``ops`` are the
        settings a reload would apply.

        Raises:
            usage.UsageError: the file or a value is wrong (named as at start).
        """
        fresh = type(self)(build=False)
        fresh.update({k: list(v) if isinstance(v, list) else v for k, v in self.items()})
        fresh.config_path = self.config_path
        fresh.postOptions()
        return fresh


def _changes(old: Any, new: Any) -> dict[str, tuple[Any, Any]]:
    """The fields of two config dataclasses that differ: name -> (old, new)."""
    return {
        f.name: (getattr(old, f.name), getattr(new, f.name))
        for f in dataclasses.fields(old)
        if getattr(old, f.name) != getattr(new, f.name)
    }


def _show(changes: dict[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{k.replace('_', '-')} {a!r} -> {b!r}" for k, (a, b) in changes.items())


@dataclasses.dataclass
class Reloaded:
    """What a reload did.

    Attributes:
        error: why the settings could not be read (nothing changed), or None.
        applied: the settings now in force: name -> (old, new).
        restart: the settings changed in the file that need a restart (left as they
            were): name -> (in force, in the file).
    """

    error: str | None = None
    applied: dict[str, tuple[Any, Any]] = dataclasses.field(default_factory=dict)
    restart: dict[str, tuple[Any, Any]] = dataclasses.field(default_factory=dict)


#: The operators' settings a reload applies live (the others need a restart).
LIVE_OPS = frozenset({"log_level"})


class Reloader(Service):
    """Reloads a role's settings on SIGHUP, or when :meth:`reload` is called (in the
    reactor thread).

    The role's tree may carry a hook, ``tree.reload(config) -> names``: it applies what
    it can of the new (checked) ``config`` and returns the names of the settings it
    took; without one, only the log level changes (the workers, for now).

    Args:
        options: the role's parsed options (their ``config`` and ``ops`` are kept as
            the settings in force).
        reactor: the reactor SIGHUP hands the reload to.
    """

    name = "reload"

    def __init__(self, options: RoleOptions, reactor: Any = None) -> None:
        self.options = options
        self.reactor = reactor
        self._previous: Any = None

    @override
    def startService(self) -> None:
        """Reload on SIGHUP (from the main thread, where signals are handled)."""
        super().startService()
        if self.reactor is None:
            from twisted.internet import reactor

            self.reactor = reactor
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGHUP, self._hangup)

    @override
    def stopService(self) -> None:
        """Give SIGHUP back to what handled it before."""
        super().stopService()
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)
            self._previous = None

    def _hangup(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self.reload)

    def reload(self) -> Reloaded:
        """Read the settings again and apply what may change live; log what changed,
        what needs a restart, or why nothing changed."""
        options = self.options
        role = options.section
        path = options.config_path or "(no --config file)"
        try:
            fresh = options.reparse()
        except usage.UsageError as e:
            log.error(
                "{role}: reload of {path} failed: {error}; nothing changed, the settings "
                "in force stay",
                role=role,
                path=path,
                error=str(e),
            )
            return Reloaded(error=str(e))
        ops_changes = _changes(options.ops, fresh.ops)
        changes = _changes(options.config, fresh.config)
        hook: Callable[[Any], Collection[str]] | None = getattr(options.service, "reload", None)
        live: Collection[str] = ()
        if changes and hook is not None:
            try:
                live = hook(fresh.config)
            except Exception:
                log.failure("{role}: reload: applying the new settings failed", role=role)
                live = ()
        applied = {k: v for k, v in changes.items() if k in live}
        applied_ops = {k: v for k, v in ops_changes.items() if k in LIVE_OPS}
        options.config = dataclasses.replace(
            options.config, **{k: new for k, (_, new) in applied.items()}
        )
        options.ops = dataclasses.replace(
            options.ops, **{k: new for k, (_, new) in applied_ops.items()}
        )
        result = Reloaded(
            applied={**applied_ops, **applied},
            restart={
                **{k: v for k, v in ops_changes.items() if k not in applied_ops},
                **{k: v for k, v in changes.items() if k not in applied},
            },
        )
        if not result.applied and not result.restart:
            log.info("{role}: reloaded {path}: nothing changed", role=role, path=path)
        if result.applied:
            log.info(
                "{role}: reloaded {path}: applied {applied}",
                role=role,
                path=path,
                applied=_show(result.applied),
            )
        if result.restart:
            log.warn(
                "{role}: reloaded {path}: {settings} needs a restart (kept as it was){why}",
                role=role,
                path=path,
                settings=_show(result.restart),
                why=""
                if hook is not None
                else f"; a {role} applies only the log level live for now",
            )
        if "log_level" in applied_ops:
            # Last: what the reload did is logged at the level it is leaving.
            logs.LEVEL.set(fresh.ops.log_level)
        return result


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
