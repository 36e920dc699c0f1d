"""The JavaScript client SDK (clients/js) from Node against a real edge cluster: brokerlist,
register and login, requests and their errors and deadlines, token refresh, pushes, a
resume after the broker is killed, a kick. The script (clients/js/test/live/cluster.mjs)
prints a line per check; this test runs it, kills the broker it names, and reads them."""

from __future__ import annotations

import json
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from .edge import EdgeCluster

ROOT = Path(__file__).resolve().parents[2]
JS = ROOT / "clients" / "js"

pytestmark = pytest.mark.timeout(120)


def built_sdk() -> Path:
    """The SDK's dist/, built if missing (`./dev test` builds it before the Python tests)."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: run scripts/ensure-servers (as root)")
    if not (JS / "dist" / "index.js").exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=JS, check=True)
        subprocess.run(["npm", "run", "build"], cwd=JS, check=True)
    return JS / "dist"


def test_the_js_sdk_plays_against_a_real_cluster(fresh_edge: EdgeCluster) -> None:
    edge = fresh_edge
    built_sdk()
    script = subprocess.Popen(
        ["node", "test/live/cluster.mjs", edge.brokerlist_url],
        cwd=JS,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(
        target=lambda: [lines.put(line) for line in script.stdout or ()], daemon=True
    ).start()
    checks: list[dict[str, Any]] = []
    done: dict[str, Any] | None = None
    deadline = time.monotonic() + 90
    try:
        while done is None:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            try:
                event = json.loads(line)
            except ValueError:
                checks.append({"check": "output", "ok": False, "detail": line})
                continue
            if "await" in event:
                port = int(event["broker"].rpartition(":")[2])
                victim = f"broker-{edge.ports.index(port) + 1}"
                edge.processes[victim].kill()
                assert script.stdin is not None
                script.stdin.write("killed\n")
                script.stdin.flush()
            elif "done" in event:
                done = event
            else:
                checks.append(event)
        code = script.wait(timeout=10)
    finally:
        if script.poll() is None:
            script.kill()
            script.wait(5)
    failed = [c for c in checks if not c["ok"]]
    names = [c["check"] for c in checks]
    print("\n".join(f"JS {'ok ' if c['ok'] else 'BAD'} {c['check']} {c['detail']}" for c in checks))
    assert failed == [] and code == 0 and done == {"done": True, "failed": 0}, failed
    assert len(names) == 14, names  # every check ran
