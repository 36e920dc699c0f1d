"""Draining a worker and taking it back, with real processes: an admin's ``ops_drain``
takes it out of every caller's picks (calls go to the other instance, none fails), its
/readyz says it drains, ``mmo drain --undrain`` brings it back; other roles are refused."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
import pytest_twisted  # type: ignore[import-untyped]
from twisted.internet import defer, threads

from mmo.errors import Forbidden
from mmo.testing import free_port

from .conftest import until, wait_links
from .test_observability import get

pytestmark = pytest.mark.timeout(30)

MMO = [sys.executable, "-c", "from mmo.cli import main; main()"]


def whoamis(directory: Any, n: int) -> defer.Deferred[list[str]]:
    """``n`` concurrent ``echo.whoami`` calls: who answered each (any failure fails it)."""
    return defer.gatherResults(
        [directory.call("echo", "whoami") for _ in range(n)], consumeErrors=True
    )


@pytest_twisted.inlineCallbacks
def test_a_drained_worker_takes_no_calls_until_it_is_taken_back(
    cluster: Any, directory_factory: Any
) -> Any:
    cluster.yellow()
    port = free_port()
    cluster.worker("echo-1", extra=("--metrics", f"127.0.0.1:{port}"))
    cluster.worker("echo-2")
    admin = directory_factory(cluster.yellows, caller_role="admin")
    caller = directory_factory(cluster.yellows)  # another process calling echo (role tool)
    yield wait_links(admin, "echo", {"echo-1", "echo-2"})
    yield wait_links(caller, "echo", {"echo-1", "echo-2"})

    def readyz() -> defer.Deferred[tuple[int, Any]]:
        # In a thread: the reactor keeps serving the test's links meanwhile.
        d = threads.deferToThread(get, f"http://127.0.0.1:{port}/readyz")
        return d.addCallback(lambda r: (r[0], json.loads(r[1])))

    yield until(lambda: readyz().addCallback(lambda r: r[0] == 200), 15, "echo-1 ready")

    for role in ("worker", "broker"):
        member = directory_factory(cluster.yellows, caller_role=role)
        with pytest.raises(Forbidden):
            yield member.call("echo", "ops_drain", {"draining": True}, instance="echo-1")

    answer = yield admin.call("echo", "ops_drain", {"draining": True}, instance="echo-1")
    assert answer == {"instance": "echo-1", "draining": True}
    # At once: whatever the caller has not heard yet, echo-1 refuses and it goes elsewhere.
    assert set((yield whoamis(caller, 50))) == {"echo-2"}
    yield until(lambda: caller.links("echo") == {"echo-2": True}, 10, "echo-1 out of the picks")
    yield until(lambda: caller.stats()["echo"].get("echo-1", {}).get("drained"), 10, "meta seen")
    assert set((yield whoamis(caller, 50))) == {"echo-2"}
    status, ready = yield readyz()
    assert status == 503 and not ready["ready"]
    assert ready["checks"]["draining"]["ok"] is False
    # Still reachable by name, as what it holds is.
    assert (yield caller.call("echo", "whoami", instance="echo-1")) == "echo-1"

    done = yield threads.deferToThread(
        subprocess.run,
        [*MMO, "drain", "echo-1", "--undrain", "--json", "--yellow", ",".join(cluster.yellows)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"instance": "echo-1", "draining": False}
    yield wait_links(caller, "echo", {"echo-1", "echo-2"}, 10)
    assert set((yield whoamis(caller, 50))) == {"echo-1", "echo-2"}
    yield until(lambda: readyz().addCallback(lambda r: r[0] == 200), 10, "echo-1 ready again")
