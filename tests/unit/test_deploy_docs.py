"""The configuration examples of docs/deploy.md are valid configs, and every systemd unit in
etc/systemd runs a role that exists with a config the example layout names."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from mmo.broker.config import BrokerConfig
from mmo.config import build
from mmo.worker.config import WorkerConfig

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = (ROOT / "docs" / "deploy.md").read_text()
CONFIGS = {"broker": BrokerConfig, "worker": WorkerConfig}


def toml_examples() -> list[str]:
    """The TOML blocks of docs/deploy.md."""
    return re.findall(r"```toml\n(.*?)```", DEPLOY, flags=re.DOTALL)


def test_the_page_has_examples() -> None:
    """docs/deploy.md shows a broker and a worker config."""
    assert {next(iter(tomllib.loads(block))) for block in toml_examples()} == set(CONFIGS)


@pytest.mark.parametrize("block", toml_examples())
def test_each_toml_example_builds(block: str) -> None:
    """Each example is a valid config of its role (interfaces it names become loopback here:
    a config is checked on the machine that has them)."""
    data = tomllib.loads(block.replace('"eth1"', '"lo"'))
    ((section, values),) = data.items()
    config = build(CONFIGS[section], values, prefix=f"[{section}] ")
    assert config.yellow == ("tcp://10.0.0.1:5555",)


@pytest.mark.parametrize("unit", sorted((ROOT / "etc" / "systemd").glob("*.service")))
def test_each_unit_runs_an_mmo_role_with_the_shared_environment(unit: Path) -> None:
    """Each unit starts twistd with an mmo role and its --config, reads /etc/mmo/mmo.env,
    stops with SIGTERM (the graceful stop), and restarts on failure."""
    text = unit.read_text()
    (exec_start,) = re.findall(r"^ExecStart=(.*)$", text, flags=re.MULTILINE)
    role = re.search(r" (mmo-[a-z]+) --config /etc/mmo/", exec_start)
    assert role is not None, exec_start
    assert role.group(1) in {
        "mmo-yellow",
        "mmo-worker",
        "mmo-broker",
        "mmo-brokerlist",
        "mmo-fight",
    }
    assert "--nodaemon" in exec_start and "--pidfile=" in exec_start
    for line in ("EnvironmentFile=/etc/mmo/mmo.env", "KillSignal=SIGTERM", "Restart=on-failure"):
        assert line in text, f"{unit.name}: {line}"
