"""``mmo bench WORKLOAD``: run the standard workloads against fresh servers (or ``--against``).

    mmo bench {w1,w2,w2max,w3,floor,all} [--duration S] [--clients C] [--json]
              [--against HOST:PORT [--server-pids [NAME=]PID ...]] ...
    mmo bench calls [--concurrency 1 50] [--duration S] [--yellow URL] [--json]

Each workload prints one JSON line (and, without ``--json``, a readable table).
``all`` runs floor, w1, w2 and w3 in one invocation; ``w1`` runs the floor
first (unless ``--no-floor``) so that its figures come with their ratio to it.
``w2max`` finds W2's highest held rate: W2 again and again on the same servers, the rate
doubled while (nearly) every message is delivered with p99 within ``--p99-bound`` ms,
then bisected.
docs/benchmarks.md describes the workloads and the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import defer

from mmo.bench.calls import run_calls, sleep
from mmo.cli.common import CommandError
from mmo.types import InlineCallbacks

ECHO = "mmo.examples.echo:EchoService"
WORKLOADS = ("w1", "w2", "w2max", "w3", "floor", "all", "calls")
#: Most accounts seeded into sso (its setting ``accounts``); more clients than this
#: share accounts (one session each).
MAX_ACCOUNTS = 4000
#: Times a workload's servers are started before giving up (a port was taken).
START_ATTEMPTS = 3
#: File descriptors the generator needs beyond its client connections.
FD_MARGIN = 256


def add_parser(sub: Any) -> None:
    """Add ``bench`` to the ``mmo`` command's subparsers."""
    bench = sub.add_parser(
        "bench",
        help="measure mmo with a standard workload",
        description="Run a standard workload and print its figures (docs/benchmarks.md).",
    )
    bench.add_argument(
        "workload",
        choices=WORKLOADS,
        help="w1: echo round trips; w2: room broadcast; w3: idle connections; "
        "floor: W1 through a bare Twisted+ZeroMQ chain; all: floor, w1, w2, w3; "
        "calls: echo through get_service (no broker)",
    )
    bench.add_argument(
        "--duration", type=float, default=None, help="measured seconds (default 10; calls: 5)"
    )
    bench.add_argument("--warmup", type=float, default=1.0, help="seconds not counted first")
    bench.add_argument("--clients", type=int, default=50, help="W1/floor connections")
    bench.add_argument("--json", action="store_true", help="print only JSON lines")
    bench.add_argument(
        "--against", default=None, metavar="HOST:PORT", help="use this running broker"
    )
    bench.add_argument(
        "--server-pids",
        nargs="+",
        default=[],
        metavar="[NAME=]PID",
        help="with --against: processes whose CPU (and W3: memory) to measure; "
        "the one named broker (else the first) holds the connections",
    )
    bench.add_argument("--rooms", type=int, default=10, help="W2 rooms")
    bench.add_argument("--members", type=int, default=20, help="W2 members per room")
    bench.add_argument(
        "--interval", type=float, default=0.1, help="W2 seconds between a member's sends"
    )
    bench.add_argument("--drain", type=float, default=5.0, help="W2 seconds to wait after")
    bench.add_argument("--conns", type=int, default=2000, help="W3 connections")
    bench.add_argument("--idle", type=float, default=2.0, help="W3 idle seconds before measuring")
    bench.add_argument(
        "--in-flight", type=int, default=100, help="handshakes (connect + login) at once"
    )
    bench.add_argument(
        "--rate", type=float, default=1_000_000, help="broker's per-session packets/s"
    )
    bench.add_argument("--burst", type=int, default=1_000_000, help="broker's per-session burst")
    bench.add_argument(
        "--capacity", type=int, default=None, help="broker's sessions (default: enough for W3)"
    )
    bench.add_argument("--no-floor", action="store_true", help="w1: do not run the floor first")
    bench.add_argument("--user-prefix", default="b", help="bench accounts are <prefix><n>")
    bench.add_argument("--password", default="bench", help="the bench accounts' password")
    bench.add_argument(
        "--accounts",
        type=int,
        default=None,
        help=f"accounts to use (default: one per client, at most {MAX_ACCOUNTS})",
    )
    bench.add_argument(
        "--register", action="store_true", help="with --against: register accounts first"
    )
    bench.add_argument("--keep-logs", action="store_true", help="keep the servers' logs")
    bench.add_argument(
        "--telemetry",
        choices=("off", "on", "compare"),
        default="off",
        help="on: every server has an operator listener (scraped each second) and ships its "
        "logs to a collector; compare: W1, W2 and W3 run off then on, and the ratios are "
        "printed",
    )
    bench.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="with --telemetry compare: run each pair this many times, alternating, and "
        "print the median of the ratios",
    )
    bench.add_argument(
        "--p99-bound",
        type=float,
        default=50.0,
        help="w2max: the p99 (ms) a rate must keep to be held",
    )
    bench.add_argument(
        "--layout",
        choices=("distributed", "colocated", "both"),
        default="distributed",
        help="distributed: chat is a worker of its own; colocated: it runs in the broker's "
        "process (mmo-broker --serve); both: each workload in both, the colocated line with "
        "its ratios to the distributed one",
    )
    calls = bench.add_argument_group("calls")
    calls.add_argument(
        "--concurrency", type=int, nargs="+", default=[1, 50], help="calls in flight"
    )
    calls.add_argument("--workers", type=int, default=2, help="echo workers to start")
    calls.add_argument("--yellow", default=None, help="use a running cluster's yellow")
    bench.set_defaults(run=cmd_bench)


def cmd_bench(reactor: Any, args: argparse.Namespace) -> defer.Deferred[None]:
    """Run the chosen workload(s) and print their figures."""
    if args.workload == "calls":
        return cmd_calls(reactor, args)
    return cmd_workloads(reactor, args)


# -- w1, w2, w3, floor, all ------------------------------------------------------------


def plan(args: argparse.Namespace) -> list[str]:
    """The workloads one invocation runs, in order."""
    if args.workload == "all":
        return ["floor", "w1", "w2", "w3"]
    if args.workload == "w1" and not args.no_floor:
        return ["floor", "w1"]
    return [args.workload]


def settings_of(args: argparse.Namespace, workloads: list[str]) -> Any:
    """The :class:`~mmo.bench.workloads.Settings` the options ask for."""
    from mmo.bench.workloads import Settings

    for name in ("clients", "rooms", "members", "conns", "in_flight"):
        if getattr(args, name) < 1:
            raise CommandError(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("interval", "idle", "drain"):
        if getattr(args, name) <= 0:
            raise CommandError(f"--{name} must be positive")
    duration = 10.0 if args.duration is None else args.duration
    if duration <= 0 or args.warmup < 0:
        raise CommandError("--duration must be positive and --warmup not negative")
    accounts = args.accounts or min(MAX_ACCOUNTS, most_clients(args, workloads))
    return Settings(
        duration=duration,
        warmup=args.warmup,
        clients=args.clients,
        rooms=args.rooms,
        members=args.members,
        interval=args.interval,
        drain=args.drain,
        conns=args.conns,
        idle=args.idle,
        in_flight=args.in_flight,
        user_prefix=args.user_prefix,
        accounts=max(1, accounts),
        password=args.password,
        register=args.register,
    )


def most_clients(args: argparse.Namespace, workloads: list[str]) -> int:
    """The most connections any of ``workloads`` opens at once."""
    rooms = args.rooms * args.members
    sizes = {"floor": args.clients, "w1": args.clients, "w2": rooms, "w2max": rooms}
    sizes["w3"] = args.conns
    return max(sizes[w] for w in workloads)


def raise_file_limit(needed: int) -> int:
    """Raise RLIMIT_NOFILE's soft limit to ``needed`` (children inherit it); return it.

    Raises:
        CommandError: the hard limit is lower than ``needed``.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise CommandError(
            f"this run needs about {needed} open files (connections + {FD_MARGIN}) in the "
            f"generator and in the broker, but the hard limit (ulimit -Hn) is {hard}: "
            f"raise it (limits.conf, systemd LimitNOFILE, docker --ulimit) or ask for "
            f"at most {hard - FD_MARGIN} connections"
        )
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
        soft = needed
    return int(soft)


def parse_against(args: argparse.Namespace) -> Any:
    """The :class:`~mmo.bench.servers.Target` of ``--against`` and ``--server-pids``."""
    from mmo.bench.servers import Target

    host, sep, port = str(args.against).rpartition(":")
    if not sep or not host or not port.isdigit():
        raise CommandError(f"--against takes HOST:PORT, not {args.against!r}")
    pids: dict[str, int] = {}
    for entry in args.server_pids:
        name, eq, pid = entry.rpartition("=")
        if not pid.isdigit():
            raise CommandError(f"--server-pids takes [NAME=]PID, not {entry!r}")
        if not Path(f"/proc/{pid}/stat").exists():
            raise CommandError(f"--server-pids: no process {pid}")
        pids[name if eq else f"pid-{pid}"] = int(pid)
    broker = "broker" if "broker" in pids else next(iter(pids), None)
    return Target(host, int(port), pids, broker)


@defer.inlineCallbacks
def cmd_workloads(reactor: Any, args: argparse.Namespace) -> InlineCallbacks[None]:
    """Run each planned workload on fresh servers (or ``--against``), print its figures."""
    from mmo.bench.servers import BenchError, ServerSet, Target, scrape_every, wait_ready
    from mmo.bench.workloads import run_echo, run_idle, run_rooms, run_rooms_max

    workloads = plan(args)
    settings = settings_of(args, workloads)
    against = parse_against(args) if args.against else None
    raise_file_limit(most_clients(args, workloads) + FD_MARGIN)
    capacity = args.capacity or max(10_000, most_clients(args, workloads) + 100)
    accounts = ",".join(
        f"{settings.user_prefix}{i}:{settings.password}" for i in range(settings.accounts)
    )
    logs = Path(tempfile.mkdtemp(prefix="mmo-bench-"))
    runners: dict[str, Callable[[Any, Target, Any], defer.Deferred[dict[str, Any]]]] = {
        "floor": lambda r, t, s: run_echo(r, t, s, workload="floor"),
        "w1": lambda r, t, s: run_echo(r, t, s, workload="w1"),
        "w2": run_rooms,
        "w2max": lambda r, t, s: run_rooms_max(r, t, s, args.p99_bound),
        "w3": run_idle,
    }
    results: dict[str, dict[str, Any]] = {}
    failed = True
    modes = {"off": [False], "on": [True], "compare": [False, True]}[args.telemetry]
    layouts = {"distributed": [False], "colocated": [True], "both": [False, True]}[args.layout]
    runs = [
        (w, on, colocated)
        for _ in range(args.repeat if args.telemetry == "compare" else 1)
        for w in workloads
        for on in (modes if w != "floor" else [False])
        for colocated in (layouts if w != "floor" else [False])
    ]
    ratios: dict[str, list[dict[str, float]]] = {}
    without: dict[str, dict[str, Any]] = {}  # the last run of each workload without
    distributed: dict[str, dict[str, Any]] = {}  # ... and of each in the distributed layout

    def ready(target: Target, servers: ServerSet | None) -> defer.Deferred[None]:
        return wait_ready(
            reactor,
            target,
            servers,
            user=settings.user(0),
            password=settings.password,
            probe_route="chat.echo",
            register=settings.register,
        )

    @defer.inlineCallbacks
    def start_servers(
        workload: str, servers: ServerSet, telemetry: bool, colocated: bool
    ) -> InlineCallbacks[Target]:
        # A port found free may be taken before the server binds it: try afresh.
        for attempt in range(1, START_ATTEMPTS + 1):
            if workload == "floor":
                target = servers.start_floor()
            else:
                target = servers.start_mmo(
                    accounts=accounts,
                    rate=args.rate,
                    burst=args.burst,
                    capacity=capacity,
                    telemetry=telemetry,
                    colocated=colocated,
                )
            try:
                yield ready(target, servers)
                return target
            except BenchError as e:
                if "Address already in use" not in str(e) or attempt == START_ATTEMPTS:
                    raise
                servers.stop()
        raise AssertionError("unreachable")

    try:
        for workload, telemetry, colocated in runs:
            run = f"{workload}-telemetry" if telemetry else workload
            run += "-colocated" if colocated else ""
            if args.repeat > 1:
                run += f"-{len(results)}"
            servers: ServerSet | None = None
            scraper = None
            if workload == "floor" or against is None:
                servers = ServerSet(logs / run)
                (logs / run).mkdir()
            try:
                if servers is None:
                    assert against is not None
                    target = against
                    yield ready(target, None)
                else:
                    target = yield start_servers(workload, servers, telemetry, colocated)
                if target.metrics:
                    scraper = scrape_every(reactor, target.metrics)
                result = yield runners[workload](reactor, target, settings)
            except BenchError as e:
                where = f"\n(server logs in {logs / run})" if servers is not None else ""
                raise CommandError(f"{workload}: {e}{where}") from e
            finally:
                if scraper is not None:
                    scraper.stop()
                if servers is not None:
                    servers.stop()
            result["against"] = args.against if servers is None else None
            result["telemetry"] = telemetry
            result["layout"] = "colocated" if colocated else "distributed"
            if workload == "w1" and "floor" in results:
                add_floor_ratio(result, results["floor"])
            if colocated and workload in distributed:
                result["colocated_ratio"] = figure_ratios(result, distributed[workload])
            elif not colocated:
                distributed[workload] = result
            if telemetry and workload in without:
                result["telemetry_ratio"] = figure_ratios(result, without[workload])
                ratios.setdefault(workload, []).append(result["telemetry_ratio"])
            elif not telemetry:
                without[workload] = result
            results[run] = result
            print(json.dumps(result), flush=True)
            if not args.json:
                print(table(result), flush=True)
        if args.repeat > 1:
            for workload, pairs in ratios.items():
                median = median_ratios(workload, pairs)
                print(json.dumps(median), flush=True)
                if not args.json:
                    text = ", ".join(f"{k} {v:.3f}" for k, v in median["median"].items())
                    print(f"{workload} telemetry on/off, median of {len(pairs)} pairs: {text}")
        failed = False
    finally:
        if (not failed and not args.keep_logs) or not any(logs.iterdir()):
            shutil.rmtree(logs, ignore_errors=True)
        elif args.keep_logs and not args.json:
            print(f"server logs in {logs}", flush=True)


#: What a run with telemetry is compared with its run without on, by workload.
TELEMETRY_FIGURES = {
    "w1": ("requests_per_s", "server_cpu_us_per_request", "p99_ms"),
    "w2": ("server_cpu_total_s", "server_cpu_us_per_delivery", "p99_ms"),
    "w2max": ("held_deliveries_per_s", "p99_ms"),
    "w3": ("rss_kib_per_conn",),
}


def figure_ratios(result: dict[str, Any], base: dict[str, Any]) -> dict[str, float]:
    """The ratios of a run's main figures to those of the same workload's ``base`` run
    (same invocation): with telemetry to without (``telemetry_ratio``, 1.0: no cost),
    co-located to distributed (``colocated_ratio``)."""
    ratios = {}
    for figure in TELEMETRY_FIGURES.get(result["workload"], ()):
        ours, theirs = result.get(figure), base.get(figure)
        if ours and theirs:
            ratios[figure] = round(ours / theirs, 3)
    return ratios


def median_ratios(workload: str, pairs: list[dict[str, float]]) -> dict[str, Any]:
    """The median, over pairs of runs (without, then with telemetry), of each ratio."""
    figures = {figure for pair in pairs for figure in pair}
    return {
        "workload": workload,
        "telemetry_pairs": len(pairs),
        "median": {
            figure: round(statistics.median(p[figure] for p in pairs if figure in p), 3)
            for figure in sorted(figures)
        },
        "pairs": pairs,
    }


def add_floor_ratio(w1: dict[str, Any], floor: dict[str, Any]) -> None:
    """Put W1's ratios to the floor measured in the same invocation into ``w1``."""
    rate = floor.get("requests_per_s") or 0
    w1["floor_requests_per_s"] = rate
    w1["floor_ratio"] = round(w1["requests_per_s"] / rate, 3) if rate else None
    w1["floor_p99_ms"] = floor.get("p99_ms")
    ours, theirs = w1.get("server_cpu_us_per_request"), floor.get("server_cpu_us_per_request")
    w1["floor_cpu_ratio"] = round(ours / theirs, 3) if ours and theirs else None


# -- tables ---------------------------------------------------------------------------


def _cpu_line(result: dict[str, Any]) -> str:
    parts = ", ".join(f"{name} {secs:.2f}" for name, secs in result["server_cpu_s"].items())
    return f"{result['server_cpu_total_s']:.2f} s ({parts})" if parts else "not measured"


def _latency(result: dict[str, Any]) -> str:
    return (
        f"p50 {result['p50_ms']:.2f}  p90 {result['p90_ms']:.2f}  "
        f"p99 {result['p99_ms']:.2f}  max {result['max_ms']:.2f}"
    )


def table(result: dict[str, Any]) -> str:
    """A readable table of one workload's figures."""
    w = result["workload"]
    rows: list[tuple[str, Any]] = []
    if w in ("w1", "floor"):
        title = (
            f"{'W1 echo' if w == 'w1' else 'floor (Twisted TCP -> ZeroMQ -> echo)'}: "
            f"{result['clients']} clients, {result['duration_s']:g} s"
        )
        rows += [
            ("requests/s", f"{result['requests_per_s']:.1f}"),
            ("latency ms", _latency(result)),
            ("errors", result["errors"]),
            ("server CPU", _cpu_line(result)),
            ("server CPU/request", f"{result['server_cpu_us_per_request']} us"),
            ("generator CPU", f"{result['generator_cpu_s']:.2f} s"),
            ("other CPU", f"{result['other_cpu_s']:.2f} s (processes outside the benchmark)"),
        ]
        if w == "w1" and result.get("floor_ratio") is not None:
            rows += [
                (
                    "vs floor",
                    f"{result['floor_ratio']:.2f}x the rate "
                    f"({result['floor_requests_per_s']:.1f} req/s), "
                    f"{result['floor_cpu_ratio']}x the CPU/request",
                ),
            ]
    elif w == "w2max":
        title = (
            f"W2 highest held rate: {result['rooms']} x {result['members']}, "
            f"p99 <= {result['p99_bound_ms']:g} ms, {result['duration_s']:g} s a step"
        )
        rows += [
            ("held", f"{result['held_deliveries_per_s']:.1f} deliveries/s"),
            ("latency ms", _latency(result)),
            ("server CPU", _cpu_line(result)),
        ]
        rows += [
            (
                f"step {i + 1}",
                f"every {step['interval_s']:.4g} s: {step['delivered_per_s']:.0f}/s, ratio "
                f"{step['delivery_ratio']:.4f}, p99 {step['p99_ms']} ms"
                f"{'' if step['held'] else ' (not held)'}",
            )
            for i, step in enumerate(result["steps"])
        ]
    elif w == "w2":
        title = (
            f"W2 rooms: {result['rooms']} x {result['members']}, "
            f"every {result['interval_s']:g} s, {result['duration_s']:g} s"
        )
        rows += [
            ("sent/s", f"{result['sent_per_s']:.1f} (offered {result['offered_per_s']:.1f})"),
            ("delivered/s", f"{result['delivered_per_s']:.1f}"),
            ("delivery ratio", f"{result['delivery_ratio']:.4f}"),
            ("late deliveries", result["late_deliveries"]),
            ("latency ms", _latency(result)),
            (
                "send lag ms",
                f"p99 {result['send_lag_p99_ms']:.2f}  max {result['send_lag_max_ms']:.2f}",
            ),
            ("errors", result["errors"]),
            ("server CPU", _cpu_line(result)),
            ("server CPU/delivery", f"{result['server_cpu_us_per_delivery']} us"),
            ("generator CPU", f"{result['generator_cpu_s']:.2f} s"),
            ("other CPU", f"{result['other_cpu_s']:.2f} s (processes outside the benchmark)"),
        ]
    else:
        title = f"W3 idle: {result['conns']} connections"
        rows += [
            ("logged in", result["logged_in"]),
            ("still open", result["still_open"]),
            ("logins/s", f"{result['logins_per_s']:.1f} ({result['open_s']:.2f} s to open)"),
            ("login ms", f"p50 {result['login_p50_ms']:.2f}  p99 {result['login_p99_ms']:.2f}"),
            (
                "broker RSS",
                f"{result['broker_rss_before_kib']} -> {result['broker_rss_after_kib']} KiB",
            ),
            ("RSS/connection", f"{result['rss_kib_per_conn']} KiB"),
            ("RSS/conn, all", f"{result.get('rss_kib_per_conn_all')} KiB (every server process)"),
            ("errors", result["errors"]),
        ]
    if result.get("first_error"):
        rows.append(("first error", result["first_error"]))
    if result.get("telemetry"):
        title += " (telemetry on)"
    if result.get("layout") == "colocated":
        title += " (co-located: chat in the broker's process)"
    for key, label in (("telemetry_ratio", "on/off"), ("colocated_ratio", "vs distributed")):
        ratios = result.get(key)
        if ratios:
            text = ", ".join(f"{figure} {ratio:.3f}" for figure, ratio in ratios.items())
            rows.append((label, text))
    width = max(len(label) for label, _ in rows)
    return "\n".join([title, *(f"  {label:<{width}}  {value}" for label, value in rows)])


# -- calls ----------------------------------------------------------------------------


@defer.inlineCallbacks
def cmd_calls(reactor: Any, args: argparse.Namespace) -> InlineCallbacks[None]:
    """Start servers (unless --yellow), run each concurrency, print the figures."""
    from mmo.logic import connect
    from mmo.testing.processes import TwistdProcess, free_port
    from mmo.zmq.curve import provide_curve_keys

    duration = 5.0 if args.duration is None else args.duration
    processes: list[TwistdProcess] = []
    yellow = args.yellow
    logs = Path(tempfile.mkdtemp(prefix="mmo-bench-"))
    if yellow is None:
        provide_curve_keys(logs / "curve")
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
                duration=duration,
                warmup=args.warmup,
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
        if os.path.isdir(logs) and not args.keep_logs:
            shutil.rmtree(logs, ignore_errors=True)
