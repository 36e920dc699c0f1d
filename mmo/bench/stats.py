"""Figures of a benchmark run: percentiles by nearest rank, CPU time from /proc."""

from __future__ import annotations

import math
import os
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile: ``sorted[ceil(q * n) - 1]`` (0 for no values)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


def latency_summary(latencies: list[float]) -> dict[str, float]:
    """p50/p90/p99/max of latencies in seconds, reported in milliseconds."""
    values = sorted(latencies)
    return {
        "p50_ms": round(percentile(values, 0.50) * 1000, 3),
        "p90_ms": round(percentile(values, 0.90) * 1000, 3),
        "p99_ms": round(percentile(values, 0.99) * 1000, 3),
        "max_ms": round((values[-1] if values else 0.0) * 1000, 3),
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (from /proc/PID/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name may hold spaces: fields after the closing parenthesis.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def machine_busy_seconds() -> float:
    """CPU seconds all processors have spent busy since boot (from /proc/stat).

    Busy is user + nice + system + irq + softirq + steal: everything but idle
    and I/O wait.
    """
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _TICKS


def rss_kib(pid: int) -> int:
    """Resident set size of a process in KiB (VmRSS from /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0
