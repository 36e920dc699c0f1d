"""`mmo bench`: every standard workload runs in one command and reports sane figures."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

MMO = [sys.executable, "-c", "from mmo.cli import main; main()"]

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def bench_all() -> dict[str, dict[str, Any]]:
    """The JSON lines of one small `mmo bench all` run, by workload."""
    result = subprocess.run(
        [
            *MMO,
            "bench",
            "all",
            "--duration",
            "1",
            "--warmup",
            "0.3",
            "--clients",
            "10",
            "--rooms",
            "2",
            "--members",
            "5",
            "--conns",
            "200",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [line["workload"] for line in lines] == ["floor", "w1", "w2", "w3"], result.stdout
    return {line["workload"]: line for line in lines}


def _check_latency(result: dict[str, Any]) -> None:
    assert 0 < result["p50_ms"] <= result["p90_ms"] <= result["p99_ms"] <= result["max_ms"]


def _check_cpu(result: dict[str, Any], names: set[str]) -> None:
    assert set(result["server_cpu_s"]) == names
    assert all(cpu >= 0 for cpu in result["server_cpu_s"].values())
    assert result["server_cpu_total_s"] > 0
    assert result["generator_cpu_s"] > 0


def test_floor_echoes_through_the_bare_chain(bench_all):
    """The floor answers every request, with no errors, and measures its two processes."""
    floor = bench_all["floor"]
    assert floor["errors"] == 0 and floor["clients"] == 10
    assert floor["requests_per_s"] > 0 and floor["answered"] > 0
    assert floor["sent"] >= floor["answered"]
    _check_latency(floor)
    _check_cpu(floor, {"floor-server", "floor-echo"})
    assert floor["server_cpu_us_per_request"] > 0


def test_w1_echo_reports_rate_latency_cpu_and_ratio_to_the_floor(bench_all):
    """W1 round-trips through broker and chat without errors and compares itself to the floor."""
    w1 = bench_all["w1"]
    assert w1["errors"] == 0 and w1["first_error"] is None
    assert w1["requests_per_s"] > 0 and w1["clients"] == 10
    _check_latency(w1)
    _check_cpu(w1, {"yellow", "session", "sso", "chat", "broker"})
    assert w1["server_cpu_s"]["broker"] > 0 and w1["server_cpu_s"]["chat"] > 0
    assert w1["server_cpu_us_per_request"] > 0
    assert w1["floor_requests_per_s"] == bench_all["floor"]["requests_per_s"]
    assert w1["floor_ratio"] == pytest.approx(
        w1["requests_per_s"] / bench_all["floor"]["requests_per_s"], rel=0.01
    )
    assert w1["floor_cpu_ratio"] > 0


def test_w2_delivers_every_message_to_every_member(bench_all):
    """At this low load every message sent in the window reaches all members of its room."""
    w2 = bench_all["w2"]
    assert w2["connections"] == 10 and w2["errors"] == 0 and w2["still_open"] == 10
    assert w2["sent"] > 0 and w2["sent_per_s"] > 0
    # Open loop: 10 members every 100 ms is 100 messages/s offered. A busy machine sends
    # fewer within the window (a figure, not a failure); never more than offered (give or
    # take a round of sends at the window's edges).
    assert 0 < w2["sent_per_s"] <= 100 * 1.3
    assert w2["expected"] == w2["sent"] * 5
    assert w2["delivery_ratio"] == 1.0 and w2["delivered"] == w2["expected"]
    assert w2["delivered_per_s"] > 0
    _check_latency(w2)
    _check_cpu(w2, {"yellow", "session", "sso", "chat", "broker"})
    assert w2["server_cpu_us_per_delivery"] > 0


def test_w3_holds_every_idle_connection(bench_all):
    """W3 logs in every connection, keeps them open, and measures the broker's memory."""
    w3 = bench_all["w3"]
    assert w3["conns"] == 200 and w3["logged_in"] == 200 and w3["still_open"] == 200
    assert w3["errors"] == 0
    assert w3["logins_per_s"] > 0
    assert w3["broker_rss_before_kib"] > 0 and w3["broker_rss_after_kib"] > 0
    assert w3["rss_kib_per_conn"] is not None and 0 <= w3["rss_kib_per_conn"] < 1024
    assert "broker" in w3["rss_kib_per_conn_by_process"]


def test_w1_with_and_without_telemetry_in_one_run() -> None:
    """`--telemetry compare` runs W1 on servers without, then with, their operator
    listeners scraped and their logs shipped to a collector, and gives the ratios."""
    args = ["--no-floor", "--telemetry", "compare", "--duration", "1", "--warmup", "0.3"]
    result = subprocess.run(
        [*MMO, "bench", "w1", *args, "--clients", "10", "--json"],
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    off, on = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert (off["telemetry"], on["telemetry"]) == (False, True)
    assert off["errors"] == on["errors"] == 0
    assert "logs" in on["server_cpu_s"] and "logs" not in off["server_cpu_s"]
    ratios = on["telemetry_ratio"]
    assert set(ratios) == {"requests_per_s", "server_cpu_us_per_request", "p99_ms"}
    assert ratios["requests_per_s"] == pytest.approx(
        on["requests_per_s"] / off["requests_per_s"], abs=0.001
    )
