"""What operators see of a real cluster: metrics that count what clients did, a trace id
that follows a request across processes in JSON logs, readiness while draining."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted  # type: ignore[import-untyped]
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, threads

from mmo.testing import free_port
from mmo.testing.rawclient import RawClient
from mmo.wire.gen.mmo.ttypes import PacketKind

from .conftest import until, wait_links, wait_until
from .edge import EdgeCluster

pytestmark = pytest.mark.timeout(90)

RELAY = "mmo.testing.handlers:Relay"
CLIENT_ECHO = "mmo.testing.handlers:ClientEcho"


def get(url: str) -> tuple[int, bytes]:
    """GET ``url``: the status and body (an HTTP error status too)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def samples(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample a process's /metrics shows, by name and labels."""
    status, body = get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def sample(port: int, name: str, **labels: str) -> float:
    """One sample's value (0 when absent)."""
    return samples(port).get((name, tuple(sorted(labels.items()))), 0.0)


def records(path: Path) -> list[dict[str, Any]]:
    """The JSON records of a process's log (``--log-format json``)."""
    out = []
    for line in path.read_text().splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def test_metrics_count_what_clients_did_and_a_trace_crosses_every_process(
    tmp_path: Path,
) -> None:
    ports = {name: free_port() for name in ("broker", "echo", "relay")}
    edge = EdgeCluster(
        tmp_path,
        brokers=1,
        workers={"session": "mmo.sessions:SessionService", "sso": "mmo.examples.sso:SSOService"},
        broker_args=("--metrics", str(ports["broker"]), "--log-format", "json"),
    )
    try:
        edge._start("logs", "mmo-logs", ["--yellow", edge.yellow, "--dir", str(tmp_path)], edge.env)
        json_ops = ("--log-format", "json")
        edge.start_worker("echo-1", CLIENT_ECHO, ("--metrics", str(ports["echo"]), *json_ops))
        edge.start_worker("relay-1", RELAY, ("--metrics", str(ports["relay"]), *json_ops))
        edge.wait_ready()
        player = RawClient(edge.ports[0])
        player.login("bob", "pw-bob")
        until_routes(player, ("echo.echo", "relay.relay"))
        echo_ok = {"service": "echo", "method": "echo", "outcome": "ok"}
        served = "mmo_server_request_duration_seconds_count"
        called = "mmo_client_request_duration_seconds_count"
        before = (
            sample(ports["echo"], served, **echo_ok),
            sample(ports["broker"], called, **echo_ok),
        )
        n = 25
        for i in range(n):
            assert player.request("echo.echo", {"i": i}).kind == PacketKind.RESPONSE

        # Both sides counted exactly the requests sent, by service, method and outcome.
        assert sample(ports["echo"], served, **echo_ok) - before[0] == n
        assert sample(ports["broker"], called, **echo_ok) - before[1] == n
        broker = samples(ports["broker"])
        assert broker[("mmo_broker_sessions", ())] >= 1
        assert broker[("mmo_broker_packets_total", (("direction", "in"),))] >= n
        assert broker[("mmo_broker_logins_total", (("outcome", "ok"),))] >= 2
        assert broker[("process_resident_memory_bytes", ())] > 0

        # A request the client traces: every hop records a span under its trace id, and
        # the handler's own log events carry it.
        seq = player.send(PacketKind.REQUEST, "relay.relay", {"text": "hello"}, trace="t-42")
        reply = answer(player, seq)
        assert reply.kind == PacketKind.RESPONSE and reply.value == {"text": "hello"}
        logs = {name: edge.processes[name].log_path for name in ("broker-1", "relay-1", "echo-1")}

        def spans() -> dict[str, list[dict[str, Any]]]:
            return {
                name: [r for r in records(path) if r.get("trace_id") == "t-42"]
                for name, path in logs.items()
            }

        seen = wait_until(lambda: all(spans().values()) and spans(), 15, "the trace in every log")
        assert {(r["span"], r["service"], r["method"]) for r in seen["broker-1"]} == {
            ("client", "relay", "relay")
        }
        relay = seen["relay-1"]
        assert {(r.get("span"), r.get("service"), r.get("method")) for r in relay} >= {
            ("server", "relay", "relay"),
            ("client", "echo", "echo"),
        }
        assert any("asked to relay 'hello'" in r["message"] for r in relay)
        assert {(r["span"], r["service"]) for r in seen["echo-1"]} == {("server", "echo")}
        for r in relay:
            assert r["role"] == "worker" and r["instance"] == "relay-1"
            assert r["level"] and r["time"].endswith("Z") and r["namespace"]

        # The collector has the whole path: mmo trace prints every hop, in order.
        def traced() -> str | None:
            # Every hop's span and the relay's two log events (each process ships its
            # own, so they reach the collector in any order).
            out = mmo(edge, "trace", "t-42")
            whole = out is not None and out.startswith("trace t-42: 4 spans in 3 processes")
            return out if whole and "echo answered" in out else None

        path = wait_until(traced, 15, "the trace's 4 spans and 2 events in the collector")
        hops = [line.split()[2:6] for line in path.splitlines()[1:5]]
        assert hops == [
            ["broker/broker-1", "client", "relay.relay", "ok"],
            ["worker/relay-1", "server", "relay.relay", "ok"],
            ["worker/relay-1", "client", "echo.echo", "ok"],
            ["worker/echo-1", "server", "echo.echo", "ok"],
        ], path
        assert "relay: asked to relay 'hello' [trace=t-42]" in path

        # Untraced requests have a trace id too (born at the broker), in every event
        # they cause, but leave no spans.
        assert player.request("relay.relay", {"text": "quiet"}).kind == PacketKind.RESPONSE
        quiet = wait_until(
            lambda: [r for r in records(logs["relay-1"]) if "'quiet'" in r["message"]],
            15,
            "the untraced request's log event",
        )
        trace_id = quiet[0]["trace_id"]
        assert len(trace_id) == 32 and int(trace_id, 16)
        assert not [r for r in records(logs["echo-1"]) if r.get("trace_id") == trace_id]
        player.close()
    finally:
        edge.stop()


def mmo(edge: EdgeCluster, *args: str) -> str | None:
    """Run the ``mmo`` tool against ``edge``: its output, or None if it failed."""
    done = subprocess.run(
        [sys.executable, "-c", "from mmo.cli import main; main()", *args, "--yellow", edge.yellow],
        env={**os.environ, **edge.env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    return done.stdout if done.returncode == 0 else None


def until_routes(player: RawClient, routes: tuple[str, ...], timeout: float = 20.0) -> None:
    """Wait until the broker serves every route (their workers registered)."""
    deadline = time.monotonic() + timeout
    for route in routes:
        while True:
            seq = player.send(PacketKind.REQUEST, route, {})
            if answer(player, seq).kind == PacketKind.RESPONSE:
                break
            assert time.monotonic() < deadline, f"{route} never served"
            time.sleep(0.2)


def answer(player: RawClient, seq: int) -> Any:
    """The RESPONSE or ERROR to ``seq``."""
    while True:
        packet = player.recv()
        if packet.seq == seq and packet.kind in (PacketKind.RESPONSE, PacketKind.ERROR):
            return packet


@pytest_twisted.inlineCallbacks
def test_readyz_turns_false_while_a_worker_drains(cluster: Any, directory_factory: Any) -> Any:
    cluster.yellow()
    port = free_port()
    worker = cluster.worker("echo-1", extra=("--metrics", f"127.0.0.1:{port}"))
    directory = directory_factory(cluster.yellows)
    # The worker drains the calls of links that are up (a link still connecting when its
    # instance leaves counts as lost): wait for ours.
    yield wait_links(directory, "echo", {"echo-1"})

    def status(page: str) -> defer.Deferred[tuple[int, bytes]]:
        # In a thread: the reactor keeps serving the test's links meanwhile.
        return threads.deferToThread(get, f"http://127.0.0.1:{port}/{page}")

    yield until(lambda: status("readyz").addCallback(lambda r: r[0] == 200), 15)
    _, body = yield status("readyz")
    ready = json.loads(body)
    assert ready["ready"] and ready["role"] == "worker" and ready["instance"] == "echo-1"
    assert ready["checks"]["serving"]["ok"] and ready["checks"]["registry"]["ok"]

    slow = directory.call("echo", "sleep", {"seconds": 3.0}, timeout=10)
    in_flight = "mmo_server_requests_in_flight"
    yield until(lambda: threads.deferToThread(sample, port, in_flight, service="echo"), 10)
    worker.signal(signal.SIGTERM)  # drains: the sleep in flight finishes, nothing new starts
    yield until(lambda: status("readyz").addCallback(lambda r: r[0] == 503), 5)
    _, body = yield status("readyz")
    drained = json.loads(body)
    assert not drained["ready"]
    assert not drained["checks"]["serving"]["ok"]
    assert "draining" in drained["checks"]["serving"]["detail"]
    assert (yield status("healthz"))[0] == 200  # alive all the same
    assert (yield slow) == 3.0
