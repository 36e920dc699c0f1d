"""Every role checks its arguments and environment while twistd parses them: what is
wrong is a usage error naming the option, and nothing has started."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer
from twisted.python import usage

from mmo.broker.tap import Options as BrokerOptions
from mmo.cluster.tap import Options as ClusterOptions
from mmo.fight import FightHandler
from mmo.fight.tap import Options as FightOptions
from mmo.service import PreparedService
from mmo.tap import exit_if_start_fails
from mmo.worker.tap import Options as WorkerOptions

YELLOW = "tcp://127.0.0.1:5555"


@pytest.fixture(autouse=True)
def _insecure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMO_INSECURE", "1")
    monkeypatch.setenv("MMO_AUTH_KEY", "a-test-key-of-32-characters-long")


def usage_error(options: usage.Options, *args: str) -> str:
    with pytest.raises(usage.UsageError) as info:
        options.parseOptions(list(args))
    return str(info.value)


def test_a_handler_that_does_not_import_names_the_option() -> None:
    message = usage_error(WorkerOptions(), "--yellow", YELLOW, "--handler", "no.such.module:X")
    assert message.startswith("--handler: cannot import 'no.such.module'")


def test_a_handler_setting_it_does_not_have_is_a_usage_error() -> None:
    message = usage_error(
        WorkerOptions(),
        *("--yellow", YELLOW, "--handler", "mmo.examples.sso:SSOService", "--set", "nope=1"),
    )
    assert "nope" in message


def test_a_missing_certificate_names_the_option(tmp_path: Path) -> None:
    message = usage_error(
        BrokerOptions(),
        *("--yellow", YELLOW, "--tls-cert", str(tmp_path / "c.pem")),
        *("--tls-key", str(tmp_path / "k.pem")),
    )
    assert message.startswith("--tls-cert: cannot read")


def test_without_curve_keys_a_member_role_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MMO_INSECURE")
    monkeypatch.delenv("MMO_DEMO", raising=False)
    monkeypatch.delenv("MMO_CURVE_KEYS", raising=False)
    message = usage_error(
        WorkerOptions(), "--yellow", YELLOW, "--handler", "mmo.examples.echo:EchoService"
    )
    assert message.startswith("$MMO_CURVE_KEYS:")


def cluster_file(tmp_path: Path, args: str, role: str = "mmo-worker") -> str:
    path = tmp_path / "cluster.toml"
    path.write_text(
        f"""
[[cluster.process]]
name = "yellow"
role = "mmo-yellow"
args = ["--listen", "{YELLOW}"]

[[cluster.process]]
name = "echo"
role = "{role}"
args = {args}
"""
    )
    return str(path)


def test_the_cluster_refuses_a_child_argument_its_role_does_not_take(tmp_path: Path) -> None:
    """A typo in a child's arguments fails the cluster's start, not the child's forever."""
    config = cluster_file(tmp_path, f'["--yellow", "{YELLOW}", "--handlr", "x:Y"]')
    message = usage_error(ClusterOptions(), "--config", config)
    assert "process echo (mmo-worker)" in message
    assert "handlr" in message


def test_the_cluster_refuses_a_child_handler_that_does_not_import(tmp_path: Path) -> None:
    config = cluster_file(tmp_path, f'["--yellow", "{YELLOW}", "--handler", "nope:Echo"]')
    message = usage_error(ClusterOptions(), "--config", config)
    assert "process echo (mmo-worker): --handler: cannot import 'nope'" in message


def test_the_cluster_refuses_a_role_no_plugin_provides(tmp_path: Path) -> None:
    config = cluster_file(tmp_path, "[]", role="mmo-nothing")
    assert "no twistd plugin is called 'mmo-nothing'" in usage_error(
        ClusterOptions(), "--config", config
    )


def test_the_cluster_accepts_good_children(tmp_path: Path) -> None:
    config = cluster_file(
        tmp_path, f'["--yellow", "{YELLOW}", "--handler", "mmo.examples.echo:EchoService"]'
    )
    options = ClusterOptions()
    options.parseOptions(["--config", config])
    assert [child.name for child in options.service] == ["keys", None, None]


class FakeReactor:
    def __init__(self) -> None:
        self.stopped = False
        self.triggers: list[tuple[str, str, Any, tuple[Any, ...]]] = []

    def stop(self) -> None:
        self.stopped = True

    def addSystemEventTrigger(self, phase: str, event: str, f: Any, *args: Any) -> None:
        self.triggers.append((phase, event, f, args))


class Failing(PreparedService):
    def prepare(self) -> defer.Deferred[None]:
        return defer.fail(RuntimeError("the database never answered"))


def test_a_worker_that_cannot_start_ends_its_process_with_status_1() -> None:
    """The process, not the service, decides: it stops and exits 1 after shutdown."""
    reactor = FakeReactor()
    worker = Failing()
    exit_if_start_fails(worker, reactor)
    worker.startService()
    assert reactor.stopped
    [(phase, event, _, args)] = reactor.triggers
    assert (phase, event, args) == ("after", "shutdown", (1,))
    assert not worker.running or all(not child.running for child in worker)


@dataclass(frozen=True)
class OwnSettings:
    rounds: int = 3


class FightWithOwnSettings(FightHandler):
    """A fight handler whose settings forget the dispatcher's (FightSettings)."""

    Settings = OwnSettings


def test_a_fight_handler_must_take_the_dispatchers_settings() -> None:
    """The dispatcher passes --set dispatcher=... to its fight processes: a handler whose
    Settings do not subclass FightSettings would make every fight process fail, so the
    dispatcher refuses it at once."""
    message = usage_error(
        FightOptions(),
        *("--yellow", YELLOW, "--cap", "10", "--handler", f"{__name__}:FightWithOwnSettings"),
    )
    assert message.startswith("--handler: the Settings of") and "FightSettings" in message
