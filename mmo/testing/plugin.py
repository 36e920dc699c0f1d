"""pytest plugin (registered as ``mmo``): fixtures for testing mmo services.

Fixtures:
    mmo_handler_factory: :func:`mmo.testing.handler_factory`.
    mmo_processes: starts :class:`TwistdProcess` children; stops them all at teardown
        and prints their logs when the test failed.

Loading it installs no reactor: the choice stays with pytest-twisted's ``--reactor``,
which installs one when pytest is configured, after plugins load. So this module
imports nothing that imports ``twisted.internet.reactor`` (ZeroMQ's txzmq does, and so
does every part of mmo above its wire layer); fixtures import what they hand out when
they run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mmo.testing.processes import TwistdProcess


@pytest.fixture
def mmo_handler_factory() -> Callable[..., Any]:
    """Build a handler on a fake runtime (:func:`mmo.testing.handler_factory`)."""
    from mmo.testing.fakes import handler_factory

    return handler_factory


class ProcessGroup:
    """The twistd children of one test."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.children: list[TwistdProcess] = []

    def start(
        self, role: str, *args: str, name: str | None = None, env: dict[str, str] | None = None
    ) -> TwistdProcess:
        """Start ``twistd -n role args...``."""
        child = TwistdProcess(role, list(args), self.log_dir, name=name, env=env)
        self.children.append(child.start())
        return child

    def stop_all(self) -> None:
        """Stop every child that is still running."""
        for child in reversed(self.children):
            child.stop(timeout=10)

    def logs(self) -> str:
        """The tail of each child's log."""
        return "\n".join(f"----- {c.name} -----\n{c.log_tail()}" for c in self.children)


@pytest.fixture
def mmo_processes(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ProcessGroup]:
    """Start twistd roles as child processes; all are stopped after the test."""
    group = ProcessGroup(tmp_path)
    yield group
    group.stop_all()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(group.logs())


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Remember each phase's report on the item (so fixtures can see a failure)."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
