"""The things people run: twistd plugins, the mmo tool, mmo-cluster, .tac files, the demo."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from mmo.testing import free_port
from mmo.testing.processes import twistd_command

from .conftest import POLL_TIMEOUT, start_cluster, wait_until

ROOT = Path(__file__).resolve().parents[2]
MMO = [sys.executable, "-c", "from mmo.cli import main; main()"]


def run(cmd: list[str], timeout: float = 60, **kwargs) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing its output as text."""
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)


def test_twistd_lists_every_role():
    """`twistd --help` lists the mmo roles."""
    out = run([*twistd_command(), "--help"], cwd="/").stdout
    for role in ("mmo-yellow", "mmo-worker", "mmo-broker", "mmo-brokerlist", "mmo-cluster"):
        assert role in out


def test_plugin_file_imports_nothing_of_mmo():
    """The plugin module is ServiceMaker lines only: loading it imports no mmo module."""
    code = (
        "import sys, runpy; runpy.run_path('twisted/plugins/mmo_plugins.py'); "
        "print(sorted(m for m in sys.modules if m == 'mmo' or m.startswith('mmo.')))"
    )
    assert run([sys.executable, "-c", code], cwd=ROOT).stdout.strip() == "[]"


def test_wheel_ships_the_plugin_and_not_twisted(tmp_path):
    """A built wheel (what a plain `pip install .` installs) carries the twistd plugin file."""
    result = run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = tmp_path.glob("mmo-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "twisted/plugins/mmo_plugins.py" in names
    assert "twisted/__init__.py" not in names and "twisted/plugins/__init__.py" not in names
    assert "mmo/wire/gen/mmo/ttypes.py" in names and "mmo/wire/mmo.thrift" in names


@pytest.fixture
def echo_cluster(tmp_path):
    """`twistd mmo-cluster` running a yellow and two echo workers."""
    yellow = f"tcp://127.0.0.1:{free_port()}"
    cluster = start_cluster(
        tmp_path,
        f"""
[cluster]
stop-timeout = 10.0
[[cluster.process]]
name = "yellow"
role = "mmo-yellow"
args = ["--listen", "{yellow}"]
[[cluster.process]]
name = "echo"
role = "mmo-worker"
count = 2
args = ["--yellow", "{yellow}", "--service", "echo",
        "--handler", "mmo.examples.echo:EchoService"]
""",
    )
    yield yellow, cluster
    cluster.stop()
    print(cluster.log_tail(60))


def wait_services(yellow: str, count: int, timeout: float = POLL_TIMEOUT) -> list[dict]:
    """Poll `mmo services --json` until ``count`` instances are listed; their rows."""

    def listed() -> list[dict] | None:
        result = run([*MMO, "services", "--yellow", yellow, "--json", "--timeout", "1"])
        rows = json.loads(result.stdout) if result.returncode == 0 else []
        return rows if len(rows) == count else None

    return wait_until(listed, timeout, f"{count} instances listed", interval=0.2)


def test_mmo_services_and_call(echo_cluster):
    """`mmo services` lists the instances; `mmo call` prints replies and fails clearly."""
    yellow, _ = echo_cluster
    rows = wait_services(yellow, 3 - 1)
    assert {r["instance"] for r in rows} == {"echo-1", "echo-2"}
    assert all("rep" in r["endpoints"] and "whoami" in r["meta"]["methods"] for r in rows)
    table = run([*MMO, "services", "--yellow", yellow]).stdout
    assert "echo-1" in table and "methods: echo, fail" in table

    ok = run([*MMO, "call", "--yellow", yellow, "echo.echo", '{"a": [1, "x"], "b": null}'])
    assert ok.returncode == 0 and json.loads(ok.stdout) == {"a": [1, "x"], "b": None}

    failures = {
        "echo.fail": ('{"message": "boom"}', "RemoteError: EchoFailure: boom"),
        "echo.nosuch": ("{}", "UnknownMethod"),
        "ghost.x": ("{}", "NoLiveInstance"),
        "echo.sleep": ('{"seconds": 3}', "DeadlineExceeded"),
        "echo": ("{}", "expected SERVICE.METHOD"),
        "echo.echo": ("[1]", "must be a JSON object"),
    }
    for target, (kwargs, message) in failures.items():
        # A yellow younger than its warm-up makes callers wait (2.5 s at most) for a missing
        # service: a deadline well past that, so that only NoLiveInstance can end the call.
        timeout = "30" if target == "ghost.x" else "0.5"
        result = run([*MMO, "call", "--yellow", yellow, target, kwargs, "--timeout", timeout])
        assert result.returncode == 1, (target, result.stdout)
        assert message in result.stderr, (target, result.stderr)


def test_mmo_services_without_yellow_fails():
    """`mmo services` against no yellow exits 1 saying so, within its timeout."""
    yellow = f"tcp://127.0.0.1:{free_port()}"
    result = run([*MMO, "services", "--yellow", yellow, "--timeout", "0.5"], timeout=20)
    assert result.returncode == 1 and "no yellow answered" in result.stderr


def test_cluster_restarts_a_dead_child_and_stops_all(echo_cluster):
    """mmo-cluster restarts a killed child and stops every child on SIGTERM."""
    yellow, cluster = echo_cluster
    before = {r["instance"]: r["meta"]["pid"] for r in wait_services(yellow, 2)}
    os.kill(before["echo-1"], signal.SIGKILL)

    def restarted() -> dict[str, int] | None:
        after = {r["instance"]: r["meta"]["pid"] for r in wait_services(yellow, 2)}
        return after if after["echo-1"] != before["echo-1"] else None

    after = wait_until(restarted, what="echo-1 restarted", interval=0.3)
    assert after["echo-2"] == before["echo-2"]
    assert cluster.wait_for_log("echo-1 died")
    cluster.signal(signal.SIGTERM)
    assert cluster.wait(30) is not None
    for pid in after.values():
        assert (
            not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
        )


def alive(pid: int) -> bool:
    """Whether a process runs (a zombie awaiting its parent does not count)."""
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def test_cluster_without_config_is_a_usage_error(tmp_path):
    """mmo-cluster refuses to start without a config, naming the option."""
    result = run([*twistd_command(), "-n", "--pidfile=", "mmo-cluster"], cwd=tmp_path)
    assert result.returncode != 0 and "--config" in (result.stdout + result.stderr)


def test_tac_file_composes_yellow_and_worker(tmp_path):
    """tac/single.tac runs a yellow and an echo worker in one process that answers calls."""
    yellow = f"tcp://127.0.0.1:{free_port()}"
    env = dict(os.environ, MMO_YELLOW=yellow)
    proc = subprocess.Popen(
        [*twistd_command(), "-n", "--pidfile=", "-y", str(ROOT / "tac" / "single.tac")],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_services(yellow, 1)
        ok = run([*MMO, "call", "--yellow", yellow, "echo.whoami"])
        assert ok.returncode == 0 and json.loads(ok.stdout).startswith("echo-")
    finally:
        proc.terminate()
        proc.wait(20)
