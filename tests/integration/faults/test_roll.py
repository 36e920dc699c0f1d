"""A rolling reload of ``echo`` and then ``chat`` under the fault load, with the edge cluster's
processes run by one ``twistd mmo-cluster`` (the roll is the cluster's own: ``cluster.reload``).

Echo is stateless: each old instance is drained and stopped once its replacement is ready.
Chat is stateful: its rooms are in the cache (one throwaway Redis, shared by every chat and
session instance) and each session's ``chat.*`` is bound to one instance; when an instance
is drained the others take its sessions over through the cache (the hand-off the service
declares, see :mod:`mmo.examples.chat`), before it stops. The figures are those of the other
fault scenarios (:mod:`.load`); the roll must fail no request, deliver no chat message twice
or to some members only, lose none, and leave the room as it was.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted  # type: ignore[import-untyped]
from twisted.internet import reactor

from mmo.testing import TwistdProcess, free_port
from mmo.testing.data import ThrowawayRedis

from ..conftest import instances, sleep, until, wait_instances
from ..edge import ACCOUNTS, WORKERS, EdgeCluster
from .load import (
    ROOM,
    USERS,
    ChatTraffic,
    assert_no_loss,
    bindings,
    close_clients,
    connect_clients,
    members_on_each,
    report,
)

pytestmark = pytest.mark.timeout(180)

#: Seconds the cluster has to answer one ``cluster.reload`` (a roll of two instances).
ROLL_DEADLINE = 90.0


class SupervisedEdge(EdgeCluster):
    """The edge cluster (yellow, session, sso, two chat and two echo instances, two brokers,
    brokerlist) as the children of one ``twistd mmo-cluster``, with the cluster's control
    endpoint in its yellow; session and chat keep their state in the cache at ``cache``."""

    def __init__(self, log_dir: Path, cache: str) -> None:
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.yellow = f"tcp://127.0.0.1:{free_port()}"
        self.ports = [free_port(), free_port()]
        self.ws_ports = [free_port(), free_port()]
        self.http_port = free_port()
        self.env = {"MMO_DEMO": "1"}
        y = f'"--yellow", "{self.yellow}"'
        cached = f'"--cache", "{cache}"'
        children = [
            ("yellow", "mmo-yellow", 1, f'"--listen", "{self.yellow}"'),
            ("session", "mmo-worker", 1, f'{y}, "--handler", "{WORKERS["session"]}", {cached}'),
            ("sso", "mmo-worker", 1,
             f'{y}, "--handler", "{WORKERS["sso"]}", "--set", "accounts={ACCOUNTS}"'),
            ("chat", "mmo-worker", 2, f'{y}, "--handler", "{WORKERS["chat"]}", {cached}'),
            ("echo", "mmo-worker", 2, f'{y}, "--handler", "{WORKERS["echo-1"]}"'),
            *((f"broker-{i + 1}", "mmo-broker", 1,
               f'{y}, "--listen", "tcp:{port}:interface=127.0.0.1"')
              for i, port in enumerate(self.ports)),
            ("brokerlist", "mmo-brokerlist", 1,
             f'{y}, "--listen", "tcp:{self.http_port}:interface=127.0.0.1"'),
        ]  # fmt: skip
        config = [f'[cluster]\nstop-timeout = 15.0\nyellow = "{self.yellow}"\n']
        for name, role, count, args in children:
            config.append(
                f'[[cluster.process]]\nname = "{name}"\nrole = "{role}"\ncount = {count}\n'
                f"args = [{args}]\n"
            )
        path = log_dir / "cluster.toml"
        path.write_text("\n".join(config))
        self.processes: dict[str, TwistdProcess] = {}
        self._start("cluster", "mmo-cluster", ["--config", str(path)], self.env)


@pytest.fixture
def supervised(tmp_path: Path, redis: ThrowawayRedis) -> Iterator[SupervisedEdge]:
    """A ready supervised edge cluster on a throwaway Redis."""
    edge = SupervisedEdge(tmp_path, redis.url)
    try:
        edge.wait_ready()
        yield edge
    finally:
        edge.stop()


@pytest_twisted.inlineCallbacks
def test_rolling_echo_then_chat_under_load(
    supervised: SupervisedEdge, directory_factory: Any
) -> None:
    """Roll echo, then chat, while players call echo and chat in one room: no request fails
    or is answered twice, every chat message reaches every member once and in order, and
    the room keeps its members, listed alike by the new chat instances that now serve
    every session."""
    directory = directory_factory([supervised.yellow], caller_role="tool")
    yield wait_instances(directory, "chat", {"chat-1", "chat-2"})
    yield until(lambda: instances(directory, "cluster"), what="the cluster's control endpoint")
    clients = yield connect_clients(supervised)
    traffic = ChatTraffic(clients)
    try:
        before = yield bindings(directory, clients)
        traffic.start()
        yield traffic.warm()
        roll_at = reactor.seconds()
        echo = yield directory.call("cluster", "reload", {"service": "echo"}, timeout=ROLL_DEADLINE)
        chat_at = reactor.seconds()
        chat = yield directory.call("cluster", "reload", {"service": "chat"}, timeout=ROLL_DEADLINE)
        rolled_at = reactor.seconds()
        yield sleep(2.0)  # the load goes on through the new instances: a late loss would show
        yield traffic.stop()
        new_chats = {new for _, new in chat["replaced"]}
        yield until(lambda: instances(directory, "chat") == new_chats, what="only new chats")
        after = yield bindings(directory, clients)
        lists = yield members_on_each(directory, sorted(new_chats))
    finally:
        traffic.running = False
        yield close_clients(clients)
    figures = traffic.figures("roll echo then chat", roll_at)
    figures.counts["chat_lost"] = len(traffic.lost())
    figures.counts["chat_partial"] = len(traffic.partial())
    figures.counts["out_of_order"] = len(traffic.out_of_order())
    figures.counts["notify_errors"] = len(traffic.notify_errors)
    figures.extra["echo_roll"] = chat_at - roll_at
    figures.extra["chat_roll"] = rolled_at - chat_at
    report(figures)
    print(f"bound: {before} -> {after}; replaced: {echo['replaced']} {chat['replaced']}")
    assert [old for old, _ in echo["replaced"]] == ["echo-1", "echo-2"]
    assert [old for old, _ in chat["replaced"]] == ["chat-1", "chat-2"]
    assert_no_loss(figures, traffic)
    assert figures.errors == 0, [c.errors for c in traffic.calls if c.errors][:5]
    assert traffic.notify_errors == []
    assert traffic.lost() == [] and traffic.partial() == [] and figures.missed == 0
    assert traffic.out_of_order() == []
    assert set(after.values()) <= new_chats, after
    assert lists == dict.fromkeys(sorted(new_chats), sorted(USERS)), (ROOM, lists)
