"""The Python examples of README.md's "Writing a service" and "Players: brokers, sessions,
pushes", run for real.

The README marks each Python block of those two sections with an HTML comment,
``<!-- readme-example: NAME -->``, just before its fence; a block without one fails
:func:`test_every_python_block_of_the_sections_is_marked`. The module's cluster writes
the handler blocks as the README names them (``mypkg/inv.py``, ``mypkg/rooms.py``) under a
temporary directory on its workers' ``PYTHONPATH`` and serves them with real ``twistd``
processes, beside a yellow, the session service, sso, the example ``player`` service the
inventory calls and two brokers. The calling block runs as the script a reader would copy,
and players log in through the brokers: each test checks what the README says happens.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from mmo.errors import Forbidden, RemoteError
from mmo.logic import Directory, connect
from mmo.wire.gen.mmo.ttypes import ClientError, PacketKind

from .conftest import wait_instances, wait_links
from .edge import ACCOUNTS, EdgeCluster, Player

pytestmark = pytest.mark.timeout(120)

README = Path(__file__).resolve().parents[2] / "README.md"
#: The README sections whose every Python block is a marked example.
SECTIONS = ("Writing a service", "Players: brokers, sessions, pushes")
#: The handler blocks: the file each is written to, and the ``--handler`` serving it.
HANDLERS = {
    "inventory": ("mypkg/inv.py", "mypkg.inv:Inventory"),
    "rooms": ("mypkg/rooms.py", "mypkg.rooms:Rooms"),
}
#: The block run as a script, connecting to this yellow (the cluster's is put in its place).
CALLING, README_YELLOW = "calling", "tcp://127.0.0.1:5555"
#: The inventory's ``max_items``, given as the README says (``--set max_items=N``).
MAX_ITEMS = 3

_MARK = re.compile(r"<!-- readme-example: ([\w-]+) -->")
_PYTHON = re.compile(r"^```python\n(.*?)^```$", re.DOTALL | re.MULTILINE)


def section(text: str, title: str) -> str:
    """The body of the section ``## title`` of ``text``, up to the next ``## `` heading."""
    found = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.DOTALL | re.MULTILINE)
    assert found is not None, f"README.md has no section {title!r}"
    return found.group(1)


def read_examples(text: str) -> tuple[dict[str, str], list[str]]:
    """The Python blocks of the README's :data:`SECTIONS`.

    Returns:
        The blocks marked on the line before their fence, by name, and the first line
        of each block not marked.

    Raises:
        AssertionError: a name is marked twice.
    """
    marked: dict[str, str] = {}
    unmarked: list[str] = []
    for title in SECTIONS:
        body = section(text, title)
        for block in _PYTHON.finditer(body):
            before = body[: block.start()].rstrip("\n").rpartition("\n")[2]
            mark = _MARK.fullmatch(before.strip())
            if mark is None:
                unmarked.append(f"{title}: {block.group(1).splitlines()[0]}")
                continue
            assert mark[1] not in marked, f"README.md: readme-example {mark[1]!r} is marked twice"
            marked[mark[1]] = block.group(1)
    return marked, unmarked


def example(name: str) -> str:
    """The block marked ``name`` (failing clearly if the README lost it)."""
    marked, _ = read_examples(README.read_text(encoding="utf-8"))
    assert name in marked, f"README.md has no <!-- readme-example: {name} --> block"
    return marked[name]


def routed(player: Player, route: str, body: dict[str, Any], timeout: float = 30.0) -> Any:
    """``player``'s request, sent again while its broker does not know the route yet (it
    learns a service's routes from the registry, a moment after the worker registers)."""
    deadline = time.monotonic() + timeout
    while True:
        answer = player.reply(player.send(route, body))
        if answer.code != ClientError.UNKNOWN_ROUTE or time.monotonic() > deadline:
            assert answer.kind == PacketKind.RESPONSE, (route, answer)
            return answer.value
        time.sleep(0.1)


def refused(player: Player, route: str, body: dict[str, Any]) -> int | None:
    """The ClientError code of ``player``'s request to ``route`` (None if answered)."""
    answer = player.reply(player.send(route, body))
    return answer.code if answer.kind == PacketKind.ERROR else None


@pytest.fixture(scope="module")
def readme(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgeCluster]:
    """A cluster serving the README's handlers, written under a temporary directory."""
    root = tmp_path_factory.mktemp("readme")
    (root / "mypkg").mkdir()
    (root / "mypkg" / "__init__.py").write_text("")
    for name, (path, _) in HANDLERS.items():
        (root / path).write_text(example(name), encoding="utf-8")
    pythonpath = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
    cluster = EdgeCluster(
        root,
        workers={"session": "mmo.sessions:SessionService", "sso": "mmo.examples.sso:SSOService"},
        accounts=f"{ACCOUNTS},harry:pw-harry",
        env={"PYTHONPATH": pythonpath},
    )
    try:
        cluster.wait_ready()
        # Started once the brokers are registered, so that the rooms service's first view
        # of the registry holds both (a broadcast goes to the brokers it knows).
        cluster.settings["inventory"] = {"max_items": str(MAX_ITEMS)}
        for name, (_, handler) in HANDLERS.items():
            cluster.start_worker(name, handler)
        database = f"sqlite:///{root / 'players.db'}"
        cluster.start_worker(
            "player", "mmo.examples.player:PlayerService", ("--database", database)
        )
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def member(readme: EdgeCluster) -> Iterator[Directory]:
    """A cluster member (role ``tool``) that sees the README's services up."""
    directory = connect(readme.yellow)
    try:
        for service in ("inventory", "rooms", "player"):
            pytest_twisted.blockon(wait_instances(directory, service, {service}, timeout=30))
            pytest_twisted.blockon(wait_links(directory, service, {service}))
        yield directory
    finally:
        pytest_twisted.blockon(directory.stopService())


def test_every_python_block_of_the_sections_is_marked() -> None:
    """The two sections' Python blocks are all marked, and are the examples run here."""
    marked, unmarked = read_examples(README.read_text(encoding="utf-8"))
    assert not unmarked, f"Python blocks without <!-- readme-example: NAME -->: {unmarked}"
    assert set(marked) == {*HANDLERS, CALLING}


def test_the_calling_snippet_runs_as_a_script(readme: EdgeCluster, member: Directory) -> None:
    """The script gets give's reply (REP), its push is served (PULL), the events reach
    its subscription (PUB); the player it gave to counts the items through a broker."""
    script = example(CALLING)
    assert README_YELLOW in script, f"the calling example connects to {README_YELLOW} no more"
    path = readme.log_dir / "calling.py"
    path.write_text(script.replace(README_YELLOW, readme.yellow), encoding="utf-8")
    run = subprocess.run(
        [sys.executable, str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert run.returncode == 0, run.stderr
    replies, events = [], []
    for line in run.stdout.splitlines():
        topic, _, event = line.partition(" ")
        if topic == "given":
            events.append(ast.literal_eval(event))
        else:
            replies.append(ast.literal_eval(line))
    assert replies == [{"count": 1, "level": 1}], run.stdout
    # The first event may go before the subscription is connected (pub-sub keeps nothing);
    # the push's and the last call's come later.
    assert {"user": "harry", "item": "wand"} in events, run.stdout
    assert {"user": "ron", "item": "rat"} in events, run.stdout
    harry = Player(readme.ports[1], "harry")
    try:
        assert routed(harry, "inventory.count", {"item": "owl"}) == 1
        assert harry.request("inventory.count", {"item": "wand"}) == 1
    finally:
        harry.close()


def test_players_reach_the_client_methods_only(readme: EdgeCluster, member: Directory) -> None:
    """Through a broker, a player's count is answered; give and reset do not exist."""
    carol = Player(readme.ports[0], "carol")
    try:
        assert routed(carol, "inventory.count", {"item": "owl"}) == 0
        assert refused(carol, "inventory.give", {"user": "carol", "item": "owl"}) == (
            ClientError.UNKNOWN_ROUTE
        )
        assert refused(carol, "inventory.reset", {"user": "carol"}) == ClientError.UNKNOWN_ROUTE
    finally:
        carol.close()


@pytest_twisted.inlineCallbacks
def test_members_call_within_the_settings_and_the_roles(
    readme: EdgeCluster, member: Directory
) -> Any:
    """A member gives up to max_items (``--set``), then gets the handler's ValueError;
    reset (``@callers("broker")``) is Forbidden to it and empties the bag for a broker."""
    inventory = member.get_service("inventory")
    counts = []
    for _ in range(MAX_ITEMS):
        counts.append((yield inventory.give(user="neville", item="toad"))["count"])
    assert counts == list(range(1, MAX_ITEMS + 1))
    with pytest.raises(RemoteError) as full:
        yield inventory.give(user="neville", item="toad")
    assert (full.value.type, full.value.message) == ("ValueError", "bag full")
    with pytest.raises(Forbidden):
        yield inventory.reset(user="neville")
    broker = connect(readme.yellow, caller_role="broker")
    try:
        assert (yield broker.get_service("inventory").reset(user="neville")) is None
    finally:
        yield broker.stopService()
    assert (yield inventory.give(user="neville", item="toad"))["count"] == 1


@pytest_twisted.inlineCallbacks
def test_rooms_broadcast_across_brokers_and_whisper_to_one_session(
    readme: EdgeCluster, member: Directory
) -> Any:
    """Players on two brokers see each other join and speak in a room; a member's whisper
    reaches only the session of the user it names, and players cannot whisper."""
    alice, bob = Player(readme.ports[0], "alice"), Player(readme.ports[1], "bob")
    try:
        assert routed(alice, "rooms.join", {"room": "hall"}) is None
        assert alice.push("rooms.joined") == {"user": "alice"}
        assert routed(bob, "rooms.join", {"room": "hall"}) is None
        assert alice.push("rooms.joined") == bob.push("rooms.joined") == {"user": "bob"}
        assert alice.request("rooms.say", {"room": "hall", "text": "hi"}) is None
        assert alice.push("rooms.said") == bob.push("rooms.said") == {"user": "alice", "text": "hi"}
        assert refused(alice, "rooms.whisper", {"user": "bob", "text": "psst"}) == (
            ClientError.UNKNOWN_ROUTE
        )
        rooms = member.get_service("rooms")
        yield rooms.whisper(user="bob", text="for bob")
        # After bob's, on the same links: had bob's reached alice, it would come first.
        yield rooms.whisper(user="alice", text="for alice")
        assert bob.push("rooms.whisper") == {"text": "for bob"}
        assert alice.push("rooms.whisper") == {"text": "for alice"}
    finally:
        alice.close()
        bob.close()
