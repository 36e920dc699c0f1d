"""Configuration: TOML files read into frozen, typed dataclasses, validated in full.

A role's ``tap.Options`` reads ``--config FILE``, lays its command-line options
over the file's section, and builds the role's config class with :func:`build`.
Any problem is a :class:`ConfigError` naming the key and the reason; ``tap``
turns it into a ``UsageError`` before anything starts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is missing, unknown, of the wrong type or invalid."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file; a missing or malformed file is a :class:`ConfigError`."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError(str(path), e.strerror or str(e)) from e
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(str(path), f"not valid TOML: {e}") from e


def section(data: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The table ``[name]`` of a loaded TOML document (empty if absent)."""
    table = data.get(name, {})
    if not isinstance(table, dict):
        raise ConfigError(name, "must be a table")
    return dict(table)


def _coerce(key: str, hint: Any, value: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, arg, value)
            except ConfigError:
                pass
        raise ConfigError(key, f"expected {hint}, got {value!r}")
    if origin is tuple:
        (item,) = typing.get_args(hint)[:1]
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(key, f"expected a list, got {value!r}")
        return tuple(_coerce(key, item, v) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a table, got {value!r}")
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(key, f"expected true or false, got {value!r}")
    if hint is float:
        number: float | None = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            with contextlib.suppress(ValueError):
                number = float(value)
        if number is None or not math.isfinite(number):
            raise ConfigError(key, f"expected a finite number, got {value!r}")
        return number
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return int(value, 10)
        raise ConfigError(key, f"expected an integer, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(key, f"expected a string, got {value!r}")
    return value


def build(cls: type[T], values: Mapping[str, Any], prefix: str = "") -> T:
    """Make a config dataclass from ``values``, checking every key and type.

    Keys may use ``-`` or ``_``. After construction the class's ``validate()``
    method, if any, checks relations between values.
    """
    assert dataclasses.is_dataclass(cls)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for raw_key, value in values.items():
        name = raw_key.replace("-", "_")
        key = f"{prefix}{raw_key}"
        if name not in fields:
            raise ConfigError(key, "unknown setting")
        kwargs[name] = _coerce(key, hints[name], value)
    missing = [
        name
        for name, f in fields.items()
        if name not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{prefix}{missing[0]}", "is required")
    config = cls(**kwargs)
    validate = getattr(config, "validate", None)
    if validate is not None:
        validate()
    return config


def check_server_endpoint(key: str, description: str, example: str) -> None:
    """Check that ``description`` parses as a Twisted server endpoint (``tcp:...``,
    ``ssl:...``); it is never listened on here.

    Raises:
        ConfigError: it does not (naming ``key``, with ``example``).
    """
    from twisted.internet.endpoints import serverFromString

    try:
        # Parsing only: the endpoint is built around a placeholder and never listens.
        serverFromString(object(), description)
    except Exception as e:
        raise ConfigError(
            key, f"not a server endpoint: {description!r} ({e}); e.g. {example}"
        ) from e


def check_zmq_address(key: str, address: str) -> None:
    """Reject a value that is not a ZeroMQ address (``tcp://HOST:PORT``, ``ipc://...``)."""
    if not address.startswith(("tcp://", "ipc://", "inproc://")):
        raise ConfigError(key, f"not a ZeroMQ address: {address!r} (tcp://127.0.0.1:PORT)")


#: Environment variable that, set to 1, makes a process the one-machine demo: the
#: public demo token key is accepted and internal links may go without CURVE keys.
DEMO_ENV = "MMO_DEMO"
#: Environment variable that, set to 1, lets a role run its internal links without
#: CURVE keys (what ``--insecure`` sets, so that the role's children inherit it).
INSECURE_ENV = "MMO_INSECURE"


def demo_mode(env: Mapping[str, str] | None = None) -> bool:
    """Whether ``$MMO_DEMO`` is 1 (the one-machine demo)."""
    return (os.environ if env is None else env).get(DEMO_ENV, "") == "1"


def insecure_mode(env: Mapping[str, str] | None = None) -> bool:
    """Whether internal links may go without CURVE: ``$MMO_INSECURE`` or ``$MMO_DEMO`` is 1."""
    env = os.environ if env is None else env
    return env.get(INSECURE_ENV, "") == "1" or demo_mode(env)
