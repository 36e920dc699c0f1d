"""Workload ``calls``: closed-loop ``echo`` calls through ``get_service``.

Each of C callers keeps one call in flight with no think time; calls that
start inside the measuring window (after a 1 s warm-up) are counted. Reports
requests/s, latency percentiles and the CPU seconds of the workers and caller.
"""

from __future__ import annotations

import os
import time
from typing import Any

from twisted.internet import defer, task

from mmo.bench.stats import cpu_seconds, latency_summary
from mmo.errors import MmoError
from mmo.types import InlineCallbacks


@defer.inlineCallbacks
def run_calls(
    reactor: Any,
    directory: Any,
    *,
    concurrency: int,
    duration: float,
    warmup: float = 1.0,
    server_pids: list[int] | None = None,
) -> InlineCallbacks[dict[str, Any]]:
    """Run ``concurrency`` closed loops of ``echo.echo`` for ``warmup + duration`` seconds."""
    echo = directory.get_service("echo", "REP")
    payload = {"seq": 0, "data": "x" * 64}
    latencies: list[float] = []
    errors = [0]
    clock = time.monotonic
    start = clock()
    window_start = start + warmup
    window_end = window_start + duration
    cpu_before: dict[int, float] = {}

    def take_cpu() -> None:
        for pid in [os.getpid(), *(server_pids or [])]:
            cpu_before[pid] = cpu_seconds(pid)

    reactor.callLater(warmup, take_cpu)

    @defer.inlineCallbacks
    def loop(n: int) -> InlineCallbacks[None]:
        seq = 0
        while True:
            sent = clock()
            if sent >= window_end:
                return
            seq += 1
            try:
                reply = yield echo.call("echo", {**payload, "seq": seq})
                if reply.get("seq") != seq:
                    errors[0] += 1
            except MmoError:
                errors[0] += 1
                continue
            if sent >= window_start:
                latencies.append(clock() - sent)

    yield defer.gatherResults([loop(n) for n in range(concurrency)])
    elapsed = min(clock(), window_end + 5) - window_start
    cpu = {pid: cpu_seconds(pid) - before for pid, before in cpu_before.items()}
    caller_cpu = cpu.pop(os.getpid(), 0.0)
    server_cpu = sum(cpu.values())
    answered = len(latencies)
    return {
        "workload": "calls",
        "concurrency": concurrency,
        "duration_s": duration,
        "answered": answered,
        "requests_per_s": round(answered / elapsed, 1) if elapsed > 0 else 0.0,
        **latency_summary(latencies),
        "errors": errors[0],
        "server_cpu_s": round(server_cpu, 3),
        "server_cpu_us_per_request": round(server_cpu / answered * 1e6, 1) if answered else 0,
        "caller_cpu_s": round(caller_cpu, 3),
    }


def sleep(reactor: Any, seconds: float) -> defer.Deferred[None]:
    """Let time pass."""
    return task.deferLater(reactor, seconds, lambda: None)
