"""`mmo reload SERVICE` under `twistd mmo-cluster`: a rolling replacement of a service's
instances by processes running the code on disk now, without a failed call."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import pytest
import pytest_twisted  # type: ignore[import-untyped]
from twisted.internet import defer, reactor
from twisted.internet.utils import getProcessOutputAndValue

from mmo.logic.links import drained
from mmo.registry import pid_of
from mmo.testing import TwistdProcess, free_port

from .conftest import controlled_cluster_config, instances, sleep, start_cluster, until, wait_links
from .units import Units

pytestmark = pytest.mark.timeout(150)

HANDLER = '''
from mmo.examples.echo import EchoService


class RollEcho(EchoService):
    """EchoService, from a module the test rewrites."""
'''
BROKEN = HANDLER + "\nraise RuntimeError('broken on purpose')\n"


@pytest.fixture(scope="module")
def reload_cluster(tmp_path_factory: Any) -> Any:
    """`twistd mmo-cluster`: a yellow, two echo workers of a handler in a module of the
    test's own, and the control endpoint registered in the yellow."""
    tmp = tmp_path_factory.mktemp("reload")
    (tmp / "rollecho.py").write_text(HANDLER)
    yellow = f"tcp://127.0.0.1:{free_port()}"
    cluster = start_cluster(tmp, controlled_cluster_config(yellow, "rollecho:RollEcho", 2))
    yield yellow, cluster, tmp
    cluster.stop(timeout=30)
    print(cluster.log_tail(80))


def mmo_reload(yellow: str, *args: str) -> defer.Deferred[tuple[bytes, bytes, int]]:
    """Run `mmo reload ...` without blocking the reactor: (stdout, stderr, status)."""
    return getProcessOutputAndValue(
        sys.executable,
        ["-c", "from mmo.cli import main; main()", "reload", *args, "--yellow", yellow],
        env=dict(os.environ),
        reactor=reactor,
    )


class Load:
    """Echo calls sent steadily (``rate`` a second) until stopped; every answer kept."""

    def __init__(self, directory: Any, rate: float = 50.0) -> None:
        self.directory = directory
        self.interval = 1.0 / rate
        self.sent = 0
        self.answers: dict[int, list[Any]] = {}
        self.failures: list[str] = []
        self.pending: list[defer.Deferred[Any]] = []
        self.running = True

    @defer.inlineCallbacks
    def run(self) -> Any:
        while self.running:
            i = self.sent
            self.sent += 1
            d = self.directory.call("echo", "echo", {"i": i}, timeout=15)
            d.addCallbacks(
                lambda reply, i=i: self.answers.setdefault(i, []).append(reply),
                lambda f, i=i: self.failures.append(f"{i}: {f.getErrorMessage()}"),
            )
            self.pending.append(d)
            yield sleep(self.interval)

    @defer.inlineCallbacks
    def stop(self) -> Any:
        self.running = False
        yield defer.DeferredList(self.pending)

    def check(self) -> None:
        assert self.failures == [], self.failures[:10]
        assert sorted(self.answers) == list(range(self.sent))
        assert all(v == [{"i": i}] for i, v in self.answers.items())


def pids(directory: Any) -> dict[str, int | None]:
    return {i.instance_id: pid_of(i) for i in directory.view.get("echo")}


@defer.inlineCallbacks
def ready_directory(directory_factory: Any, yellow: str) -> Any:
    directory = directory_factory([yellow], caller_role="tool")
    yield until(lambda: len(instances(directory, "echo")) == 2, what="two echo instances")
    yield until(lambda: instances(directory, "cluster"), what="the cluster's control endpoint")
    yield wait_links(directory, "echo", instances(directory, "echo"))
    return directory


@pytest_twisted.inlineCallbacks
def test_reload_replaces_every_instance_without_a_failed_call(reload_cluster, directory_factory):
    yellow, _, _ = reload_cluster
    directory = yield ready_directory(directory_factory, yellow)
    before = pids(directory)
    children = yield directory.call("cluster", "children", {}, timeout=5)
    assert {c["name"] for c in children} == {"yellow", "echo-1", "echo-2"}
    assert all(c["running"] and c["pid"] for c in children)

    load = Load(directory)
    loading = load.run()
    yield sleep(1.0)
    out, err, code = yield mmo_reload(yellow, "echo", "--json")
    assert code == 0, (out, err)
    answer = json.loads(out)
    old_ids = sorted(before)
    assert answer == {
        "service": "echo",
        "replaced": [[old, f"{old}.r1"] for old in old_ids],
    }
    yield sleep(1.5)
    yield load.stop()
    yield loading
    load.check()
    assert load.sent > 50

    new_ids = {f"{old}.r1" for old in old_ids}
    yield until(lambda: instances(directory, "echo") == new_ids, what="only the new instances")
    after = pids(directory)
    assert not set(after.values()) & set(before.values())
    children = yield directory.call("cluster", "children", {}, timeout=5)
    by_name = {c["name"]: c for c in children}
    assert set(by_name) == {"yellow", *new_ids}
    assert {by_name[i]["pid"] for i in new_ids} == set(after.values())


@pytest_twisted.inlineCallbacks
def test_a_reload_whose_code_fails_leaves_the_old_instances(reload_cluster, directory_factory):
    yellow, _, tmp = reload_cluster
    directory = yield ready_directory(directory_factory, yellow)
    before = pids(directory)
    (tmp / "rollecho.py").write_text(BROKEN)
    load = Load(directory)
    loading = load.run()
    try:
        out, err, code = yield mmo_reload(yellow, "echo", "--timeout", "60")
    finally:
        (tmp / "rollecho.py").write_text(HANDLER)
    assert code == 1, (out, err)
    text = err.decode()
    assert "RollError" in text and "exited before it was ready" in text, text
    assert "broken on purpose" in text, text
    yield sleep(1.0)
    yield load.stop()
    yield loading
    load.check()
    assert pids(directory) == before
    children = yield directory.call("cluster", "children", {}, timeout=5)
    assert {c["name"] for c in children} == {"yellow", *before}
    assert all(c["running"] for c in children)


FIGHT_HANDLER = '''
from mmo.examples.fight import TurnFight

VERSION = {version}


class RollFight(TurnFight):
    """TurnFight, from a module the test rewrites."""

    def on_version(self, ctx):
        return VERSION
'''


@pytest_twisted.inlineCallbacks
def test_reloading_a_fight_pool_lets_fights_finish_on_the_old_code(
    tmp_path: Any, directory_factory: Any
) -> None:
    """`mmo reload fight` under mmo-cluster: the fight processes running then take no new
    fight, the one holding a fight keeps it (old code) and stops once it ends; a fresh
    process running the code now on disk takes the new fights."""
    (tmp_path / "rollfight.py").write_text(FIGHT_HANDLER.format(version=1))
    yellow = f"tcp://127.0.0.1:{free_port()}"
    cluster = start_cluster(
        tmp_path,
        f"""
[cluster]
stop-timeout = 10.0
yellow = "{yellow}"
[[cluster.process]]
name = "yellow"
role = "mmo-yellow"
args = ["--listen", "{yellow}"]
[[cluster.process]]
name = "fight"
role = "mmo-fight"
args = ["--yellow", "{yellow}", "--handler", "rollfight:RollFight", "--cap", "2",
        "--min-spare", "1", "--reservation-timeout", "120", "--drain-timeout", "2"]
""",
    )
    try:
        directory = directory_factory([yellow], caller_role="tool")
        fight = directory.get_service("fight", timeout=10)

        def version(instance: str) -> defer.Deferred[Any]:
            return directory.call("fight-worker", "version", {}, instance=instance, timeout=5)

        @defer.inlineCallbacks
        def processes(predicate: Any) -> Any:
            found: list[Any] = []

            @defer.inlineCallbacks
            def check() -> Any:
                status = yield fight.status()
                found[:] = status["processes"]
                return predicate(found)

            yield until(lambda: check().addErrback(lambda _: False), what="the pool's status")
            return {p["instance"]: p for p in found}

        yield until(lambda: instances(directory, "cluster"), what="the cluster's control endpoint")
        yield processes(lambda ps: [p["state"] for p in ps] == ["ready"])
        held = yield fight.allocate(players=["a", "b"])  # fills the first process
        old = held["instance"]
        assert (yield version(old)) == 1
        (tmp_path / "rollfight.py").write_text(FIGHT_HANDLER.format(version=2))

        out, err, code = yield mmo_reload(yellow, "fight", "--json")
        assert code == 0, (out, err)
        answer = json.loads(out)
        assert answer["service"] == "fight" and old in answer["recycled"], answer
        assert answer["fights"] == 1, answer

        after = yield processes(
            lambda ps: any(p["state"] == "ready" and not p["drained"] for p in ps)
        )
        (fresh,) = [i for i, p in after.items() if not p["drained"] and p["state"] == "ready"]
        assert fresh not in answer["recycled"] and after[old]["fights"] == 1
        # The others: drained by the reload (the spare started after the allocation too).
        assert set(after) - {fresh} <= set(answer["recycled"]), (after, answer)
        new_fight = yield fight.allocate(players=["c"])
        assert new_fight["instance"] == fresh
        assert (yield version(fresh)) == 2
        assert (yield version(old)) == 1  # its fight goes on, on the code it started with

        yield fight.release(fight_id=held["fight_id"])
        yield processes(lambda ps: old not in {p["instance"] for p in ps})
        yield until(lambda: old not in instances(directory, "fight-worker"), what="old one gone")
    finally:
        cluster.stop(timeout=30)
        print(cluster.log_tail(60))


@pytest.fixture
def units(tmp_path: Any) -> Any:
    made = Units(tmp_path)
    yield made
    made.stop()


@pytest_twisted.inlineCallbacks
def test_reload_restarts_in_place_what_another_supervisor_runs(
    cluster: Any, units: Units, tmp_path: Any, directory_factory: Any
) -> None:
    """`mmo reload echo --restart CMD` (systemd's `systemctl restart mmo-worker@{instance}`,
    here a stand-in): each echo instance in turn is drained, restarted with a new process,
    and waited for; no call fails or is answered twice. A restart that fails stops the roll
    and the instance serves again."""
    cluster.yellow()
    yellow = cluster.yellows[0]
    for name in ("echo-1", "echo-2"):
        args = ["--yellow", yellow, "--handler", "mmo.examples.echo:EchoService",
                "--instance-id", name, "--metrics", "127.0.0.1:0"]  # fmt: skip
        units.add(TwistdProcess("mmo-worker", args, tmp_path, name))
    directory = directory_factory([yellow], caller_role="tool")
    yield until(lambda: len(instances(directory, "echo")) == 2, what="two echo instances")
    yield wait_links(directory, "echo", instances(directory, "echo"))
    before = pids(directory)

    load = Load(directory)
    loading = load.run()
    yield sleep(1.0)
    out, err, code = yield mmo_reload(yellow, "echo", "--restart", units.command, "--json")
    assert code == 0, (out, err)
    assert json.loads(out) == {"service": "echo", "restarted": ["echo-1", "echo-2"]}
    assert units.restarts == ["echo-1", "echo-2"]
    after = pids(directory)
    assert set(after) == set(before) and not set(after.values()) & set(before.values())

    out, err, code = yield mmo_reload(yellow, "echo", "--restart", "exit 3 # {instance}")
    assert code == 1 and "exited with 3" in err.decode(), (out, err)
    yield until(
        lambda: not any(drained(i) for i in directory.view.get("echo")),
        what="echo-1 taken back",
    )
    yield sleep(1.0)
    yield load.stop()
    yield loading
    load.check()
    assert load.sent > 100
    assert pids(directory) == after
