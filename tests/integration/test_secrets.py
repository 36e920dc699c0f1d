"""No default secrets: the roles that sign or check tokens refuse to start without a key,
or with the public demo key; every role refuses to start without the cluster's CURVE keys.

Real ``twistd`` processes, run with the key variables removed from their environment
(and without ``MMO_DEMO=1``): each exits at once with an error naming the variable,
and starts with the key given in a file instead (or, for CURVE, with ``--insecure``).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from mmo.config import INSECURE_ENV
from mmo.data.tokens import DEMO_ENV, DEMO_KEY, KEY_ENV, KEY_FILE_ENV
from mmo.testing import free_port
from mmo.testing.processes import twistd_command
from mmo.zmq.curve import ENV_KEYS

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


def test_the_public_demo_key_is_refused_outside_demo_mode(tmp_path: Path) -> None:
    """MMO_AUTH_KEY set to the demo key (anyone can sign with it): refused unless MMO_DEMO=1."""
    env = {**bare_env(), KEY_ENV: DEMO_KEY.decode()}
    code, output = run(ROLES["broker"], env, tmp_path / "out.log", until="starting up")
    assert code not in (None, 0) and "public demo key" in output, output


WITHOUT_KEYS = {
    "yellow": ["mmo-yellow", "--listen", "tcp://127.0.0.1:0"],
    **ROLES,
    "brokerlist": ["mmo-brokerlist", "--yellow", YELLOW, "--listen", "tcp:0:interface=127.0.0.1"],
    "fight": [
        *("mmo-fight", "--yellow", YELLOW, "--handler", "mmo.examples.fight:TurnFight"),
        *("--cap", "2", "--min-spare", "0"),
    ],
}


@pytest.mark.parametrize("role", sorted(WITHOUT_KEYS))
def test_every_role_refuses_to_start_without_curve_keys(role: str, tmp_path: Path) -> None:
    """No MMO_CURVE_KEYS (and neither --insecure nor MMO_DEMO=1): each role exits at once,
    naming the variable and the way out, before it binds or connects anything."""
    env = {k: v for k, v in os.environ.items() if k not in (ENV_KEYS, INSECURE_ENV, DEMO_ENV)}
    code, output = run(WITHOUT_KEYS[role], env, tmp_path / "out.log", until="starting up")
    assert code not in (None, 0), output
    assert f"{ENV_KEYS}: is not set" in output and "--insecure" in output, output
    assert "starting up" not in output


def test_insecure_runs_in_the_clear_and_says_so(tmp_path: Path) -> None:
    """--insecure starts a role without keys and logs a warning naming the choice."""
    env = {k: v for k, v in os.environ.items() if k not in (ENV_KEYS, INSECURE_ENV, DEMO_ENV)}
    args = ["mmo-yellow", "--insecure", "--listen", f"tcp://127.0.0.1:{free_port()}"]
    code, output = run(args, env, tmp_path / "out.log", until="listening on")
    assert code is None and "listening on" in output, output
    assert "INSECURE" in output and "--insecure" in output, output
