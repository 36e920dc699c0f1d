"""The mmo pytest plugin in a game project of its own, the way a game developer runs it.

Each test writes a small project into ``tmp_path`` and runs ``python -m pytest -p mmo``
on it with this interpreter (the installed mmo), in a child process: the plugin must
leave the reactor to pytest-twisted's ``--reactor``, its fixtures must be there, and the
examples of docs/testing.md must pass as written.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "testing.md"

_EXAMPLE = re.compile(r"<!-- example: ([\w-]+) -->\s*\n```python\n(.*?)\n```", re.DOTALL)
_TEST = re.compile(r"^(?:async )?def (test_\w+)", re.MULTILINE)

PROJECT_TESTS = """
import asyncio

import pytest_twisted
from twisted.internet import defer, reactor, task


def test_the_reactor_is_the_one_chosen_on_the_command_line():
    assert type(reactor).__name__ == "AsyncioSelectorReactor"


@pytest_twisted.ensureDeferred
async def test_deferreds_and_asyncio_run_on_it():
    assert await task.deferLater(reactor, 0.01, lambda: "fired") == "fired"
    await defer.Deferred.fromFuture(asyncio.ensure_future(asyncio.sleep(0.01)))


def test_the_fixtures_are_there(mmo_handler_factory, mmo_processes):
    from mmo.examples.echo import EchoService
    from mmo.testing import call

    echo = mmo_handler_factory(EchoService)
    assert call(echo, "echo", a=1) == {"a": 1}
    assert mmo_processes.children == []
"""


def run_pytest(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m pytest -p mmo ARGS`` in ``project`` (its own rootdir, no cache)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTEST_ADDOPTS", "PYTEST_DISABLE_PLUGIN_AUTOLOAD", "PYTEST_PLUGINS")
    }
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "mmo", "-p", "no:cacheprovider", "-q", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def make_project(root: Path, tests: str) -> Path:
    """A project with an empty pytest configuration and one test module."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "pytest.ini").write_text("[pytest]\n")
    (root / "test_game.py").write_text(tests)
    return root


def passed(result: subprocess.CompletedProcess[str], count: int) -> None:
    """Assert the run passed exactly ``count`` tests (none skipped, none failed)."""
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert re.search(rf"\b{count} passed\b", output), output
    assert not re.search(r"\b(skipped|failed|error)", output), output


def test_importing_the_plugin_installs_no_reactor() -> None:
    """Loading mmo's plugin (and its package) leaves twisted.internet.reactor unimported."""
    check = (
        "import sys, mmo.testing.plugin, mmo.testing; "
        "assert 'twisted.internet.reactor' not in sys.modules, 'a reactor was installed'"
    )
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_a_project_runs_under_the_asyncio_reactor_with_the_fixtures(tmp_path: Path) -> None:
    """``pytest --reactor=asyncio -p mmo``: the asyncio reactor is installed and runs
    Deferreds, and mmo_handler_factory and mmo_processes are available."""
    project = make_project(tmp_path / "game", PROJECT_TESTS)
    passed(run_pytest(project, "--reactor=asyncio"), 3)


def test_the_examples_of_docs_testing_pass(tmp_path: Path) -> None:
    """The example blocks of docs/testing.md, as one test module, all pass (under the
    asyncio reactor: they need no particular one)."""
    blocks = dict(_EXAMPLE.findall(DOC.read_text()))
    assert set(blocks) >= {"handler", "directory", "sockets", "data", "servers", "processes"}
    module = "\n\n".join(blocks.values()) + "\n"
    project = make_project(tmp_path / "docs", module)
    passed(run_pytest(project, "--reactor=asyncio"), len(_TEST.findall(module)))
