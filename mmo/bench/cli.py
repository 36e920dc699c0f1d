"""``mmo bench WORKLOAD``: run a workload against fresh servers (or ``--yellow``)."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet import defer

from mmo.bench.calls import run_calls, sleep
from mmo.types import InlineCallbacks

ECHO = "mmo.examples.echo:EchoService"


def add_parser(sub: Any) -> None:
    """Add ``bench`` to the ``mmo`` command's subparsers."""
    bench = sub.add_parser("bench", help="measure mmo with a standard workload")
    bench.add_argument("workload", choices=["calls"], help="calls: echo through get_service")
    bench.add_argument("--duration", type=float, default=5.0, help="measured seconds")
    bench.add_argument(
        "--concurrency", type=int, nargs="+", default=[1, 50], help="calls in flight"
    )
    bench.add_argument("--workers", type=int, default=2, help="echo workers to start")
    bench.add_argument("--yellow", default=None, help="use a running cluster's yellow")
    bench.add_argument("--json", action="store_true", help="print only JSON lines")
    bench.set_defaults(run=cmd_bench)


@defer.inlineCallbacks
def cmd_bench(reactor: Any, args: argparse.Namespace) -> InlineCallbacks[None]:
    """Start servers (unless --yellow), run each concurrency, print the figures."""
    from mmo.logic import connect
    from mmo.testing.processes import TwistdProcess, free_port

    processes: list[TwistdProcess] = []
    yellow = args.yellow
    logs = Path(tempfile.mkdtemp(prefix="mmo-bench-"))
    if yellow is None:
        yellow = f"tcp://127.0.0.1:{free_port()}"
        processes.append(TwistdProcess("mmo-yellow", ["--listen", yellow], logs, "yellow"))
        for i in range(args.workers):
            processes.append(
                TwistdProcess(
                    "mmo-worker",
                    ["--yellow", yellow, "--handler", ECHO, "--instance-id", f"echo-{i + 1}"],
                    logs,
                    f"echo-{i + 1}",
                )
            )
        for p in processes:
            p.start()
    directory = connect(yellow, reactor=reactor)
    try:
        view = directory.view
        yield view.wait_for(lambda: len(view.get("echo")) >= args.workers, timeout=30)
        yield sleep(reactor, 0.5)
        worker_pids = [p.pid for p in processes if p.name.startswith("echo")]
        for concurrency in args.concurrency:
            result = yield run_calls(
                reactor,
                directory,
                concurrency=concurrency,
                duration=args.duration,
                server_pids=worker_pids,
            )
            result["workers"] = args.workers
            print(json.dumps(result), flush=True)
            if not args.json:
                print(
                    f"  calls x{concurrency:<4} {result['requests_per_s']:>9.1f} req/s  "
                    f"p50 {result['p50_ms']:.3f} ms  p99 {result['p99_ms']:.3f} ms  "
                    f"max {result['max_ms']:.3f} ms  errors {result['errors']}  "
                    f"worker CPU {result['server_cpu_us_per_request']} us/req",
                    flush=True,
                )
    finally:
        yield directory.stopService()
        for p in processes:
            p.stop()
