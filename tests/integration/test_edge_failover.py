"""kill -9 a broker: its clients come back through the brokerlist on the other one."""

from __future__ import annotations

import pytest_twisted
from twisted.internet import defer, reactor

from mmo.client import Client

from .conftest import until


@pytest_twisted.inlineCallbacks
def test_killed_broker_clients_resume_elsewhere(fresh_edge):
    """After kill -9 of a broker its clients resume on the other: same session, same room."""
    edge = fresh_edge
    users = ["alice", "bob", "carol", "dave"]
    clients: dict[str, Client] = {}
    heard: dict[str, list[str]] = {u: [] for u in users}
    for i, user in enumerate(users):
        client = Client(
            reactor, brokerlist=edge.brokerlist_url, broker=f"127.0.0.1:{edge.ports[i % 2]}"
        )
        yield client.connect()
        yield client.login(user=user, password=f"pw-{user}")
        client.on("chat.message", lambda route, body, u=user: heard[u].append(body["content"]))
        yield client.request("chat.join", {"room": "keep"})
        clients[user] = client
    before = {u: (c.session_id, c.broker_address) for u, c in clients.items()}
    victims = [u for u, (_, addr) in before.items() if addr.endswith(f":{edge.ports[0]}")]
    assert victims, before

    resumed = {u: defer.Deferred() for u in victims}
    for u in victims:
        clients[u].on_resumed(lambda *args, d=resumed[u]: d.called or d.callback(None))
    edge.processes["broker-1"].kill()
    yield defer.gatherResults([d.addTimeout(30, reactor) for d in resumed.values()])

    for u in users:
        # The same session: resumed within its grace (30 s), else it would have ended.
        assert clients[u].session_id == before[u][0], u
        assert clients[u].broker_address == f"127.0.0.1:{edge.ports[1]}", u
    # Room membership survived: a message from anyone reaches everyone once.
    clients["bob"].notify("chat.send", {"content": "after the crash"})
    yield until(lambda: all("after the crash" in heard[u] for u in users), what="all heard it")
    assert all(heard[u].count("after the crash") == 1 for u in users), heard
    members = yield clients["alice"].request("chat.members", {})
    assert members == sorted(users)
    for client in clients.values():
        yield client.close()
