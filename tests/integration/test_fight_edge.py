"""Real players fight through real brokers: matchmaking, bound fight routes, turns, and
kill -9 of their fight process mid-fight."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mmo.testing import TwistdProcess
from mmo.testing.rawclient import RawClient
from mmo.wire.gen.mmo.ttypes import PacketKind

from .conftest import POLL_TIMEOUT, wait_until
from .edge import EdgeCluster, Player

MMO = [sys.executable, "-c", "from mmo.cli import main; main()"]

pytestmark = pytest.mark.timeout(90)


def fights_status(yellow: str) -> dict[str, Any]:
    """`mmo fights --json`."""
    out = subprocess.run(
        [*MMO, "fights", "--yellow", yellow, "--json"],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    return json.loads(out.stdout)


def wait_pool(yellow: str, predicate: Any, timeout: float = POLL_TIMEOUT) -> dict[str, Any]:
    """Poll `mmo fights` until ``predicate(status)`` holds; that status."""

    def matching() -> dict[str, Any] | None:
        try:
            status = fights_status(yellow)
        except subprocess.CalledProcessError:
            return None  # the dispatcher is not registered yet
        return status if predicate(status) else None

    return wait_until(matching, timeout, "the fight pool's status", interval=0.2)


def ready_count(status: dict[str, Any]) -> int:
    """Ready fight processes."""
    return sum(p["state"] == "ready" for p in status["processes"])


def matchmake(one: Player, two: Player) -> dict[str, Any]:
    """Both players ask for a fight of two; both get the same one, then fight.start.

    Whichever request the dispatcher gets first waits for the other; that player has the
    first turn (``players`` is in turn order)."""
    seq = one.send("fight.matchmake", {"size": 2})
    second = two.request("fight.matchmake", {"size": 2})
    first = one.reply(seq)
    assert first.kind == PacketKind.RESPONSE, first
    assert first.value == second
    for player in (one, two):
        assert player.push("fight.start") == second
    return second


@pytest.fixture
def edge(tmp_path: Path):
    """An edge cluster whose brokers route fight.* to the fight processes, plus a dispatcher
    (cap 2: one fight per process; one spare)."""
    config = tmp_path / "broker.toml"
    config.write_text('[broker.routes]\nfight = "fight-worker"\n')
    cluster = EdgeCluster(tmp_path, brokers=2, broker_args=("--config", str(config)))
    dispatcher = TwistdProcess(
        "mmo-fight",
        ["--yellow", cluster.yellow, "--handler", "mmo.examples.fight:TurnFight",
         "--cap", "2", "--min-spare", "1", "--max-processes", "4", "--drain-timeout", "1"],
        tmp_path,
        name="fight-dispatcher",
    )  # fmt: skip
    cluster.processes["fight-dispatcher"] = dispatcher.start()
    try:
        cluster.wait_ready()
        wait_pool(cluster.yellow, lambda s: ready_count(s) == 1)
        yield cluster
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        cluster.stop()


def test_players_fight_and_are_told_when_their_fight_process_dies(edge):
    """Two players on two brokers matchmake, join and take turns on their bound fight process;
    after kill -9 of it both get fight.lost saying it died (its exit seen, not a registry
    timeout), and a new fight starts at once, on the spare that was ready."""
    alice = Player(edge.ports[0], "alice")
    bob = Player(edge.ports[1], "bob")
    players = {"alice": alice, "bob": bob}
    fight = matchmake(alice, bob)
    instance = fight["instance"]
    first, second = fight["players"]
    assert alice.request("fight.join", {"fight_id": fight["fight_id"]})["turn"] is None
    state = bob.request("fight.join", {"fight_id": fight["fight_id"]})
    assert state["turn"] == first and state["joined"] == ["alice", "bob"]
    for player in (alice, bob):
        assert player.push("fight.turn")["turn"] == first
    hit = players[first].request("fight.attack")
    assert hit["by"] == first and hit["target"] == second and hit["turn"] == second
    assert players[second].push("fight.turn")["damage"] == hit["damage"]
    # Only the bound process knows the fight: the state comes from it.
    assert players[second].request("fight.state")["hp"][second] == 100 - hit["damage"]

    status = wait_pool(edge.yellow, lambda s: ready_count(s) == 2)
    victim = next(p for p in status["processes"] if p["instance"] == instance)
    (spare,) = (p["instance"] for p in status["processes"] if p["instance"] != instance)
    assert victim["load"] == 2
    os.kill(victim["pid"], signal.SIGKILL)  # a child of the dispatcher this test started
    for player in (alice, bob):
        lost = player.push("fight.lost", timeout=POLL_TIMEOUT)
        assert lost["fight_id"] == fight["fight_id"] and "signal 9" in lost["reason"]

    # At once: on the spare that was ready before the kill, without waiting for a new one.
    again = matchmake(alice, bob)
    assert again["instance"] == spare
    first = again["players"][0]
    alice.request("fight.join", {"fight_id": again["fight_id"]})
    assert bob.request("fight.join", {"fight_id": again["fight_id"]})["turn"] == first
    assert players[first].request("fight.attack")["by"] == first
    status = fights_status(edge.yellow)
    assert instance not in {p["instance"] for p in status["processes"]}
    assert status["counts"]["crashed"] == 1 and status["counts"]["lost"] == 1
    for player in (alice, bob):
        player.close()


def test_a_finished_fight_is_released_and_its_result_kept(edge):
    """Fighting to the end: both get fight.end with the winner, the routes are unbound, the
    seats are released and the dispatcher keeps the result."""
    carol = Player(edge.ports[0], "carol")
    dave = Player(edge.ports[0], "dave")
    fight = matchmake(carol, dave)
    carol.request("fight.join", {"fight_id": fight["fight_id"]})
    dave.request("fight.join", {"fight_id": fight["fight_id"]})
    players = {"carol": carol, "dave": dave}
    turn, end = fight["players"][0], None
    for _ in range(20):
        event = players[turn].request("fight.attack")
        if "winner" in event:
            end = event
            break
        turn = event["turn"]
    assert end is not None
    for player in (carol, dave):
        assert player.push("fight.end")["winner"] == end["winner"]
    status = wait_pool(edge.yellow, lambda s: s["fights"] == 0)
    assert status["counts"]["released"] == 1
    out = subprocess.run(
        [*MMO, "call", "--yellow", edge.yellow, "fight.results", "{}"],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    [kept] = json.loads(out.stdout)
    assert kept["fight_id"] == fight["fight_id"] and kept["result"]["winner"] == end["winner"]
    # Unbound: fight.* now goes to any fight process, which knows no fight of carol's.
    refused = carol.reply(carol.send("fight.attack"))
    assert refused.kind == PacketKind.ERROR
    for player in (carol, dave):
        player.close()


class Resumable(Player):
    """A player who keeps the login's session id and token, to resume elsewhere."""

    def __init__(self, port: int, user: str) -> None:
        self.user = user
        self.client = RawClient(port)
        self.login = self.client.login(user, f"pw-{user}")
        self.pushes = []

    def resume_on(self, port: int) -> Resumable:
        """Drop this connection and resume the session on the broker at ``port``."""
        self.client.close()
        moved = Resumable.__new__(Resumable)
        moved.user, moved.pushes, moved.client = self.user, [], RawClient(port)
        body = {"session_id": self.login["session_id"], "token": self.login["token"]}
        answer = moved.client.request("session.resume", body)
        assert answer.kind == PacketKind.RESPONSE, answer
        moved.login = {**self.login, **answer.value}
        return moved


def test_a_player_who_resumes_on_another_broker_mid_fight_gets_its_pushes_and_its_loss(edge):
    """Alice resumes on the other broker mid-fight: the fight's turns reach her there, and
    when her fight process is killed, so does fight.lost."""
    alice = Resumable(edge.ports[0], "alice")
    bob = Player(edge.ports[1], "bob")
    fight = matchmake(alice, bob)
    alice.request("fight.join", {"fight_id": fight["fight_id"]})
    bob.request("fight.join", {"fight_id": fight["fight_id"]})
    for player in (alice, bob):
        player.push("fight.turn")

    alice = alice.resume_on(edge.ports[1])
    # Her first request after the resume (its answer comes from her fight process through
    # her new broker) also tells the process where she is, whichever way the event races.
    assert alice.request("fight.state")["fight_id"] == fight["fight_id"]
    players = {"alice": alice, "bob": bob}
    first, second = fight["players"]
    # Bound routes were restored by the resume; the other player's turn is pushed to her there.
    hit = players[first].request("fight.attack")
    assert players[second].push("fight.turn", timeout=POLL_TIMEOUT)["damage"] == hit["damage"]

    status = wait_pool(edge.yellow, lambda s: any(p["load"] == 2 for p in s["processes"]))
    victim = next(p for p in status["processes"] if p["instance"] == fight["instance"])
    os.kill(victim["pid"], signal.SIGKILL)  # a child of the dispatcher this test started
    for player in (alice, bob):
        lost = player.push("fight.lost", timeout=POLL_TIMEOUT)
        assert lost["fight_id"] == fight["fight_id"]
    for player in (alice, bob):
        player.close()
