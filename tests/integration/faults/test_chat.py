"""Chat rooms across two chat instances sharing one Redis, and kill -9 of one under load.

The fault cluster of :mod:`.load` with two chat instances (``chat`` and ``chat-2``, one
throwaway Redis as their ``--cache``) instead of one; the clients join the room through
the brokers, so each session is bound to whichever instance served its join. On top of
the load's figures, the chat scenario counts whole messages:

- **lost**: chat messages no member got (the load sends them as NOTIFYs: what reached
  the killed instance, or was routed to it before the registry dropped it, is gone);
- **partial**: messages some members got and others not;
- **out of order**: a member getting one sender's message after a later one of that sender;
- **notify errors**: ``ERROR`` packets the senders got for their messages;
- **recovery**: seconds from the kill until the first message of every sender bound to
  the killed instance that reached every member, after which none was lost.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted  # type: ignore[import-untyped]
from twisted.internet import reactor

from mmo.registry import Change
from mmo.testing.data import ThrowawayRedis

from ..conftest import next_change, sleep, until, wait_instances
from .load import (
    ROOM,
    SENDERS,
    USERS,
    ChatTraffic,
    FaultCluster,
    assert_no_loss,
    bindings,
    close_clients,
    connect_clients,
    members_on_each,
    ready,
    report,
    with_cache,
)

#: The chat instances (``chat`` is the edge cluster's own, ``chat-2`` the second).
CHATS = ("chat", "chat-2")


@pytest.fixture
def chats(tmp_path: Path, redis: ThrowawayRedis) -> Iterator[FaultCluster]:
    """A fresh, ready cluster with two chat instances sharing a throwaway Redis."""
    with ready(functools.partial(with_cache, cache_url=redis.url, chats=CHATS), tmp_path) as c:
        yield c


@pytest_twisted.inlineCallbacks
def test_two_chat_instances_share_the_rooms(chats: FaultCluster, directory_factory: Any) -> None:
    """Two chat instances on one Redis serve one room: each lists every member, every
    session is bound to one of them, and every member gets every message once, each
    sender's in order."""
    directory = directory_factory([chats.yellow])
    yield wait_instances(directory, "chat", set(CHATS))
    clients = yield connect_clients(chats)
    traffic = ChatTraffic(clients)
    try:
        lists = yield members_on_each(directory, CHATS)
        bound = yield bindings(directory, clients)
        traffic.start()
        yield traffic.warm()
        yield traffic.stop()
    finally:
        traffic.running = False
        yield close_clients(clients)
    figures = traffic.figures("two chat instances", reactor.seconds())
    report(figures)
    print(f"bound: {bound}")
    assert lists == {instance: sorted(USERS) for instance in CHATS}
    assert set(bound.values()) <= set(CHATS) and None not in bound.values(), bound
    assert_no_loss(figures, traffic)
    assert figures.missed == 0 and figures.errors == 0
    assert traffic.out_of_order() == []
    assert traffic.notify_errors == []


@pytest_twisted.inlineCallbacks
def test_chat_instance_kill(chats: FaultCluster, directory_factory: Any) -> None:
    """kill -9 of the chat instance a sender is bound to, under load: the registry expires
    it, the other instance takes its sessions over (bound there at their brokers) and the
    room goes on. No message is delivered twice, out of order or to some members only;
    messages are lost only from senders bound to the killed instance, between the kill and
    their first message through the survivor; echo calls are untouched."""
    directory = directory_factory([chats.yellow])
    yield wait_instances(directory, "chat", set(CHATS))
    clients = yield connect_clients(chats)
    traffic = ChatTraffic(clients)
    try:
        bound = yield bindings(directory, clients)
        victim = bound[SENDERS[0]]
        assert victim in CHATS, bound
        (survivor,) = set(CHATS) - {victim}
        affected = [s for s in SENDERS if bound[s] == victim]
        traffic.start()
        yield traffic.warm()
        gone = next_change(directory, victim, Change.DOWN)
        fault_at = reactor.seconds()
        chats.processes[victim].kill()
        down_at, reason = yield gone.addTimeout(30, reactor)
        yield until(
            lambda: all(traffic.delivered_since(s, down_at) is not None for s in affected),
            what="every sender of the killed instance heard again",
        )
        yield sleep(3.0)  # the load goes on through the survivor: a late loss would show
        yield traffic.stop()
        rebound = yield bindings(directory, clients)
        lists = yield directory.call("chat", "members", {"room": ROOM}, instance=survivor)
    finally:
        traffic.running = False
        yield close_clients(clients)
    lost = traffic.lost()
    # Each affected sender's first message sent after the registry dropped the victim that
    # every member got (it went through the survivor), and the first after its last loss.
    through = {s: traffic.delivered_since(s, down_at) for s in affected}
    back = {
        s: traffic.delivered_since(
            s, max([fault_at, *(traffic.sent[c] for c in lost if c.startswith(f"{s}:"))])
        )
        for s in affected
    }
    figures = traffic.figures("chat instance kill -9", fault_at, detect=down_at - fault_at)
    figures.counts["senders_bound_to_victim"] = len(affected)
    figures.counts["chat_lost"] = len(lost)
    figures.counts["chat_partial"] = len(traffic.partial())
    figures.counts["out_of_order"] = len(traffic.out_of_order())
    figures.counts["notify_errors"] = len(traffic.notify_errors)
    if lost:
        figures.extra["lost_from"] = traffic.sent[lost[0]] - fault_at
        figures.extra["lost_to"] = traffic.sent[lost[-1]] - fault_at
    figures.extra["chat_recovery"] = max(
        [0.0, *((at or fault_at) - fault_at for at in back.values())]
    )
    report(figures)
    print(f"bound: {bound} -> {rebound}; errors: {traffic.notify_errors[:3]}")
    assert reason == "expired"
    assert_no_loss(figures, traffic)  # echo: nothing lost; chat: nothing twice
    assert figures.errors == 0
    assert traffic.out_of_order() == []
    # A broadcast goes to each broker in turn: one the victim was sending when killed can
    # reach some brokers' members and not the others'. At most one per sender bound to it,
    # sent before the kill.
    partial = traffic.partial()
    assert len(partial) <= len(affected), partial
    for content in partial:
        assert content.rpartition(":")[0] in affected, content
        assert fault_at - 1.0 <= traffic.sent[content] <= fault_at + 0.1, content
    # Lost: only messages of senders bound to the victim, sent from just before the kill
    # (in flight to it) until that sender was heard through the survivor.
    assert {c.rpartition(":")[0] for c in lost} <= set(affected), lost
    for content in lost:
        sender = content.rpartition(":")[0]
        assert fault_at - 1.0 <= traffic.sent[content], content
        assert traffic.sent[content] < (through[sender] or 0.0), content
    # The survivor took the victim's sessions over and knows every member.
    assert set(rebound.values()) == {survivor}, rebound
    assert lists == sorted(USERS)
