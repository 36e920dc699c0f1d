"""Distributed logging between real processes: workers ship their log events to a
``twistd mmo-logs`` collector, ``mmo logs`` and ``mmo trace`` read them back, a worker
killed outright has shipped its last event, and without a collector workers keep serving
while their bounded log queue drops the oldest events."""

from __future__ import annotations

import json
import os
import sys
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, protocol, reactor, threads, utils

from mmo.errors import RemoteError
from mmo.telemetry.trace import Trace
from mmo.wire import from_value

from .conftest import until, wait_instances, wait_links

MMO = ["-c", "from mmo.cli import main; main()"]


def start_collector(cluster: Any, directory_path: Path, name: str = "logs-1") -> Any:
    """A ``twistd mmo-logs`` registered with the cluster's yellows."""
    args = ["--instance-id", name, "--dir", str(directory_path)]
    for address in cluster.yellows:
        args += ["--yellow", address]
    return cluster.processes.start("mmo-logs", *args, name=name)


class Output(protocol.ProcessProtocol):
    """Collects a child's output; ``ended`` fires when it has exited."""

    def __init__(self) -> None:
        self.out = b""
        self.ended: defer.Deferred[None] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(None)

    def text(self) -> str:
        return self.out.decode(errors="replace")


@defer.inlineCallbacks
def mmo(*args: str) -> Any:
    """Run the ``mmo`` tool without blocking the reactor; its output (it must succeed)."""
    out, err, code = yield utils.getProcessOutputAndValue(
        sys.executable, [*MMO, *args], env=dict(os.environ)
    )
    assert code == 0, f"mmo {' '.join(args)} exited {code}: {err.decode(errors='replace')}"
    return out.decode()


@defer.inlineCallbacks
def query(directory: Any, **kwargs: Any) -> Any:
    """Every event the live collectors keep that matches (asking each one)."""
    events: list[dict[str, Any]] = []
    for instance in directory.view.get("logs"):
        answer = yield directory.call(
            "logs", "query", kwargs, instance=instance.instance_id, timeout=5
        )
        events.extend(answer["events"])
    return events


@defer.inlineCallbacks
def scrape(directory: Any, service: str) -> Any:
    """The samples of the first instance of ``service``'s /metrics, by name (its address
    is in its registry entry)."""
    (instance,) = directory.view.get(service)
    address = from_value(instance.meta["metrics"])
    body = yield threads.deferToThread(
        lambda: urllib.request.urlopen(f"http://{address}/metrics", timeout=5).read()
    )
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


@pytest.mark.timeout(120)
@pytest_twisted.inlineCallbacks
def test_a_workers_events_reach_the_collector_and_the_tools_print_them(
    cluster, directory_factory, tmp_path
):
    """A worker's events (its start, a handler's failure with its traceback, a traced
    request's span) reach the collector and its file; `mmo logs --follow` prints them as
    they come, `mmo logs --role worker` prints them and no other role's, `--level error
    --json` the failure's record, `mmo trace ID` the request's path."""
    cluster.yellow()
    start_collector(cluster, tmp_path / "collected")
    cluster.worker("echo-a")
    directory = directory_factory(cluster.yellows)
    yield wait_instances(directory, "logs", {"logs-1"})
    yield wait_instances(directory, "echo", {"echo-a"})
    yield wait_links(directory, "echo", {"echo-a"})
    yellow = cluster.yellows[0]
    follower = Output()
    follow = reactor.spawnProcess(
        follower,
        sys.executable,
        [sys.executable, *MMO, "logs", "--yellow", yellow, "--follow", "--instance", "echo-a"],
        env=dict(os.environ),
    )
    try:
        # It printed what was there when it started (the worker's start)...
        yield until(lambda: "worker echo-a serving echo" in follower.text(), what="mmo logs -f")
        marker = f"marker-{uuid.uuid4().hex}"
        with pytest.raises(RemoteError, match=marker):
            yield directory.call("echo", "fail", {"message": marker})
        # ... then what came since.
        yield until(lambda: marker in follower.text(), what="mmo logs --follow printing news")
    finally:
        follow.signalProcess("KILL")
        yield follower.ended
    assert follower.text().count("echo.fail raised EchoFailure") == 1
    trace_id = uuid.uuid4().hex
    assert (yield directory.call("echo", "whoami", trace=Trace(trace_id, traced=True))) == "echo-a"

    @defer.inlineCallbacks
    def printed() -> Any:
        out = yield mmo("logs", "--yellow", yellow, "--role", "worker")
        return out if marker in out and trace_id in out else None

    out = yield until(printed, what="mmo logs printing the worker's failure and span")
    lines = [line for line in out.splitlines() if not line.startswith("    ")]
    assert all(line.split()[2].startswith("worker/") for line in lines), lines
    assert any("worker echo-a serving echo" in line for line in lines)
    (failure,) = [line for line in lines if "echo.fail raised EchoFailure" in line]
    assert failure.split()[1:4] == ["error", "worker/echo-a", "mmo.logic.server:"]
    assert any(f"[trace={trace_id}]" in line for line in lines)

    out = yield mmo("logs", "--yellow", yellow, "--level", "error", "--json")
    records = [json.loads(line) for line in out.splitlines()]
    assert records and all(r["level"] in ("error", "critical") for r in records)
    (mine,) = [r for r in records if marker in r.get("traceback", "")]
    assert (mine["role"], mine["instance"], mine["method"]) == ("worker", "echo-a", "fail")

    out = yield mmo("trace", trace_id, "--yellow", yellow)
    assert out.startswith(f"trace {trace_id}: 1 spans in 1 processes")
    assert "worker/echo-a server echo.whoami ok" in out

    written = (tmp_path / "collected" / "mmo.log").read_text()
    assert marker in written and trace_id in written


@pytest.mark.timeout(120)
@pytest_twisted.inlineCallbacks
def test_a_worker_killed_outright_has_shipped_its_last_event(cluster, directory_factory, tmp_path):
    """A worker that logs (a handler's failure), answers, and is killed with SIGKILL at
    once: that last event is in the collector."""
    cluster.yellow()
    start_collector(cluster, tmp_path / "collected")
    worker = cluster.worker("echo-k")
    directory = directory_factory(cluster.yellows)
    yield wait_instances(directory, "logs", {"logs-1"})
    yield wait_instances(directory, "echo", {"echo-k"})
    yield wait_links(directory, "echo", {"echo-k"})
    # The worker's link to the collector is up once its start-up events are there.
    yield until(
        lambda: query(directory, instance="echo-k"), what="the worker's first events shipped"
    )

    marker = f"last-words-{uuid.uuid4().hex}"
    with pytest.raises(RemoteError, match=marker):
        yield directory.call("echo", "fail", {"message": marker})

    worker.kill()
    assert worker.proc is not None and worker.proc.returncode == -9

    @defer.inlineCallbacks
    def last_words() -> Any:
        events = yield query(directory, instance="echo-k", level="error")
        return [e for e in events if marker in e.get("traceback", "")]

    (event,) = yield until(last_words, timeout=15, what="the killed worker's last event")
    assert event["message"].startswith("echo.fail raised EchoFailure")


@pytest.mark.timeout(120)
@pytest_twisted.inlineCallbacks
def test_without_a_collector_workers_serve_and_drop_the_oldest_events(
    cluster, directory_factory, tmp_path
):
    """No collector: the worker serves every call, its queue of log events stays at its
    bound (--log-queue) and /metrics counts the dropped ones, more as it logs more; once
    a collector comes, the queue drains into it."""
    cluster.yellow()
    cluster.worker("echo-c", extra=("--log-queue", "20", "--metrics", "127.0.0.1:0"))
    directory = directory_factory(cluster.yellows)
    yield wait_instances(directory, "echo", {"echo-c"})
    yield wait_links(directory, "echo", {"echo-c"})

    traces: list[str] = []

    @defer.inlineCallbacks
    def traced_calls(n: int) -> Any:
        # A traced request leaves a span event at the worker: one log event per call.
        for _ in range(n):
            traces.append(uuid.uuid4().hex)
            trace = Trace(traces[-1], traced=True)
            assert (yield directory.call("echo", "echo", {"n": 1}, trace=trace)) == {"n": 1}

    yield traced_calls(40)
    first = yield scrape(directory, "echo")
    assert first["mmo_log_queue_events"] == 20 == first["mmo_log_queue_capacity"]
    assert first["mmo_log_events_dropped_total"] >= 20
    assert first["mmo_log_events_shipped_total"] == 0

    yield traced_calls(15)
    second = yield scrape(directory, "echo")
    assert second["mmo_log_events_dropped_total"] >= first["mmo_log_events_dropped_total"] + 15
    assert second["mmo_log_queue_events"] == 20

    start_collector(cluster, tmp_path / "collected")
    yield wait_instances(directory, "logs", {"logs-1"})

    @defer.inlineCallbacks
    def drained() -> Any:
        samples = yield scrape(directory, "echo")
        return samples["mmo_log_queue_events"] == 0 and samples["mmo_log_events_shipped_total"]

    shipped = yield until(drained, what="the queue drained into the collector")
    assert shipped >= 20
    events = yield until(
        lambda: query(directory, instance="echo-c"), what="the held events in the collector"
    )
    # The queue held the latest events: spans of the last calls only, the oldest dropped.
    spans = {e["trace_id"] for e in events if e["namespace"] == "mmo.trace"}
    assert spans and spans <= set(traces[-20:]), sorted(
        (e["seq"], e["namespace"], e["message"][:40], e.get("trace_id") in traces[-20:])
        for e in events
    )
