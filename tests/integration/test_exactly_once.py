"""Exactly-once for resent non-idempotent requests, through real brokers and workers.

A client whose reply was lost (its connection dropped, its broker was killed) resumes its
session on another broker and sends the request again with the same seq: it gets the
original reply and the side effect (``echo.slow_note`` records a note) happens once,
though two ``echo`` instances serve the route (docs/reliability.md, mmo.logic.memo).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted  # type: ignore[import-untyped]
from twisted.internet import defer, reactor

from mmo.client import Client
from mmo.logic import Directory
from mmo.testing.rawclient import RawClient
from mmo.wire.gen.mmo.ttypes import PacketKind

from .conftest import until
from .edge import EdgeCluster, running

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def edge(tmp_path: Path) -> Iterator[EdgeCluster]:
    with running(EdgeCluster(tmp_path)) as cluster:
        yield cluster


@defer.inlineCallbacks
def notes_with(directory: Directory, key: str) -> Any:
    """How many notes carrying ``key`` the echo instances hold, all together."""
    total = 0
    for iid in ("echo-1", "echo-2"):
        notes = yield directory.call("echo", "notes", instance=iid, timeout=5)
        total += sum(1 for note in notes if note.get("key") == key)
    return total


def answer_to(client: RawClient, seq: int) -> Any:
    """The RESPONSE to ``seq`` (pushes and other answers are skipped)."""
    while True:
        packet = client.recv()
        if packet.seq == seq and packet.kind in (PacketKind.RESPONSE, PacketKind.ERROR):
            assert packet.kind == PacketKind.RESPONSE, packet
            return packet.value


@pytest_twisted.inlineCallbacks
def test_a_request_resent_on_another_broker_runs_once(
    edge: EdgeCluster, directory_factory: Any
) -> Any:
    directory = directory_factory([edge.yellow])
    key = uuid.uuid4().hex
    # Long enough for the resume and the resend below to come while the first run still
    # sleeps, on a busy machine too (and short of the broker's 5 s request-timeout).
    body = {"seconds": 3.0, "key": key}
    first = RawClient(edge.ports[0])
    login = first.login("alice", "pw-alice")
    first.send(PacketKind.REQUEST, "echo.slow_note", body, seq=1000)
    first.close()  # the reply is lost with the connection

    other = RawClient(edge.ports[1])
    try:
        resumed = other.request(
            "session.resume", {"session_id": login["session_id"], "token": login["token"]}
        )
        assert resumed.kind == PacketKind.RESPONSE, resumed
        # Sent again while the first run still sleeps on the worker: it waits for it.
        other.send(PacketKind.REQUEST, "echo.slow_note", body, seq=1000)
        assert answer_to(other, 1000) == 1
        # And once more after it ended: answered from the memo at once.
        other.send(PacketKind.REQUEST, "echo.slow_note", body, seq=1000)
        assert answer_to(other, 1000) == 1
        assert (yield notes_with(directory, key)) == 1
        # A new seq is a new request, even with the same body.
        other.send(PacketKind.REQUEST, "echo.slow_note", body, seq=1001)
        assert answer_to(other, 1001) == 2
        assert (yield notes_with(directory, key)) == 2
    finally:
        other.close()


@pytest_twisted.inlineCallbacks
def test_the_sdk_resends_a_request_caught_by_a_broker_kill_and_it_runs_once(
    edge: EdgeCluster, directory_factory: Any
) -> Any:
    directory = directory_factory([edge.yellow])
    client = Client(reactor, brokerlist=edge.brokerlist_url)
    yield client.connect()
    yield client.login(user="bob", password="pw-bob")
    key = uuid.uuid4().hex
    try:
        # 4 s: the kill below catches it running, short of the broker's 5 s request-timeout.
        d = client.request("echo.slow_note", {"seconds": 4.0, "key": key}, timeout=30)
        yield until(
            lambda: notes_with(directory, key).addCallback(lambda n: n == 1),
            what="the request running on a worker",
        )
        assert not d.called  # in flight: its reply is still to come
        port = int(str(client.broker_address).rpartition(":")[2])
        edge.processes[f"broker-{edge.ports.index(port) + 1}"].kill()
        assert (yield d) == 1
        assert client.broker_address != f"127.0.0.1:{port}"
        assert (yield notes_with(directory, key)) == 1
    finally:
        yield client.close()
