"""Metrics, traces and structured logs of a process (mmo.telemetry), in process."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from prometheus_client import generate_latest
from twisted.logger import Logger

from mmo.errors import BadRequest, DeadlineExceeded, outcome
from mmo.telemetry import metrics
from mmo.telemetry.logs import PROCESS, iso_time, json_observer, record
from mmo.telemetry.metrics import BUCKETS, Latencies, Telemetry
from mmo.telemetry.site import parse_listen
from mmo.telemetry.trace import CURRENT, Trace, client_trace, header_fields, new_trace_id


def exposition(telemetry: Telemetry) -> str:
    return generate_latest(telemetry.registry).decode()


def test_latencies_are_cumulative_histograms_by_label() -> None:
    latencies = Latencies("mmo_x_seconds", "x", ("service", "outcome"))
    for seconds in (0.0004, 0.0005, 0.003, 20.0):
        latencies.observe(("echo", "ok"), seconds)
    latencies.observe(("echo", "deadline"), 5.0)
    telemetry = Telemetry("worker", "echo-1")
    telemetry.add_metrics(latencies.collect)
    text = exposition(telemetry)
    assert 'mmo_x_seconds_bucket{le="0.0005",outcome="ok",service="echo"} 2.0' in text
    assert 'mmo_x_seconds_bucket{le="0.005",outcome="ok",service="echo"} 3.0' in text
    assert 'mmo_x_seconds_bucket{le="10",outcome="ok",service="echo"} 3.0' in text
    assert 'mmo_x_seconds_bucket{le="+Inf",outcome="ok",service="echo"} 4.0' in text
    assert 'mmo_x_seconds_count{outcome="ok",service="echo"} 4.0' in text
    assert 'mmo_x_seconds_count{outcome="deadline",service="echo"} 1.0' in text
    assert latencies.count(service="echo") == 5
    assert latencies.count(outcome="ok") == 4
    assert len(BUCKETS) == 14


def test_label_values_past_the_cap_are_counted_together(monkeypatch: pytest.MonkeyPatch) -> None:
    """A caller inventing method names cannot grow a process's series without bound."""
    monkeypatch.setattr(metrics, "MAX_SERIES", 3)
    latencies = Latencies("mmo_y_seconds", "y", ("method",))
    for i in range(10):
        latencies.observe((f"m{i}",), 0.001)
    assert len(latencies.series) == 4
    assert latencies.count(method=metrics.OTHER) == 7


def test_telemetry_shows_its_identity_and_the_process() -> None:
    telemetry = Telemetry("broker", "broker-1")
    text = exposition(telemetry)
    assert 'mmo_info{mmo_instance="broker-1",role="broker",version=' in text
    assert "process_resident_memory_bytes" in text


def test_readiness_is_every_check_and_not_draining() -> None:
    telemetry = Telemetry("worker", "w")
    state = {"ok": True}
    telemetry.add_check("serving", lambda: (state["ok"], "serving"))
    telemetry.add_check("broken", lambda: 1 / 0)  # type: ignore[arg-type,return-value]
    ready, checks = telemetry.readiness()
    assert not ready and "ZeroDivisionError" in checks["broken"]["detail"]
    del telemetry.checks["broken"]
    assert telemetry.readiness()[0]
    telemetry.draining = True
    ready, checks = telemetry.readiness()
    assert not ready and not checks["draining"]["ok"]


def test_listening_publishes_the_address_in_the_registry_entries() -> None:
    class Entry:
        class instance:  # noqa: N801 - stands in for a Registration's instance
            meta: dict[str, Any] = {}

    telemetry = Telemetry("worker", "w")
    entry = Entry()
    telemetry.registrations.append(entry)
    telemetry.listening("127.0.0.1:9100")
    assert entry.instance.meta["metrics"].string_value == "127.0.0.1:9100"
    assert entry.instance.meta["role"].string_value == "worker"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("9100", ("127.0.0.1", 9100)),
        ("0.0.0.0:9100", ("0.0.0.0", 9100)),
        ("[::1]:0", ("::1", 0)),
    ],
)
def test_metrics_listen_values(value: str, expected: tuple[str, int]) -> None:
    assert parse_listen(value) == expected


@pytest.mark.parametrize("value", ["", "x", "host:", "1:99999", ":http"])
def test_bad_metrics_listen_values(value: str) -> None:
    with pytest.raises(ValueError):
        parse_listen(value)


def test_outcomes_are_error_codes() -> None:
    assert outcome(None) == "ok"
    assert outcome(DeadlineExceeded("late")) == "deadline"
    assert outcome(BadRequest("no")) == "bad_request"
    assert outcome(KeyError("bug")) == "remote"


def test_trace_ids_are_unique_and_clients_own_ones_are_checked() -> None:
    ids = {new_trace_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(len(i) == 32 and int(i, 16) for i in ids)
    assert client_trace("t-42_X") == "t-42_X"
    for bad in ("", "x" * 65, "a b", "é", None, 42, "a\n"):
        assert client_trace(bad) is None
    assert header_fields(Trace("abc")) == {"trace_id": "abc"}
    assert header_fields(Trace("abc", True)) == {"trace_id": "abc", "traced": True}
    assert header_fields() == {}


def test_a_record_has_the_fields_tools_read_and_the_current_trace() -> None:
    PROCESS.role, PROCESS.instance = "worker", "echo-1"
    out = io.StringIO()
    log = Logger(namespace="mmo.test", observer=json_observer(out))
    token = CURRENT.set(Trace("t-1", True))
    try:
        log.warn("hello {who}", who="bob", n=3, data=b"\x00", obj=object(), items=[1, "a"])
        try:
            raise KeyError("boom")
        except KeyError:
            log.failure("failed for {who}", who="bob")
    finally:
        CURRENT.reset(token)
    log.info("no trace {n}", n=1, trace_id="explicit")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 3
    first, failed, explicit = lines
    assert first["message"] == "hello bob" and first["level"] == "warn"
    assert (first["role"], first["instance"], first["namespace"]) == (
        "worker",
        "echo-1",
        "mmo.test",
    )
    assert first["trace_id"] == "t-1"
    assert first["who"] == "bob" and first["n"] == 3 and first["items"] == [1, "a"]
    assert first["obj"].startswith("<object") and first["data"] == "\x00"
    assert first["time"].endswith("Z") and "T" in first["time"]
    assert failed["level"] == "critical" and "KeyError: 'boom'" in failed["traceback"]
    assert explicit["trace_id"] == "explicit"
    PROCESS.role = PROCESS.instance = ""


def test_times_sort_as_text() -> None:
    assert iso_time(0.0) == "1970-01-01T00:00:00.000000Z"
    assert iso_time(1.9999999) == "1970-01-01T00:00:02.000000Z"
    times = [iso_time(t) for t in (5.5, 10.25, 1e9, 1e9 + 0.000001)]
    assert times == sorted(times)


def test_a_legacy_event_keeps_its_message() -> None:
    rec = record({"message": ("a", "b"), "log_time": 1.0, "isError": 0})
    assert rec["message"] == "a b" and rec["level"] == "info"
