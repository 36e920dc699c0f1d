"""``mmo bench w2max``: the step search for W2's highest held rate (W2 itself faked: the
servers here hold up to a given rate)."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer

from mmo.bench import workloads
from mmo.bench.workloads import Settings, held, run_rooms_max


def fake_rooms(capacity: float, p99_at: float = 5.0) -> Any:
    """W2 on servers that deliver up to ``capacity`` deliveries/s, then fall behind."""

    def run(reactor: Any, target: Any, settings: Settings) -> defer.Deferred[dict[str, Any]]:
        offered = settings.rooms * settings.members**2 / settings.interval
        delivered = min(offered, capacity)
        return defer.succeed(
            {
                "workload": "w2",
                "rooms": settings.rooms,
                "members": settings.members,
                "interval_s": settings.interval,
                "duration_s": settings.duration,
                "delivered_per_s": delivered,
                "delivery_ratio": delivered / offered,
                "p99_ms": p99_at if offered <= capacity else 900.0,
                "server_cpu_total_s": 1.0,
            }
        )

    return run


def search(capacity: float, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setattr(workloads, "run_rooms", fake_rooms(capacity))
    results: list[dict[str, Any]] = []
    run_rooms_max(None, None, Settings(rooms=10, members=20, interval=0.1)).addCallback(
        results.append
    )
    return results[0]


def test_the_rate_doubles_while_held_then_bisects(monkeypatch: pytest.MonkeyPatch) -> None:
    result = search(100_000, monkeypatch)  # 40k, 80k held; 160k not; 120k not, 100k held
    intervals = [round(s["interval_s"], 5) for s in result["steps"]]
    assert intervals == [0.1, 0.05, 0.025, 0.0375, 0.04375]
    assert [s["held"] for s in result["steps"]] == [True, True, False, False, True]
    assert result["held_deliveries_per_s"] == pytest.approx(4000 / 0.04375)


def test_a_first_step_not_held_holds_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    result = search(10_000, monkeypatch)
    assert result["held_deliveries_per_s"] == 0.0 and len(result["steps"]) == 1


def test_held_needs_the_deliveries_and_the_p99() -> None:
    good = {"delivery_ratio": 1.0, "p99_ms": 30.0}
    assert held(good, 50.0)
    assert not held({**good, "p99_ms": 60.0}, 50.0)
    assert not held({**good, "delivery_ratio": 0.99}, 50.0)
