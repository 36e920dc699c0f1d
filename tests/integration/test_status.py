"""``mmo status`` against real processes: a yellow, two echo workers and a broker, each with
its operator listener (``--metrics``), while the test sends echo calls through the cluster.

``mmo status`` runs as people run it, a subprocess with the test's environment (its CURVE
keys); the test polls it until what it shows has settled (every process registered and
ready), never by waiting a fixed time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task, threads

from mmo.testing import free_port
from mmo.wire import from_value

from .conftest import POLL_TIMEOUT, Cluster, until, wait_instances, wait_links

pytestmark = pytest.mark.timeout(150)

ROOT = Path(__file__).resolve().parents[2]
_SCRIPT = Path(sys.executable).with_name("mmo")
MMO = (
    [str(_SCRIPT)]
    if _SCRIPT.exists()
    else [sys.executable, "-c", "from mmo.cli import main; main()"]
)
ECHOES = {"echo-1", "echo-2"}
#: Echo calls per second the test sends while ``mmo status`` measures.
RATE = 40


def run_status(*args: str, timeout: float = 60) -> defer.Deferred[subprocess.CompletedProcess[str]]:
    """``mmo status ARGS`` in a thread (the reactor keeps sending calls meanwhile)."""
    return threads.deferToThread(
        subprocess.run,
        [*MMO, "status", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ),
        cwd=ROOT,
    )


class Load:
    """Echo calls at ``RATE`` per second until stopped; counts replies and failures."""

    def __init__(self, directory: Any) -> None:
        self.directory = directory
        self.sent = 0
        self.replies = 0
        self.failures: list[str] = []
        self.loop = task.LoopingCall(self.send)
        self.loop.clock = reactor

    def send(self) -> None:
        self.sent += 1
        d = self.directory.call("echo", "echo", {"n": self.replies}, timeout=5.0)
        d.addCallbacks(self.replied, lambda f: self.failures.append(repr(f.value)))

    def replied(self, _: Any) -> None:
        self.replies += 1

    def start(self) -> None:
        self.loop.start(1.0 / RATE)

    def stop(self) -> None:
        if self.loop.running:
            self.loop.stop()


def published(directory: Any, service: str) -> dict[str, str]:
    """Instance id -> operator listener address, of the instances of ``service`` that
    publish one."""
    found = {}
    for instance in directory.view.get(service):
        value = (instance.meta or {}).get("metrics")
        if value is not None:
            found[instance.instance_id] = from_value(value)
    return found


def settled(result: subprocess.CompletedProcess[str], yellow_ops: str) -> dict[str, Any] | None:
    """The status ``mmo status --json`` printed, once it shows every process started ready
    and both echo workers serving; None until then."""
    if result.returncode != 0:
        return None
    status = json.loads(result.stdout)
    rows = {p["instance"]: p for p in status["processes"]}
    by_address = {p["address"]: p for p in status["processes"]}
    if yellow_ops not in by_address or not {*ECHOES, "broker-1"} <= set(rows):
        return None
    if any(p["health"] != "ready" for p in status["processes"]):
        return None
    if any(not rows[e]["requests_per_s"] for e in ECHOES):
        return None
    return status


@pytest_twisted.inlineCallbacks
def test_status_shows_every_process_ready_and_serving(
    cluster: Cluster, directory_factory: Any
) -> Any:
    metrics = ("--metrics", "127.0.0.1:0")
    yellow = f"tcp://127.0.0.1:{free_port()}"
    yellow_ops = f"127.0.0.1:{free_port()}"
    cluster.yellows.append(yellow)
    cluster.processes.start(
        "mmo-yellow", "--listen", yellow, "--metrics", yellow_ops, name="yellow-1"
    )
    for name in sorted(ECHOES):
        cluster.worker(name, extra=metrics)
    cluster.processes.start(
        "mmo-broker",
        "--yellow",
        yellow,
        *metrics,
        "--listen",
        f"tcp:{free_port()}:interface=127.0.0.1",
        "--instance-id",
        "broker-1",
        name="broker-1",
    )
    directory = directory_factory([yellow])
    yield wait_instances(directory, "echo", ECHOES)
    yield wait_links(directory, "echo", ECHOES)
    yield until(lambda: set(published(directory, "echo")) == ECHOES, what="echo listeners")
    yield until(lambda: published(directory, "broker"), what="the broker's listener")

    load = Load(directory)
    load.start()
    try:
        last: list[subprocess.CompletedProcess[str]] = []

        @defer.inlineCallbacks
        def status() -> Any:
            result = yield run_status(
                "--yellow", yellow, "--target", yellow_ops, "--json", "--interval", "1"
            )
            last[:] = [result]
            return settled(result, yellow_ops)

        shown = yield until(
            status, POLL_TIMEOUT * 2, "mmo status showing every process ready", interval=0.2
        )
        text = yield run_status("--yellow", yellow, "--target", yellow_ops, "--interval", "1")
    except AssertionError:
        print(last[0].stdout if last else "", last[0].stderr if last else "")
        raise
    finally:
        load.stop()

    assert load.replies > 0 and not load.failures, load.failures
    rows = {p["instance"]: p for p in shown["processes"]}
    assert len(shown["processes"]) == 4, shown["processes"]
    for name in ECHOES:
        echo = rows[name]
        assert (echo["role"], echo["service"], echo["health"]) == ("worker", "echo", "ready")
        assert echo["requests_per_s"] > 0 and echo["errors_per_s"] == 0
        assert echo["p99_ms"] is not None and echo["p99_ms"] > 0
        assert echo["rss_mib"] > 0 and echo["cpu_percent"] is not None
        assert echo["address"] == published(directory, "echo")[name]
    broker = rows["broker-1"]
    assert (broker["role"], broker["service"]) == ("broker", "broker")
    assert broker["sessions"] == 0
    (yellow_row,) = (p for p in shown["processes"] if p["address"] == yellow_ops)
    assert yellow_row["role"] == "yellow" and yellow_row["health"] == "ready"

    cluster_row = shown["cluster"]
    assert cluster_row["processes"] == 4 and cluster_row["ready"] == 4
    assert cluster_row["requests_per_s"] > 0 and cluster_row["errors_per_s"] == 0
    services = {s["service"]: s for s in shown["services"]}
    assert services["echo"]["instances"] == 2 and services["echo"]["requests_per_s"] > 0
    assert services["echo"]["p50_ms"] is not None and services["echo"]["p99_ms"] is not None
    # Each process's two reads are 1 s apart at least: no more were served in that time than
    # were ever sent (a worker the busy machine held up serves its backlog within the
    # interval, so the rate may well exceed RATE).
    assert services["echo"]["requests_per_s"] * 1.0 <= load.sent, load.sent

    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].startswith("4 processes: "), text.stdout
    assert any(line.split()[:3] == ["worker", "echo", "echo-1"] for line in lines), text.stdout
    assert any(line.split()[:2] == ["echo", "2"] for line in lines), text.stdout


@pytest_twisted.inlineCallbacks
def test_a_process_that_does_not_answer_is_unreachable(
    cluster: Cluster, directory_factory: Any
) -> Any:
    """A stopped (SIGSTOP) worker shows as unreachable within the deadline: no hang."""
    cluster.yellow()
    worker = cluster.worker("echo-1", extra=("--metrics", "127.0.0.1:0"))
    directory = directory_factory(cluster.yellows)
    yield until(lambda: published(directory, "echo").get("echo-1"), what="echo-1's listener")
    address = published(directory, "echo")["echo-1"]
    worker.signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        # --target: the frozen worker is still read once the registry has dropped it.
        result = yield run_status(
            "--yellow",
            cluster.yellows[0],
            "--target",
            address,
            "--json",
            "--interval",
            "0.2",
            "--timeout",
            "1",
        )
        took = time.monotonic() - started
    finally:
        worker.signal(signal.SIGCONT)
    assert result.returncode == 0, result.stderr
    (row,) = (p for p in json.loads(result.stdout)["processes"] if p["address"] == address)
    assert row["health"] == "unreachable" and row["detail"] == "no answer within 1 s"
    assert took < 30, took


def watch_lines(yellow: str, count: int) -> tuple[list[str], int | None]:
    """Run ``mmo status --watch --json`` until it printed ``count`` lines, then Ctrl-C it:
    the lines and its exit status."""
    proc = subprocess.Popen(
        [*MMO, "status", "--yellow", yellow, "--watch", "--json", "--interval", "0.3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        while len(lines) < count:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
        proc.send_signal(signal.SIGINT)
        return lines, proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


@pytest_twisted.inlineCallbacks
def test_watch_repeats_until_interrupted(cluster: Cluster, directory_factory: Any) -> Any:
    """``--watch --json`` prints one status per interval, each a JSON object, until Ctrl-C."""
    cluster.yellow()
    cluster.worker("echo-1", extra=("--metrics", "127.0.0.1:0"))
    directory = directory_factory(cluster.yellows)
    yield until(lambda: published(directory, "echo").get("echo-1"), what="echo-1's listener")
    lines, code = yield threads.deferToThread(watch_lines, cluster.yellows[0], 3)
    assert len(lines) == 3, lines
    for line in lines:
        status = json.loads(line)
        (row,) = status["processes"]
        assert row["instance"] == "echo-1" and row["requests_per_s"] is not None
    assert code == 0


def test_no_yellow_is_an_error() -> None:
    """Against no yellow, ``mmo status`` exits 1 saying so (after its wait for the view)."""
    yellow = f"tcp://127.0.0.1:{free_port()}"
    result = subprocess.run(
        [*MMO, "status", "--yellow", yellow, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 1 and "no yellow answered" in result.stderr, result.stderr
