"""Rooms across two brokers, dynamic binding, pushes: real brokers, workers and clients."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter

import pytest

from mmo.testing.rawclient import RawClient
from mmo.wire.gen.mmo.ttypes import PacketKind

from .conftest import POLL_TIMEOUT, wait_until
from .edge import EdgeCluster

USERS = ["alice", "bob", "carol", "dave", "erin", "frank"]


@pytest.fixture(scope="module")
def edge(tmp_path_factory):
    """One edge cluster with two brokers for the module."""
    cluster = EdgeCluster(tmp_path_factory.mktemp("edge-routing"), brokers=2)
    try:
        cluster.wait_ready()
        yield cluster
    finally:
        cluster.stop()


def test_room_across_two_brokers_exactly_once_in_order(edge):
    """Members on two brokers each get every room message exactly once, in per-sender order."""
    clients = {}
    for i, user in enumerate(USERS):
        client = RawClient(edge.ports[i % 2])
        client.login(user, f"pw-{user}")
        clients[user] = client
    for client in clients.values():
        reply = client.request("chat.join", {"room": "lobby"})
        assert reply.kind == PacketKind.RESPONSE, reply
    per_sender = 20
    for n in range(per_sender):
        for user, client in clients.items():
            client.send(PacketKind.NOTIFY, "chat.send", {"content": f"{user}:{n}"})
    expected = per_sender * len(USERS)
    for user, client in clients.items():
        got: list[tuple[str, int]] = []
        deadline = time.monotonic() + POLL_TIMEOUT
        while len(got) < expected and time.monotonic() < deadline:
            packet = client.recv()
            if packet.kind == PacketKind.PUSH and packet.route == "chat.message":
                sender, n = packet.value["content"].split(":")
                assert packet.value["from"] == sender and packet.value["room"] == "lobby"
                got.append((sender, int(n)))
        assert len(got) == expected, f"{user} got {len(got)} of {expected}"
        assert Counter(got) == Counter((u, n) for u in USERS for n in range(per_sender))
        for sender in USERS:
            numbers = [n for s, n in got if s == sender]
            assert numbers == sorted(numbers), f"{user} saw {sender} out of order"
    members = clients["alice"].request("chat.members", {}).value
    assert members == sorted(USERS)
    for client in clients.values():
        client.close()


def test_dynamic_binding_sends_routes_to_the_bound_instance_only(edge):
    """After a worker binds a session's echo.* to itself, only that instance serves them."""
    client = RawClient(edge.ports[0])
    client.login("alice", "pw-alice")
    spread = Counter(client.request("echo.whoami").value for _ in range(30))
    assert set(spread) == {"echo-1", "echo-2"}

    def serving(session: RawClient, times: int = 30) -> set[str]:
        """The instances that answer ``times`` echo.whoami of ``session``."""
        return {session.request("echo.whoami").value for _ in range(times)}

    bound = client.request("echo.stick").value
    # The bind travels beside the reply, on another path: wait until it took effect.
    wait_until(lambda: serving(client, 10) == {bound}, what="echo.* bound to one instance")
    assert serving(client) == {bound}
    # Another session is not affected (its broker's links to both instances up: the
    # first requests of a fresh broker may all go to the one connected first).
    other = RawClient(edge.ports[1])
    other.login("bob", "pw-bob")
    wait_until(lambda: len(serving(other)) == 2, what="bob's echo.* on both instances")
    client.request("echo.unstick")
    wait_until(lambda: len(serving(client)) == 2, what="echo.* routed by load again")
    client.close()
    other.close()


def test_brokerlist_lists_both_brokers_with_load(edge):
    """The brokerlist names every broker's client address with its load."""
    listing = edge.brokerlist()
    assert set(listing["brokerList"]) == {f"127.0.0.1:{p}" for p in edge.ports}
    assert all(0 <= load <= 1 for load in listing["brokerList"].values())
    assert listing["version"]


MMO = [sys.executable, "-c", "from mmo.cli import main; main()"]


def test_mmo_chat_talks_and_refuses_a_bad_login(edge):
    """`mmo chat` sends stdin lines to the room and prints pushes; a bad login exits 1."""
    watcher = RawClient(edge.ports[1])
    watcher.login("carol", "pw-carol")
    watcher.request("chat.join", {"room": "cli"})
    result = subprocess.run(
        [
            *MMO,
            "chat",
            "--brokerlist",
            edge.brokerlist_url,
            "--user",
            "zed",
            "--password",
            "pw-zed",
            "--room",
            "cli",
            "--register",
        ],
        input="hello from the terminal\n",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "hello from the terminal" in result.stdout
    heard = []
    deadline = time.monotonic() + POLL_TIMEOUT
    while time.monotonic() < deadline and not any("terminal" in h for h in heard):
        packet = watcher.recv()
        if packet.kind == PacketKind.PUSH and packet.route == "chat.message":
            heard.append(packet.value["content"])
    assert heard == ["hello from the terminal"]
    bad = subprocess.run(
        [
            *MMO,
            "chat",
            "--brokerlist",
            edge.brokerlist_url,
            "--user",
            "zed",
            "--password",
            "wrong",
            "--room",
            "cli",
        ],
        input="",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode != 0
    assert "BadCredentials" in bad.stderr
    watcher.close()
