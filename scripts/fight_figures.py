#!/usr/bin/env python3
"""Measure the fight dispatcher on this machine: allocations per second, and the time
from "every process is full" to a new fight process ready (an allocation's answer).

    .venv/bin/python scripts/fight_figures.py [--allocations 5000] [--concurrency 50]
                                              [--spawns 5] [--json]

Starts its own yellow and `twistd mmo-fight` dispatchers on 127.0.0.1 (free ports, logs
in a temporary directory) and stops them (and only them) when done.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet import defer, task

from mmo.logic import Directory, connect
from mmo.testing import TwistdProcess, free_port

HANDLER = "mmo.examples.fight:TurnFight"


@defer.inlineCallbacks
def wait_ready(reactor: Any, fight: Any, count: int, timeout: float = 30.0) -> Any:
    """Poll status until ``count`` fight processes are ready."""
    deadline = reactor.seconds() + timeout
    while reactor.seconds() < deadline:
        try:
            status = yield fight.call("status", {}, timeout=2.0)
            if sum(p["state"] == "ready" for p in status["processes"]) >= count:
                return status
        except Exception:
            pass
        yield task.deferLater(reactor, 0.1, lambda: None)
    raise RuntimeError(f"fewer than {count} fight processes ready after {timeout}s")


@defer.inlineCallbacks
def allocation_rate(reactor: Any, directory: Directory, total: int, concurrency: int) -> Any:
    """Closed-loop allocations of 2-player fights, then their releases; rates per second."""
    fight = directory.get_service("fight", timeout=10)
    yield wait_ready(reactor, fight, 1)
    ids: list[str] = []
    latencies = []
    for i in range(200):
        started = reactor.seconds()
        reply = yield fight.allocate(players=[f"s{i}"])
        latencies.append(reactor.seconds() - started)
        yield fight.release(fight_id=reply["fight_id"])
    counter = iter(range(total))

    @defer.inlineCallbacks
    def allocator() -> Any:
        for i in counter:
            reply = yield fight.allocate(players=[f"a{i}", f"b{i}"])
            ids.append(reply["fight_id"])

    started = reactor.seconds()
    yield defer.gatherResults([allocator() for _ in range(concurrency)], consumeErrors=True)
    allocate_s = reactor.seconds() - started
    pending = iter(list(ids))

    @defer.inlineCallbacks
    def releaser() -> Any:
        for fight_id in pending:
            yield fight.release(fight_id=fight_id)

    started = reactor.seconds()
    yield defer.gatherResults([releaser() for _ in range(concurrency)], consumeErrors=True)
    release_s = reactor.seconds() - started
    return {
        "allocations": total,
        "concurrency": concurrency,
        "allocations_per_s": round(total / allocate_s),
        "releases_per_s": round(total / release_s),
        "sequential_allocate_ms": round(statistics.median(latencies) * 1000, 2),
    }


@defer.inlineCallbacks
def full_to_ready(reactor: Any, directory: Directory, spawns: int) -> Any:
    """With cap 1 and no spare every allocation finds all processes full: the time until it is
    answered is the time for a new process to start, register and be handed out."""
    fight = directory.get_service("fight-slow", timeout=30)
    times = []
    for i in range(spawns):
        started = reactor.seconds()
        yield fight.allocate(players=[f"solo{i}"])
        times.append(reactor.seconds() - started)
    # With a spare ready, the same allocation is answered at once.
    spare = directory.get_service("fight-spare", timeout=30)
    yield wait_ready(reactor, spare, 1)
    quick = []
    for i in range(spawns):
        started = reactor.seconds()
        yield spare.allocate(players=[f"quick{i}"])
        quick.append(reactor.seconds() - started)
        yield wait_ready(reactor, spare, i + 2)  # the next spare is up before the next try
    return {
        "spawns": spawns,
        "full_to_ready_s": {
            "median": round(statistics.median(times), 3),
            "min": round(min(times), 3),
            "max": round(max(times), 3),
        },
        "with_spare_ms": round(statistics.median(quick) * 1000, 2),
    }


def main() -> None:
    """Start the processes, measure, print, stop."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--allocations", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--spawns", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="fight-figures-"))
    yellow = f"tcp://127.0.0.1:{free_port()}"
    common = ["--yellow", yellow, "--handler", HANDLER, "--drain-timeout", "1"]
    children = [
        TwistdProcess("mmo-yellow", ["--listen", yellow], logs, "yellow").start(),
        TwistdProcess(
            "mmo-fight",
            [*common, "--cap", "1000000", "--min-spare", "1", "--max-processes", "1",
             "--reservation-timeout", "600"],
            logs,
            "fight",
        ).start(),
        TwistdProcess(
            "mmo-fight",
            [*common, "--cap", "1", "--min-spare", "0", "--max-processes", str(args.spawns),
             "--service", "fight-slow", "--worker-service", "fight-slow-worker",
             "--process-prefix", "slow", "--reservation-timeout", "600"],
            logs,
            "fight-slow",
        ).start(),
        TwistdProcess(
            "mmo-fight",
            [*common, "--cap", "1", "--min-spare", "1", "--max-processes",
             str(args.spawns + 1), "--service", "fight-spare", "--worker-service",
             "fight-spare-worker", "--process-prefix", "spare", "--reservation-timeout", "600"],
            logs,
            "fight-spare",
        ).start(),
    ]  # fmt: skip
    results: dict[str, Any] = {}

    @defer.inlineCallbacks
    def run(reactor: Any) -> Any:
        directory = connect(yellow, reactor=reactor)
        try:
            rate = yield allocation_rate(reactor, directory, args.allocations, args.concurrency)
            results.update(rate)
            results.update((yield full_to_ready(reactor, directory, args.spawns)))
        finally:
            yield directory.stopService()

    try:
        task.react(run)
    except SystemExit as e:
        if e.code not in (0, None):
            for child in children:
                print(child.log_tail(20), file=sys.stderr)
            raise
    finally:
        for child in reversed(children):
            child.stop(timeout=10)
    results["cpus"] = os.cpu_count()
    if args.json:
        print(json.dumps(results))
    else:
        print(f"allocations/s (2 players each, {results['concurrency']} concurrent callers, "
              f"one process): {results['allocations_per_s']}")  # fmt: skip
        print(f"releases/s: {results['releases_per_s']}")
        print(f"one allocate at a time: median {results['sequential_allocate_ms']} ms")
        f2r = results["full_to_ready_s"]
        print(f"all full -> new process ready and allocated: median {f2r['median']}s "
              f"(min {f2r['min']}, max {f2r['max']}, {results['spawns']} spawns)")  # fmt: skip
        print(
            f"allocation taking the last spare (a new one starts meanwhile): "
            f"median {results['with_spare_ms']} ms"
        )
        print(f"machine: {results['cpus']} CPUs; logs in {logs}")


if __name__ == "__main__":
    main()
