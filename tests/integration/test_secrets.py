"""No default secrets: the roles that sign or check tokens refuse to start without a key.

Real ``twistd`` processes, run with the key variables removed from their environment
(and without ``MMO_DEMO=1``): each exits at once with an error naming the variable,
and starts with the key given in a file instead.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from mmo.data.tokens import DEMO_ENV, KEY_ENV, KEY_FILE_ENV
from mmo.testing import free_port
from mmo.testing.processes import twistd_command

pytestmark = pytest.mark.timeout(60)

YELLOW = "tcp://127.0.0.1:1"  # never reached: these processes must not get that far
ROLES = {
    "broker": ["mmo-broker", "--yellow", YELLOW, "--listen", "tcp:0:interface=127.0.0.1"],
    "session": ["mmo-worker", "--yellow", YELLOW, "--handler", "mmo.sessions:SessionService"],
    "sso": ["mmo-worker", "--yellow", YELLOW, "--handler", "mmo.examples.sso:SSOService"],
}


def run(args: list[str], env: dict[str, str], log: Path, until: str) -> tuple[int | None, str]:
    """Run ``twistd -n args`` until it exits or its output shows ``until`` (30 s at
    most): its exit code (None: it was running, and is stopped now) and its output."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*twistd_command(), "-n", "--pidfile=", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    deadline = time.monotonic() + 30
    code = proc.poll()
    while code is None and until not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
        code = proc.poll()
    if code is None:
        proc.terminate()
        proc.wait(timeout=10)
    return code, log.read_text(errors="replace")


def bare_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (KEY_ENV, KEY_FILE_ENV, DEMO_ENV)}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.mark.parametrize("role", sorted(ROLES))
def test_a_role_without_its_key_refuses_to_start(role: str, tmp_path: Path) -> None:
    code, output = run(ROLES[role], bare_env(), tmp_path / "out.log", until="starting up")
    assert code not in (None, 0), output
    assert KEY_ENV in output, output
    assert "starting up" not in output


@pytest.mark.parametrize("role", sorted(ROLES))
def test_a_role_starts_with_its_key_in_a_file(role: str, tmp_path: Path) -> None:
    key = tmp_path / "auth.key"
    key.write_text(os.urandom(24).hex() + "\n")
    key.chmod(0o600)
    args = [a.replace("tcp:0:", f"tcp:{free_port()}:") for a in ROLES[role]]
    env = {**bare_env(), KEY_FILE_ENV: str(key)}
    code, output = run(args, env, tmp_path / "out.log", until="starting up")
    assert code is None and "starting up" in output, output
