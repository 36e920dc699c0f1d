"""Configuration: typed building, TOML loading, and the roles' command-line Options."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from twisted.python.usage import UsageError

from mmo.config import ConfigError, build, load_toml, section
from mmo.examples.echo import EchoService
from mmo.worker.config import WorkerConfig
from mmo.worker.tap import Options as WorkerOptions
from mmo.yellow.config import YellowConfig
from mmo.yellow.tap import Options as YellowOptions

ECHO = "mmo.examples.echo:EchoService"


@dataclasses.dataclass(frozen=True)
class Sample:
    """A config class using every kind of field build() knows."""

    name: str
    count: int = 1
    ratio: float = 0.5
    flag: bool = False
    hosts: tuple[str, ...] = ()
    label: str | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    max_size: int = 10


def write(tmp_path: Path, text: str, name: str = "mmo.toml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


# -- build --------------------------------------------------------------------------


def test_build_typed_values() -> None:
    """Values of the right types build a frozen config with exactly those values."""
    config = build(
        Sample,
        {
            "name": "n",
            "count": 3,
            "ratio": 2,
            "flag": True,
            "hosts": ["a", "b"],
            "label": None,
            "extra": {"k": 1},
        },
    )
    assert config == Sample("n", 3, 2.0, True, ("a", "b"), None, {"k": 1})
    assert isinstance(config.ratio, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.name = "other"  # type: ignore[misc]


def test_build_defaults() -> None:
    """Settings not given take the class defaults."""
    assert build(Sample, {"name": "n"}) == Sample("n")


def test_unknown_key_is_refused() -> None:
    """An unknown setting is a ConfigError naming it (with the section prefix)."""
    with pytest.raises(ConfigError) as info:
        build(Sample, {"name": "n", "colour": "red"}, prefix="[game] ")
    assert info.value.key == "[game] colour"
    assert info.value.reason == "unknown setting"
    assert str(info.value) == "[game] colour: unknown setting"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("name", 5),
        ("count", "many"),
        ("count", 1.5),
        ("count", True),
        ("ratio", "fast"),
        ("ratio", True),
        ("flag", "yes"),
        ("flag", 1),
        ("hosts", 5),
        ("hosts", [1, 2]),
        ("label", 3),
        ("extra", "k=1"),
    ],
)
def test_wrong_type_is_refused(key: str, value: Any) -> None:
    """A value of the wrong type is a ConfigError naming the key and showing the value."""
    values = {"name": "n", key: value}
    with pytest.raises(ConfigError) as info:
        build(Sample, values)
    assert info.value.key == key
    # A bad list item is shown by itself, any other bad value whole.
    shown = value[0] if isinstance(value, list) else value
    assert repr(shown) in info.value.reason


def test_missing_required_is_refused() -> None:
    """A required setting left out is a ConfigError naming it."""
    with pytest.raises(ConfigError) as info:
        build(Sample, {"count": 2}, prefix="[game] ")
    assert (info.value.key, info.value.reason) == ("[game] name", "is required")


def test_numbers_from_command_line_strings() -> None:
    """Numeric settings given as strings (as on a command line) are converted."""
    config = build(Sample, {"name": "n", "count": "42", "ratio": "0.25"})
    assert (config.count, config.ratio) == (42, 0.25)
    assert build(Sample, {"name": "n", "count": "-3"}).count == -3


def test_tuple_from_comma_separated_string() -> None:
    """A list setting given as one string is split on commas, blanks dropped."""
    config = build(Sample, {"name": "n", "hosts": " a, b,,c , "})
    assert config.hosts == ("a", "b", "c")
    assert build(Sample, {"name": "n", "hosts": ""}).hosts == ()


def test_dash_and_underscore_keys_are_the_same() -> None:
    """A key may be written with '-' or '_'; errors keep the spelling the user wrote."""
    assert build(Sample, {"name": "n", "max-size": 5}).max_size == 5
    assert build(Sample, {"name": "n", "max_size": 5}).max_size == 5
    with pytest.raises(ConfigError) as info:
        build(Sample, {"name": "n", "max-size": "big"})
    assert info.value.key == "max-size"


def test_validate_runs_after_build() -> None:
    """A config class's validate() is applied: relations and formats are checked too."""
    with pytest.raises(ConfigError) as info:
        build(YellowConfig, {"listen": "127.0.0.1:5555"})
    assert info.value.key == "listen"
    with pytest.raises(ConfigError) as info:
        build(YellowConfig, {"expire-interval": 60})
    assert info.value.key == "expire-interval"
    with pytest.raises(ConfigError) as info:
        build(WorkerConfig, {"yellow": "", "handler": ECHO})
    assert info.value.key == "yellow"


# -- TOML ---------------------------------------------------------------------------


def test_load_toml(tmp_path: Path) -> None:
    """A valid TOML file loads into nested dicts; section() picks one table."""
    path = write(tmp_path, '[yellow]\nlisten = "tcp://127.0.0.1:6000"\n[worker]\nheartbeat = 0.5\n')
    data = load_toml(path)
    assert section(data, "yellow") == {"listen": "tcp://127.0.0.1:6000"}
    assert section(data, "worker") == {"heartbeat": 0.5}
    assert section(data, "absent") == {}


def test_section_that_is_not_a_table(tmp_path: Path) -> None:
    """A role's key that is a value instead of a table is a ConfigError naming it."""
    data = load_toml(write(tmp_path, 'yellow = "tcp://127.0.0.1:6000"\n'))
    with pytest.raises(ConfigError) as info:
        section(data, "yellow")
    assert info.value.key == "yellow"


def test_load_missing_file(tmp_path: Path) -> None:
    """A missing file is a ConfigError naming the path and the reason."""
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_toml(path)
    assert info.value.key == str(path)
    assert "No such file" in info.value.reason


def test_load_directory(tmp_path: Path) -> None:
    """A path that is a directory is a ConfigError, not a traceback."""
    with pytest.raises(ConfigError) as info:
        load_toml(tmp_path)
    assert info.value.key == str(tmp_path)


@pytest.mark.parametrize(
    "text", ["[yellow\n", "listen = \n", "a = 1\na = 2\n", "x = 'unterminated\n"]
)
def test_load_bad_toml(tmp_path: Path, text: str) -> None:
    """A file that is not valid TOML is a ConfigError saying so."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_toml(path)
    assert info.value.key == path
    assert "not valid TOML" in info.value.reason


# -- yellow Options -------------------------------------------------------------------


def yellow(*args: str) -> YellowConfig:
    options = YellowOptions()
    options.parseOptions(list(args))
    config = options.config
    assert isinstance(config, YellowConfig)
    return config


def worker(*args: str) -> WorkerOptions:
    options = WorkerOptions()
    options.parseOptions(list(args))
    return options


def test_yellow_defaults() -> None:
    """With no arguments the yellow gets the default config."""
    assert yellow() == YellowConfig()


def test_yellow_command_line() -> None:
    """Command-line options become typed config values."""
    config = yellow("--listen", "tcp://127.0.0.1:6001", "--expire-interval", "0.5")
    assert config.listen == "tcp://127.0.0.1:6001"
    assert config.expire_interval == 0.5
    assert yellow("-l", "ipc:///tmp/y").listen == "ipc:///tmp/y"


@pytest.mark.parametrize(
    ("args", "key"),
    [
        (["--expire-interval", "soon"], "expire-interval"),
        (["--expire-interval", "100"], "expire-interval"),
        (["--listen", "127.0.0.1:5555"], "listen"),
    ],
)
def test_yellow_bad_value_is_usage_error(args: list[str], key: str) -> None:
    """A bad value is a UsageError that names the key."""
    with pytest.raises(UsageError, match=key):
        yellow(*args)


def test_yellow_file_overridden_by_command_line(tmp_path: Path) -> None:
    """Values from --config FILE apply, and those also given on the command line are replaced."""
    path = write(
        tmp_path,
        '[yellow]\nlisten = "tcp://127.0.0.1:7000"\nexpire-interval = 1.0\nwatch_lease = 9\n',
    )
    config = yellow("--config", path, "--listen", "tcp://127.0.0.1:7001")
    assert config == YellowConfig(
        listen="tcp://127.0.0.1:7001", expire_interval=1.0, watch_lease=9.0
    )
    assert yellow("-c", path).listen == "tcp://127.0.0.1:7000"


def test_yellow_ignores_other_sections(tmp_path: Path) -> None:
    """Settings of other roles in the same file do not disturb the yellow."""
    path = write(tmp_path, '[worker]\nhandler = "x:Y"\n[yellow]\nwatch-lease = 2.0\n')
    assert yellow("--config", path).watch_lease == 2.0


def test_yellow_bad_file_is_usage_error(tmp_path: Path) -> None:
    """Unknown keys, bad types, bad TOML and a missing file are each a UsageError."""
    unknown = write(tmp_path, "[yellow]\nlisten_on = 1\n", "unknown.toml")
    with pytest.raises(UsageError, match=r"\[yellow\] listen_on: unknown setting"):
        yellow("--config", unknown)
    typed = write(tmp_path, '[yellow]\nwatch-lease = "long"\n', "typed.toml")
    with pytest.raises(UsageError, match="watch-lease"):
        yellow("--config", typed)
    broken = write(tmp_path, "[yellow\n", "broken.toml")
    with pytest.raises(UsageError, match="not valid TOML"):
        yellow("--config", broken)
    with pytest.raises(UsageError, match=r"missing\.toml"):
        yellow("--config", str(tmp_path / "missing.toml"))


# -- worker Options -------------------------------------------------------------------


def test_worker_command_line() -> None:
    """A worker's options build its config and import its handler class before starting."""
    options = worker(
        "--yellow", "tcp://127.0.0.1:5555", "--handler", ECHO, "--heartbeat", "0.5", "-s", "e2"
    )
    config = options.config
    assert config.yellow == ("tcp://127.0.0.1:5555",)
    assert config.handler == ECHO
    assert config.heartbeat == 0.5
    assert config.service == "e2"
    assert options.handler_class is EchoService


def test_worker_yellow_repeated_and_comma_separated() -> None:
    """--yellow may be repeated and each may hold several comma-separated addresses, in order."""
    options = worker(
        "--yellow",
        "tcp://127.0.0.1:1",
        "--yellow",
        "tcp://127.0.0.1:2, tcp://127.0.0.1:3",
        "--handler",
        ECHO,
    )
    assert options.config.yellow == ("tcp://127.0.0.1:1", "tcp://127.0.0.1:2", "tcp://127.0.0.1:3")


def test_worker_file_values_and_override(tmp_path: Path) -> None:
    """The [worker] table supplies values; command-line --yellow replaces the file's list."""
    path = write(
        tmp_path,
        "[worker]\n"
        'yellow = ["tcp://127.0.0.1:1", "tcp://127.0.0.1:2"]\n'
        f'handler = "{ECHO}"\n'
        "drain-timeout = 3\n",
    )
    from_file = worker("--config", path).config
    assert from_file.yellow == ("tcp://127.0.0.1:1", "tcp://127.0.0.1:2")
    assert from_file.drain_timeout == 3.0
    overridden = worker("--config", path, "--yellow", "tcp://127.0.0.1:9").config
    assert overridden.yellow == ("tcp://127.0.0.1:9",)
    assert overridden.handler == ECHO


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--handler", ECHO], r"\[worker\] yellow: is required"),
        (["--yellow", "tcp://127.0.0.1:1"], r"\[worker\] handler: is required"),
        (["--yellow", "127.0.0.1:1", "--handler", ECHO], "yellow: not a ZeroMQ address"),
        (["--yellow", "tcp://127.0.0.1:1", "--handler", "EchoService"], "handler"),
        (["--yellow", "tcp://127.0.0.1:1", "--handler", "no.such.module:X"], "handler"),
        (["--yellow", "tcp://127.0.0.1:1", "--handler", "mmo.errors:MmoError"], "handler"),
        (["--yellow", "tcp://127.0.0.1:1", "--handler", ECHO, "--heartbeat", "60"], "heartbeat"),
        (["--yellow", "tcp://127.0.0.1:1", "--handler", ECHO, "--heartbeat", "x"], "heartbeat"),
    ],
)
def test_worker_bad_options_are_usage_errors(args: list[str], message: str) -> None:
    """Each bad or missing worker option is a UsageError naming the key, raised before start."""
    with pytest.raises(UsageError, match=message):
        worker(*args)


def test_worker_unknown_option_is_usage_error() -> None:
    """An option the worker does not have is a UsageError from the parser."""
    with pytest.raises(UsageError):
        worker("--yellow", "tcp://127.0.0.1:1", "--handler", ECHO, "--colour", "red")


def test_non_utf8_file_is_a_config_error(tmp_path: Path) -> None:
    """A config file that is not UTF-8 is a ConfigError, not a traceback."""
    path = tmp_path / "latin1.toml"
    path.write_bytes(b"# caf\xe9\n[yellow]\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_toml(path)


@pytest.mark.parametrize("text", ["--5", "\u00b2", "1.5"])
def test_malformed_integer_strings_are_refused(text: str) -> None:
    """Strings int() cannot read are a ConfigError naming the key."""

    @dataclasses.dataclass(frozen=True)
    class Counted:
        n: int = 0

    with pytest.raises(ConfigError, match=r"^n: expected an integer"):
        build(Counted, {"n": text})


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_numbers_are_refused(tmp_path: Path, value: str) -> None:
    """NaN and infinities (which TOML allows) are refused, naming the key."""
    path = write(tmp_path, f"[yellow]\nwatch-lease = {value}\n")
    with pytest.raises(UsageError, match="watch-lease"):
        YellowOptions().parseOptions(["--config", path])


def test_every_surface_binds_to_loopback_unless_told_otherwise() -> None:
    """Out of the box nothing listens beyond 127.0.0.1: the registry, workers' and fight
    processes' sockets, the broker's internal endpoint, and even the client-facing ports
    (broker, brokerlist) until an operator opens them on purpose."""
    from mmo.broker.config import BrokerConfig
    from mmo.brokerlist.config import BrokerlistConfig
    from mmo.fight.config import FightConfig
    from mmo.net import advertised_host, bind_address
    from mmo.worker.config import WorkerConfig
    from mmo.yellow.config import YellowConfig

    yellow = ("tcp://127.0.0.1:5555",)
    assert YellowConfig().listen.startswith("tcp://127.0.0.1:")
    for config in (
        WorkerConfig(yellow=yellow, handler="m:C"),
        FightConfig(yellow=yellow, handler="m:C", cap=2),
        BrokerConfig(yellow=yellow),
    ):
        assert bind_address(config.bind_host, config.advertise_host) == "127.0.0.1"
        assert advertised_host(config.bind_host, config.advertise_host) == "127.0.0.1"
    broker = BrokerConfig(yellow=yellow)
    assert broker.listen.endswith(":interface=127.0.0.1")
    assert broker.websocket is None
    assert BrokerlistConfig(yellow=yellow).listen.endswith(":interface=127.0.0.1")
