"""Reloading a role's settings (mmo.tap.Reloader): the file read again with the command line
over it, checked as at start; a bad file changes nothing; the broker's limits and routes
apply live; what needs a restart is reported; the log level changes everywhere."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from twisted.logger import ILogObserver, LogLevel, LogPublisher, globalLogPublisher
from zope.interface import provider

from mmo.broker.tap import Options as BrokerOptions
from mmo.ops import OpsConfig
from mmo.tap import Reloader, inherit_ops
from mmo.telemetry import logs
from mmo.wire.gen.mmo.ttypes import ClientError, Packet, PacketKind
from tests.unit.test_broker_fuzz import connect, frame, make_broker, parse_output

YELLOW = 'yellow = ["tcp://127.0.0.1:1"]\n'


@pytest.fixture(autouse=True)
def _level() -> Iterator[None]:
    """Every test leaves the process's log level as it found it."""
    before = logs.LEVEL.level
    yield
    logs.LEVEL.level = before


@pytest.fixture
def events() -> Iterator[list[dict[str, Any]]]:
    """The log events emitted during the test."""
    seen: list[dict[str, Any]] = []

    @provider(ILogObserver)
    def observe(event: dict[str, Any]) -> None:
        seen.append(event)

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


def messages(events: list[dict[str, Any]], level: LogLevel | None = None) -> list[str]:
    from twisted.logger import formatEvent

    return [
        formatEvent(e)
        for e in events
        if e.get("log_namespace") == "mmo.tap" and (level is None or e["log_level"] == level)
    ]


def write(path: Path, body: str) -> None:
    path.write_text("[broker]\n" + YELLOW + body)


def parsed(path: Path, *argv: str) -> BrokerOptions:
    options = BrokerOptions(build=False)
    options.parseOptions(["--config", str(path), *argv])
    return options


def test_reparse_reads_the_file_again_and_the_command_line_still_wins(tmp_path: Path) -> None:
    path = tmp_path / "broker.toml"
    write(path, "rate = 100\nmax-frame = 2048\n")
    options = parsed(path, "--max-frame", "1000")
    assert (options.config.rate, options.config.max_frame) == (100, 1000)
    write(path, "rate = 5\nmax-frame = 300\nlog-level = 'warn'\n")
    fresh = options.reparse()
    assert (fresh.config.rate, fresh.config.max_frame) == (5, 1000)
    assert fresh.ops.log_level == "warn"
    assert options.config.rate == 100  # reparsing alone changes nothing


def test_a_relative_config_path_is_read_again_from_where_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "broker.toml", "rate = 100\n")
    options = parsed(Path("broker.toml"))
    monkeypatch.chdir("/")  # twistd's --rundir, a daemon's chdir
    write(tmp_path / "broker.toml", "rate = 7\n")
    assert options.reparse().config.rate == 7


@pytest.mark.parametrize(
    "body",
    [
        "rate = -1\n",  # a bad value
        "rate = [\n",  # not TOML
        "nosuch = 1\n",  # an unknown setting
        "heartbeat = 40\n",  # values that do not go together (idle-timeout 30)
        "log-level = 'loud'\n",  # a bad operators' setting
    ],
)
def test_a_bad_file_changes_nothing(tmp_path: Path, body: str, events: list[Any]) -> None:
    path = tmp_path / "broker.toml"
    write(path, "rate = 100\n")
    options = parsed(path)
    calls: list[Any] = []
    options.service = SimpleNamespace(reload=calls.append)  # type: ignore[assignment]
    before, ops = options.config, options.ops
    write(path, "rate = 5\n" + body)
    result = Reloader(options).reload()
    assert result.error is not None and not result.applied and not result.restart
    assert calls == []
    assert options.config is before and options.ops is ops
    assert logs.LEVEL.name == "debug"
    [error] = messages(events, LogLevel.error)
    assert "reload of" in error and "nothing changed" in error


def test_a_missing_file_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "broker.toml"
    write(path, "rate = 100\n")
    options = parsed(path)
    options.service = SimpleNamespace(reload=lambda c: ())  # type: ignore[assignment]
    path.unlink()
    result = Reloader(options).reload()
    assert result.error is not None
    assert options.config.rate == 100


def test_a_changed_limit_is_applied_to_a_connection_in_place(
    tmp_path: Path, events: list[Any]
) -> None:
    broker, _ = make_broker()
    path = tmp_path / "broker.toml"
    write(path, "rate = 100\n")
    options = parsed(path)
    options.service = SimpleNamespace(reload=broker.reload)  # type: ignore[assignment]
    protocol, transport = connect(broker)
    big = frame(Packet(kind=PacketKind.REQUEST, seq=1, route="sso.login", body=b"x" * 300))
    assert len(big) < broker.config.max_frame

    write(path, "rate = 50\nmax-frame = 256\nburst = 10\nchannel-budget = 1000\n")
    result = Reloader(options).reload()

    assert result.error is None and not result.restart
    assert set(result.applied) == {"rate", "max_frame", "burst", "channel_budget"}
    assert (broker.config.rate, broker.config.max_frame, broker.config.burst) == (50, 256, 10)
    assert broker.table.config is broker.config is broker.gate.config is broker.forwarder.config
    assert broker.internal._channel_budget.rate == 1000
    assert options.config.max_frame == 256
    [applied] = messages(events, LogLevel.info)
    assert "max-frame 4096 -> 256" in applied and "rate 100.0 -> 50.0" in applied

    protocol.dataReceived(big)  # the connection made before takes the new limit
    [error] = parse_output(transport.value())
    assert (error.kind, error.code) == (PacketKind.ERROR, ClientError.TOO_LARGE)


def test_routes_and_client_route_narrowing_apply_live(tmp_path: Path) -> None:
    broker, _ = make_broker()
    path = tmp_path / "broker.toml"
    write(path, "")
    options = parsed(path)
    options.service = SimpleNamespace(reload=broker.reload)  # type: ignore[assignment]
    protocol, _ = connect(broker)
    assert protocol.connection is not None
    assert protocol.connection.routes.accepts("echo.echo")

    write(path, 'listen-routes = ["chat.*"]\n[broker.routes]\ngame = "echo"\n')
    result = Reloader(options).reload()

    assert set(result.applied) == {"listen_routes", "routes"}
    assert not protocol.connection.routes.accepts("echo.echo")
    assert protocol.connection.routes.accepts("chat.say")
    assert broker.routes.service_of("game") == "echo"


def test_a_restart_only_setting_is_reported_and_kept(tmp_path: Path, events: list[Any]) -> None:
    broker, _ = make_broker()
    path = tmp_path / "broker.toml"
    write(path, "rate = 100\n")
    options = parsed(path)
    options.service = SimpleNamespace(reload=broker.reload)  # type: ignore[assignment]

    write(path, "rate = 20\nlisten = 'tcp:7777'\nmetrics = '9999'\n")
    result = Reloader(options).reload()

    assert set(result.applied) == {"rate"}
    assert set(result.restart) == {"listen", "metrics"}
    assert broker.config.listen == options.config.listen == "tcp:6100:interface=127.0.0.1"
    assert broker.config.rate == 20
    assert options.ops.metrics is None
    [warning] = messages(events, LogLevel.warn)
    assert "listen" in warning and "metrics" in warning and "needs a restart" in warning


def test_nothing_changed(tmp_path: Path, events: list[Any]) -> None:
    path = tmp_path / "broker.toml"
    write(path, "rate = 100\n")
    options = parsed(path)
    calls: list[Any] = []
    options.service = SimpleNamespace(reload=calls.append)  # type: ignore[assignment]
    result = Reloader(options).reload()
    assert not result.applied and not result.restart and calls == []
    assert any("nothing changed" in m for m in messages(events, LogLevel.info))


def test_the_log_level_changes_live_and_a_role_without_a_hook_says_so(
    tmp_path: Path, events: list[Any]
) -> None:
    path = tmp_path / "broker.toml"
    write(path, "rate = 100\n")
    options = parsed(path)
    options.service = SimpleNamespace()  # type: ignore[assignment]  # no hook: a worker

    write(path, "rate = 20\nlog-level = 'warn'\n")
    result = Reloader(options).reload()

    assert set(result.applied) == {"log_level"} and set(result.restart) == {"rate"}
    assert logs.LEVEL.name == "warn" and options.ops.log_level == "warn"
    assert options.config.rate == 100
    [warning] = messages(events, LogLevel.warn)
    assert "only the log level" in warning


def test_the_level_filter() -> None:
    publisher = LogPublisher()
    seen: list[dict[str, Any]] = []

    @provider(ILogObserver)
    def observe(event: dict[str, Any]) -> None:
        seen.append(event)

    publisher.addObserver(logs.filtered(observe))
    logs.LEVEL.set("warn")
    for level in (LogLevel.debug, LogLevel.info, LogLevel.warn, LogLevel.error):
        publisher({"log_level": level, "log_namespace": "t", "log_format": "", "log_time": 0})
    publisher({"log_namespace": "t", "message": ("legacy, no level",)})
    assert [e.get("log_level") for e in seen] == [LogLevel.warn, LogLevel.error, None]
    logs.LEVEL.set("debug")
    publisher({"log_level": LogLevel.debug, "log_namespace": "t", "log_format": "", "log_time": 0})
    assert len(seen) == 4


def test_a_legacy_observer_is_filtered_too() -> None:
    seen: list[dict[str, Any]] = []
    observer = logs.filtered(seen.append)  # a plain callable: twisted.python.log's kind
    logs.LEVEL.set("error")
    for level in (LogLevel.info, LogLevel.error):
        observer({"log_level": level, "log_namespace": "t", "log_format": "x", "log_time": 0})
    assert [e["log_level"] for e in seen] == [LogLevel.error]


def test_the_twistd_logger_filters_twistds_own_text_log(tmp_path: Path) -> None:
    log_file = tmp_path / "twistd.log"
    saved = (logs.TWISTD_OPTIONS, logs.TWISTD_JSON, logs.TWISTD_LOGGER)
    logs.TWISTD_OPTIONS = {"logfile": str(log_file), "nodaemon": True, "syslog": False}
    logs.TWISTD_JSON, logs.TWISTD_LOGGER = False, None
    try:
        observer = logs.twistd_logger()
    finally:
        logs.TWISTD_OPTIONS, logs.TWISTD_JSON, logs.TWISTD_LOGGER = saved
    logs.LEVEL.set("info")
    for level, text in ((LogLevel.debug, "hidden"), (LogLevel.info, "shown")):
        observer({"log_level": level, "log_namespace": "t", "log_format": text, "log_time": 0})
    written = log_file.read_text()
    assert "shown" in written and "hidden" not in written


def test_sighup_reloads_in_the_reactor_thread(tmp_path: Path) -> None:
    path = tmp_path / "broker.toml"
    write(path, "")
    options = parsed(path)
    handed: list[Any] = []
    reloader = Reloader(options, reactor=SimpleNamespace(callFromThread=handed.append))
    before = signal.getsignal(signal.SIGHUP)
    reloader.startService()
    try:
        os.kill(os.getpid(), signal.SIGHUP)
        assert handed == [reloader.reload]
    finally:
        reloader.stopService()
    assert signal.getsignal(signal.SIGHUP) == before


def test_children_inherit_the_log_level() -> None:
    assert inherit_ops(OpsConfig(log_level="warn"), ("a",)) == ("a", "--log-level", "warn")
    assert inherit_ops(OpsConfig(), ("a",)) == ("a",)
    assert inherit_ops(OpsConfig(log_level="warn"), ("--log-level", "info")) == (
        "--log-level",
        "info",
    )
