"""The demo: a local cluster (yellow + two echo workers) and a caller that shows what happens.

``python -m mmo.demo`` (or ``./dev demo``) starts the cluster as supervised
child processes on 127.0.0.1, makes calls through ``get_service`` and prints
each step: replies, load balancing, each kind of error, push and pub-sub, and a
worker killed with ``kill -9`` under load while idempotent calls go on. It
stops everything it started and exits 0 when every step went as expected.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from twisted.internet import defer, task

from mmo.cluster.config import ClusterConfig
from mmo.cluster.service import make_cluster_service
from mmo.errors import DeadlineExceeded, MmoError, NoLiveInstance, RemoteError, UnknownMethod
from mmo.logic import connect
from mmo.testing.processes import free_port
from mmo.types import InlineCallbacks

ECHO = "mmo.examples.echo:EchoService"


def cluster_config(yellow: str) -> ClusterConfig:
    """A yellow and two echo workers."""
    return ClusterConfig(
        process=(
            {"name": "yellow", "role": "mmo-yellow", "args": ["--listen", yellow]},
            {
                "name": "echo",
                "role": "mmo-worker",
                "count": 2,
                "args": ["--yellow", yellow, "--service", "echo", "--handler", ECHO],
            },
        ),
        stop_timeout=10.0,
    )


class Demo:
    """Runs the steps, printing each; remembers whether all went as expected."""

    def __init__(self, reactor: Any, log_path: Path) -> None:
        self.reactor = reactor
        self.log_path = log_path
        self.ok = True

    def say(self, text: str) -> None:
        """Print a line at once."""
        print(text, flush=True)

    def check(self, what: str, good: bool, detail: str = "") -> None:
        """Print a step's outcome."""
        self.ok = self.ok and good
        self.say(f"  [{'ok' if good else 'UNEXPECTED'}] {what}{': ' + detail if detail else ''}")

    def sleep(self, seconds: float) -> defer.Deferred[None]:
        """Let time pass."""
        return task.deferLater(self.reactor, seconds, lambda: None)

    @defer.inlineCallbacks
    def run(self, keep: bool) -> InlineCallbacks[None]:
        """Start the cluster, run the steps, stop the cluster."""
        yellow = f"tcp://127.0.0.1:{free_port()}"
        log_file = open(self.log_path, "w")  # noqa: SIM115 - closed below

        def sink(name: str, line: str) -> None:
            log_file.write(f"[{name}] {line}\n")
            log_file.flush()

        cluster = make_cluster_service(cluster_config(yellow), reactor=self.reactor, sink=sink)
        self.say(f"mmo demo: yellow at {yellow}; process logs in {self.log_path}")
        cluster.startService()
        directory = connect(yellow, reactor=self.reactor)
        try:
            yield self.steps(directory, cluster)
            if keep:
                self.say("\ncluster running; Ctrl-C to stop")
                yield defer.Deferred()  # until interrupted
        finally:
            yield directory.stopService()
            self.say("\nstopping the cluster ...")
            yield cluster.stopService()
            log_file.close()
            self.say("stopped.")

    @defer.inlineCallbacks
    def steps(self, directory: Any, cluster: Any) -> InlineCallbacks[None]:
        """What the caller does, step by step."""
        view = directory.view
        yield view.wait_for(lambda: len(view.get("echo")) == 2, timeout=30)
        self.say("\n1. the registry knows:")
        for inst in view.get("echo"):
            self.say(f"   {inst.instance_id}: {inst.endpoints['rep']}")

        echo = directory.get_service("echo", "REP")
        self.say("\n2. a call through get_service:")
        reply = yield echo.echo(player="harry", level=7, items=["wand", "owl"])
        self.check("echo(player=..., level=..., items=...)", reply["player"] == "harry", str(reply))

        self.say("\n3. load balancing (least outstanding first), 20 concurrent calls:")
        whos = yield defer.gatherResults([echo.whoami() for _ in range(20)])
        counts: Counter[str] = Counter(whos)
        self.check("spread over both instances", len(counts) == 2, repr(dict(counts)))

        self.say("\n4. errors, each distinct:")
        for label, deferred, kind in [
            ("fail(message='boom')", echo.fail(message="boom"), RemoteError),
            ("nosuch()", echo.nosuch(), UnknownMethod),
            (
                "sleep(seconds=2) with a 0.3 s deadline",
                echo.call("sleep", {"seconds": 2}, timeout=0.3),
                DeadlineExceeded,
            ),
            (
                "sso.login() with no sso running",
                directory.get_service("sso").login(user="harry"),
                NoLiveInstance,
            ),
        ]:
            try:
                yield deferred
                self.check(label, False, "no error")
            except MmoError as e:
                self.check(label, isinstance(e, kind), f"{type(e).__name__}: {e}")

        self.say("\n5. push-pull and pub-sub: 6 notes pushed, events they publish:")
        events: list[Any] = []
        directory.get_service("echo", "PUB").subscribe("noted", lambda t, p: events.append(p))
        pusher = directory.get_service("echo", "PULL")
        yield self.sleep(0.3)  # let the subscription connect: PUB drops what nobody holds
        for n in range(6):
            yield pusher.note(n=n)
        yield view.wait_for(lambda: len(events) >= 6, timeout=5).addErrback(lambda _: None)
        for event in events:
            self.say(f"   event noted: {event}")
        self.check("every pushed note published", len(events) == 6)

        yield self.kill_under_load(directory, cluster)

    @defer.inlineCallbacks
    def kill_under_load(self, directory: Any, cluster: Any) -> InlineCallbacks[None]:
        """kill -9 a worker while idempotent calls run; the supervisor restarts it."""
        self.say("\n6. kill -9 one worker while 8 callers loop on an idempotent call:")
        echo = directory.get_service("echo", "REP")
        ok, errors, running = [0], [], [True]

        @defer.inlineCallbacks
        def caller() -> InlineCallbacks[None]:
            while running[0]:
                try:
                    yield echo.sleep(seconds=0.01)
                    ok[0] += 1
                except MmoError as e:
                    errors.append(e)

        loops = [caller() for _ in range(8)]
        yield self.sleep(1.0)
        victim = _child(cluster, "echo-1")
        old_pid = victim.pid
        os.kill(old_pid, signal.SIGKILL)
        self.say(f"   killed echo-1 (pid {old_pid})")
        yield self.sleep(3.0)
        running[0] = False
        yield defer.gatherResults(loops)
        self.check(f"{ok[0]} calls answered, {len(errors)} failed", ok[0] > 0 and not errors)
        view = directory.view
        yield view.wait_for(lambda: len(view.get("echo")) == 2, timeout=20)
        self.check(
            "the supervisor restarted echo-1",
            victim.pid not in (None, old_pid),
            f"new pid {victim.pid}",
        )


def _child(cluster: Any, name: str) -> Any:
    for tier in cluster:
        for child in tier:
            if child.name == name:
                return child
    raise KeyError(name)


def main(argv: list[str] | None = None) -> None:
    """Run the demo; exit 0 if every step went as expected."""
    parser = argparse.ArgumentParser(prog="python -m mmo.demo", description=__doc__)
    parser.add_argument("--keep", action="store_true", help="keep the cluster running at the end")
    args = parser.parse_args(argv)
    log_path = Path(tempfile.gettempdir()) / f"mmo-demo-{os.getpid()}.log"

    def run(reactor: Any) -> defer.Deferred[None]:
        demo = Demo(reactor, log_path)
        d = demo.run(args.keep)

        def verdict(_: Any) -> None:
            if not demo.ok:
                raise SystemExit(1)

        return d.addCallback(verdict)

    task.react(run)
    sys.exit(0)


if __name__ == "__main__":
    main()
