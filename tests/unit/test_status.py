"""``mmo status``: its pure computation (quantiles, rates, health) on hand-written
exposition text, and its reads of operator listeners over loopback HTTP."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor

from mmo.cli import build_parser
from mmo.cli.status import render
from mmo.ops.status import histogram_quantile, scrape, summarize, targets
from mmo.registry import make_instance
from mmo.telemetry.metrics import Latencies, Telemetry, gauge
from mmo.telemetry.site import OpsListener

INF = math.inf
LES = ("0.001", "0.01", "0.1", "1", "+Inf")


def histogram(service: str, method: str, outcome: str, cumulative: tuple[int, ...]) -> str:
    """One series of mmo_server_request_duration_seconds (buckets ``LES``)."""
    labels = f'method="{method}",outcome="{outcome}",service="{service}"'
    lines = [
        f'mmo_server_request_duration_seconds_bucket{{le="{le}",{labels}}} {n}'
        for le, n in zip(LES, cumulative, strict=True)
    ]
    lines.append(f"mmo_server_request_duration_seconds_count{{{labels}}} {cumulative[-1]}")
    lines.append(f"mmo_server_request_duration_seconds_sum{{{labels}}} 0.5")
    return "\n".join(lines)


def exposition(
    *series: str, cpu: float = 1.0, rss: int = 50 * 2**20, sessions: int | None = None
) -> str:
    """A process's /metrics text: the given histogram series, CPU, memory, sessions."""
    parts = [
        "# HELP process_cpu_seconds_total CPU.",
        "# TYPE process_cpu_seconds_total counter",
        f"process_cpu_seconds_total {cpu}",
        "# HELP process_resident_memory_bytes RSS.",
        "# TYPE process_resident_memory_bytes gauge",
        f"process_resident_memory_bytes {rss}",
    ]
    if sessions is not None:
        parts += [
            "# HELP mmo_broker_sessions Sessions.",
            "# TYPE mmo_broker_sessions gauge",
            f"mmo_broker_sessions {sessions}",
        ]
    if series:
        parts += [
            "# HELP mmo_server_request_duration_seconds Served.",
            "# TYPE mmo_server_request_duration_seconds histogram",
            *series,
        ]
    return "\n".join(parts) + "\n"


READY = {"ready": True, "checks": {"registered": {"ok": True, "detail": "yes"}}}


def snap(
    instance: str,
    metrics: str | None,
    *,
    role: str = "worker",
    service: str = "echo",
    ready: dict[str, Any] | None = None,
    error: str | None = None,
    time: float | None = None,
    address: str | None = "127.0.0.1:1",
) -> dict[str, Any]:
    return {
        "role": role,
        "service": service,
        "services": [service],
        "instance": instance,
        "address": address,
        "metrics": metrics,
        "ready": READY if ready is None else ready,
        "error": error,
        "time": time,
    }


# -- histogram_quantile ---------------------------------------------------------------------


def test_quantile_interpolates_within_the_bucket_of_the_rank() -> None:
    buckets = [(0.1, 10), (0.2, 20), (0.4, 40), (INF, 40)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.2)  # rank 20: top of (0.1, 0.2]
    assert histogram_quantile(0.75, buckets) == pytest.approx(0.3)  # rank 30: half of (0.2, 0.4]
    assert histogram_quantile(0.125, buckets) == pytest.approx(0.05)  # rank 5 of (0, 0.1]
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.2 + 0.2 * 19.6 / 20)


def test_quantile_edges_are_prometheus_ones() -> None:
    # The rank in the +Inf bucket: the highest finite bound.
    assert histogram_quantile(0.99, [(0.1, 1), (1.0, 1), (INF, 100)]) == 1.0
    # No observations, no +Inf bucket, a lone bucket: no answer.
    assert math.isnan(histogram_quantile(0.5, [(0.1, 0), (INF, 0)]))
    assert math.isnan(histogram_quantile(0.5, [(0.1, 1), (0.2, 2)]))
    assert math.isnan(histogram_quantile(0.5, [(INF, 3)]))
    assert histogram_quantile(-0.1, [(0.1, 1), (INF, 1)]) == -INF
    assert histogram_quantile(1.1, [(0.1, 1), (INF, 1)]) == INF
    # Unsorted input, and a count lower than the one before it (taken as the one before).
    assert histogram_quantile(0.5, [(INF, 4), (0.2, 4), (0.1, 2), (0.15, 1)]) == pytest.approx(0.1)


def test_quantile_of_the_real_buckets_matches_the_observations() -> None:
    """1000 requests of 1..1000 us: p50 is close to 0.5 ms, p99 to 0.99 ms."""
    latencies = Latencies("x", "x", ("service",))
    for i in range(1, 1001):
        latencies.observe(("echo",), i / 1e6)
    (family,) = list(latencies.collect())
    buckets = [
        (float(s.labels["le"]), s.value) for s in family.samples if s.name.endswith("_bucket")
    ]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.0005)
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.00099)


# -- summarize -----------------------------------------------------------------------------


def test_rates_latency_cpu_and_memory_over_the_interval() -> None:
    before = {
        "a": snap("echo-1", exposition(histogram("echo", "echo", "ok", (10, 10, 10, 10, 10)))),
        "b": snap(
            "broker-1",
            exposition(cpu=2.0, sessions=1),
            role="broker",
            service="broker",
        ),
    }
    after = {
        "a": snap(
            "echo-1",
            exposition(
                # 100 more ok: 50 under 1 ms, 50 in (1, 10] ms; 10 errors in (10, 100] ms.
                histogram("echo", "echo", "ok", (60, 110, 110, 110, 110)),
                histogram("echo", "fail", "remote", (0, 0, 10, 10, 10)),
                cpu=1.5,
                rss=100 * 2**20,
            ),
        ),
        "b": snap(
            "broker-1",
            exposition(cpu=2.2, sessions=7),
            role="broker",
            service="broker",
        ),
    }
    status = summarize(before, after, 2.0)
    assert json.loads(json.dumps(status, allow_nan=False)) == status
    echo, broker = (
        next(p for p in status["processes"] if p["instance"] == name)
        for name in ("echo-1", "broker-1")
    )
    assert echo["requests_per_s"] == 55.0 and echo["errors_per_s"] == 5.0
    # 110 requests: rank 108.9 is the 9th of 10 in (10, 100] ms.
    assert echo["p99_ms"] == pytest.approx(10 + 90 * 8.9 / 10)
    assert echo["cpu_percent"] == 25.0 and echo["rss_mib"] == 100.0
    assert echo["health"] == "ready" and echo["sessions"] is None
    assert broker["sessions"] == 7 and broker["cpu_percent"] == 10.0
    assert broker["requests_per_s"] == 0.0 and broker["p99_ms"] is None
    services = {s["service"]: s for s in status["services"]}
    assert services["echo"] == {
        "service": "echo",
        "instances": 1,
        "requests_per_s": 55.0,
        "errors_per_s": 5.0,
        "p50_ms": pytest.approx(1 + 9 * 5 / 50),  # rank 55: 5th of 50 in (1, 10] ms
        "p99_ms": pytest.approx(10 + 90 * 8.9 / 10),
    }
    assert services["broker"]["instances"] == 1 and services["broker"]["p99_ms"] is None
    cluster = status["cluster"]
    assert cluster["processes"] == 2 and cluster["ready"] == 2 and cluster["sessions"] == 7
    assert cluster["requests_per_s"] == 55.0 and cluster["errors_per_s"] == 5.0


def test_services_add_up_over_instances_and_each_uses_its_own_time() -> None:
    def one(n: int) -> str:
        return exposition(histogram("echo", "echo", "ok", (n, n, n, n, n)))

    before = {
        "a": snap("echo-1", one(0), time=100.0),
        "b": snap("echo-2", one(0), time=100.0),
    }
    after = {
        "a": snap("echo-1", one(40), time=102.0),  # 2 s: 20/s
        "b": snap("echo-2", one(40), time=104.0),  # 4 s: 10/s
    }
    status = summarize(before, after, 1.0)
    rates = {p["instance"]: p["requests_per_s"] for p in status["processes"]}
    assert rates == {"echo-1": 20.0, "echo-2": 10.0}
    (echo,) = status["services"]
    assert echo["instances"] == 2 and echo["requests_per_s"] == 30.0
    assert echo["p50_ms"] == pytest.approx(0.5)
    assert status["cluster"]["requests_per_s"] == 30.0


def test_a_restarted_process_counts_from_zero() -> None:
    before = {"a": snap("echo-1", exposition(histogram("echo", "echo", "ok", (90,) * 5), cpu=9))}
    after = {"a": snap("echo-1", exposition(histogram("echo", "echo", "ok", (4,) * 5), cpu=0.5))}
    (row,) = summarize(before, after, 1.0)["processes"]
    assert row["requests_per_s"] == 4.0 and row["cpu_percent"] == 50.0


def test_an_unreachable_process_is_shown_without_numbers() -> None:
    before = {"a": snap("echo-1", exposition()), "b": snap("echo-2", exposition())}
    after = {
        "a": snap("echo-1", exposition()),
        "b": snap("echo-2", None, ready={}, error="Connection was refused by other side"),
    }
    status = summarize(before, after, 1.0)
    gone = next(p for p in status["processes"] if p["instance"] == "echo-2")
    assert gone["health"] == "unreachable"
    assert gone["detail"] == "Connection was refused by other side"
    assert gone["requests_per_s"] is None and gone["rss_mib"] is None
    assert status["cluster"]["unreachable"] == 1 and status["cluster"]["ready"] == 1
    assert status["services"][0]["instances"] == 2
    text = render(status)
    assert "unreachable: Connection was refused by other side" in text


def test_not_ready_says_the_first_failing_check() -> None:
    not_ready = {
        "ready": False,
        "checks": {
            "database": {"ok": True, "detail": "connected"},
            "draining": {"ok": False, "detail": "the process is draining"},
            "registered": {"ok": False, "detail": "no yellow answered"},
        },
    }
    after = {"a": snap("echo-1", exposition(), ready=not_ready)}
    status = summarize({}, after, 1.0)
    (row,) = status["processes"]
    assert row["health"] == "not ready" and row["detail"] == "the process is draining"
    assert row["requests_per_s"] is None  # only one read: no rates
    assert row["rss_mib"] == 50.0  # but what one read says
    assert status["cluster"]["not_ready"] == 1
    assert "NOT READY: the process is draining" in render(status)


def test_a_process_without_a_listener_is_listed() -> None:
    after = {"echo/echo-1": snap("echo-1", None, address=None, ready={})}
    status = summarize(after, after, 1.0)
    (row,) = status["processes"]
    assert row["health"] == "no metrics"
    assert status["cluster"]["no_metrics"] == 1 and status["cluster"]["processes"] == 1


def test_render_lays_out_header_processes_and_services() -> None:
    before = {"a": snap("echo-1", exposition(histogram("echo", "echo", "ok", (0,) * 5)))}
    after = {"a": snap("echo-1", exposition(histogram("echo", "echo", "ok", (5, 10, 10, 10, 10))))}
    text = render(summarize(before, after, 1.0))
    lines = text.splitlines()
    assert lines[0] == "1 processes: 1 ready, 0 not ready, 0 unreachable"
    assert lines[1].startswith("sessions 0, 10.0 req/s, 0.0 err/s, p99 ")
    header = next(line for line in lines if line.startswith("ROLE"))
    assert header.split() == [
        "ROLE",
        "SERVICE",
        "INSTANCE",
        "REQ/S",
        "ERR/S",
        "P99",
        "MS",
        "CPU%",
        "RSS",
        "MiB",
        "SESSIONS",
        "HEALTH",
    ]
    row = next(line for line in lines if "echo-1" in line)
    assert row.split()[:4] == ["worker", "echo", "echo-1", "10.0"] and row.endswith("ready")
    assert any(line.split()[:3] == ["echo", "1", "10.0"] for line in lines)


# -- the registry's processes and reading their listeners ----------------------------------


def fake_view(*instances: Any) -> Any:
    view = SimpleNamespace(instances={}, warm=True, synced=True, yellows=("tcp://x:1",))
    for instance in instances:
        view.instances.setdefault(instance.service_name, {})[instance.instance_id] = instance
    view.wait_for = lambda predicate, timeout=10.0: defer.succeed(None)
    return view


def test_targets_are_one_per_listener() -> None:
    view = fake_view(
        make_instance("echo", "w-1", {}, {"metrics": "127.0.0.1:9001", "role": "worker"}),
        make_instance("chat", "w-1", {}, {"metrics": "127.0.0.1:9001", "role": "worker"}),
        make_instance("broker", "b-1", {}, {}),
    )
    found = targets(view, ["127.0.0.1:9555"])
    assert found["127.0.0.1:9001"]["services"] == ["chat", "echo"]
    assert found["broker/b-1"]["role"] == "broker" and found["broker/b-1"]["address"] is None
    assert found["127.0.0.1:9555"]["services"] == [] and len(found) == 3


def test_the_command_line() -> None:
    args = build_parser().parse_args(["status", "--json", "--interval", "0.5", "--target", "a:1"])
    assert args.json and args.interval == 0.5 and args.target == ["a:1"] and not args.watch


class Silent(protocol.Protocol):
    """Accepts and never answers."""


@pytest_twisted.inlineCallbacks
def test_scrape_reads_listeners_and_bounds_the_silent_ones() -> Any:
    telemetry = Telemetry("worker", "echo-1")
    telemetry.add_metrics(lambda: [gauge("mmo_broker_sessions", "s", (), 3)])
    telemetry.add_check("registered", lambda: (False, "no yellow answered"))
    listener = OpsListener(telemetry, "127.0.0.1", 0, reactor=reactor)
    listener.startService()
    silent = reactor.listenTCP(0, protocol.Factory.forProtocol(Silent), interface="127.0.0.1")
    closed = reactor.listenTCP(0, protocol.Factory(), interface="127.0.0.1")
    closed_port = closed.getHost().port
    yield closed.stopListening()
    try:
        view = fake_view(
            make_instance("echo", "echo-1", {}, {"metrics": telemetry.address, "role": "worker"}),
            make_instance("echo", "echo-2", {}, {"metrics": f"127.0.0.1:{silent.getHost().port}"}),
            make_instance("echo", "echo-3", {}, {"metrics": f"127.0.0.1:{closed_port}"}),
        )
        directory = SimpleNamespace(view=view)
        started = reactor.seconds()
        snapshots = yield scrape(reactor, directory, timeout=0.5)
        assert reactor.seconds() - started < 5
        status = summarize(snapshots, snapshots, 1.0)
        rows = {p["instance"]: p for p in status["processes"]}
        assert rows["echo-1"]["health"] == "not ready"
        assert rows["echo-1"]["detail"] == "no yellow answered"
        assert rows["echo-1"]["sessions"] == 3 and rows["echo-1"]["rss_mib"] > 0
        assert rows["echo-2"]["health"] == "unreachable"
        assert rows["echo-2"]["detail"] == "no answer within 0.5 s"
        assert rows["echo-3"]["health"] == "unreachable"
    finally:
        yield listener.stopService()
        yield silent.stopListening()
