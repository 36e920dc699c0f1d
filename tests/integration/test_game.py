"""The demo game (``/game/`` of the brokerlist, docs/game.md) in a real headless Chromium,
against a real cluster: an edge cluster (yellow, session, sso, chat, two brokers with a
WebSocket listener each, the brokerlist) whose brokers route ``fight`` to the fight
processes of a fight dispatcher running ``mmo.examples.fight:TurnFight``. Playwright's sync
API drives Debian's ``chromium`` (``scripts/ensure-servers`` installs it); each player is a
browser context of its own, talking to the brokers through the JS SDK over WebSockets.

One cluster and one browser serve the whole file (module fixtures). Screenshots go to the
module's temporary directory, or to ``$MMO_GAME_SCREENSHOTS`` when it names a directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from mmo.testing import TwistdProcess

from .browser import headless_chromium
from .conftest import wait_until
from .edge import EdgeCluster

#: What every wait of a page allows (ms; Playwright's timeouts and its ``expect``'s, whose
#: default is 5 s): several test files run at once on a small machine.
WAIT_MS = 30_000
#: Playwright's own default for ``expect``, put back after the module.
EXPECT_DEFAULT_MS = 5_000
#: Where the screenshots go when set.
SHOTS_ENV = "MMO_GAME_SCREENSHOTS"
#: Attacks after which a fight must have ended (100 hp, 15-30 a hit: 8 at most).
MAX_TURNS = 20
MMO = [sys.executable, "-c", "from mmo.cli import main; main()"]

pytestmark = pytest.mark.timeout(180)


class Game:
    """The cluster, the game's URL and where screenshots go."""

    def __init__(self, edge: EdgeCluster, shots: Path) -> None:
        self.edge = edge
        self.origin = f"http://127.0.0.1:{edge.http_port}"
        self.url = f"{self.origin}/game/"
        self.shots = shots

    def shoot(self, page: Any, name: str) -> None:
        """Screenshot ``page`` to ``<shots>/<name>.png``."""
        page.screenshot(path=str(self.shots / f"{name}.png"), full_page=True)

    def broker_of(self, address: str) -> str:
        """The name of the broker whose WebSocket listener is ``address`` (``host:port``)."""
        port = int(address.rsplit(":", 1)[1])
        return f"broker-{self.edge.ws_ports.index(port) + 1}"


class Player:
    """One player: a browser context with the game's page, and what it complained of
    (script errors, console errors) and asked for (every URL)."""

    def __init__(self, game: Game, browser: Any, query: str = "") -> None:
        self.game = game
        self.context = browser.new_context(viewport={"width": 1100, "height": 760})
        self.page = self.context.new_page()
        self.page.set_default_timeout(WAIT_MS)
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("request", lambda request: self.requests.append(request.url))
        self.page.goto(game.url + query)
        expect(self.page.locator("body")).to_have_attribute("data-ready", "true")
        self.user = ""

    def log_in(self, user: str, password: str, *, register: bool = False) -> None:
        """Fill the form and log in (or register, then log in); wait until in the room."""
        self.page.fill("#user", user)
        self.page.fill("#password", password)
        self.page.click("#register-button" if register else "#login-button")
        expect(self.page.locator("#whoami")).to_have_text(user)
        expect(self.page.locator("#chat-panel")).to_have_attribute("data-room", "hall")
        expect(self.page.locator("#connection")).to_have_attribute("data-state", "connected")
        self.user = user

    @property
    def broker(self) -> str:
        """The broker address the page says it is on."""
        return str(self.page.locator("body").get_attribute("data-broker") or "")

    def say(self, text: str) -> None:
        """Send a chat line."""
        self.page.fill("#chat-input", text)
        self.page.click("#chat-send")

    def heard(self, sender: str, text: str) -> None:
        """Wait until the chat shows ``text`` from ``sender``."""
        line = self.page.locator(f'#chat-log li[data-from="{sender}"]', has_text=text)
        expect(line).to_have_count(1)

    def panel(self, name: str) -> str | None:
        """An attribute of the fight panel."""
        value: str | None = self.page.locator("#fight-panel").get_attribute(name)
        return value

    def close(self) -> None:
        """Close the context (the page and its connection)."""
        self.context.close()


def _get(url: str) -> tuple[int, dict[str, str], bytes]:
    """GET ``url`` without following redirects: status, headers (lower-case), body."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any) -> None:
            """Follow no redirect: it is answered as it is."""
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(url, timeout=5) as response:
            return (
                response.status,
                {k.lower(): v for k, v in response.headers.items()},
                response.read(),
            )
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def _fight_pool_ready(yellow: str) -> bool:
    """Whether the dispatcher answers ``mmo fights`` with a ready fight process."""
    out = subprocess.run(
        [*MMO, "fights", "--yellow", yellow, "--json"],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    if out.returncode != 0:
        return False  # the dispatcher is not registered yet
    return any(p["state"] == "ready" for p in json.loads(out.stdout)["processes"])


@pytest.fixture(scope="module")
def game(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Game]:
    """The cluster (brokers routing ``fight`` to the fight processes, a dispatcher with one
    spare process), started once for the module."""
    tmp = tmp_path_factory.mktemp("game")
    shots = Path(os.environ.get(SHOTS_ENV) or tmp / "shots").resolve()
    shots.mkdir(parents=True, exist_ok=True)
    edge = EdgeCluster(tmp, brokers=2, broker_args=("--route", "fight=fight-worker"))
    try:
        edge.processes["fight"] = TwistdProcess(
            "mmo-fight",
            ["--yellow", edge.yellow, "--handler", "mmo.examples.fight:TurnFight",
             "--instance-id", "fight-1", "--cap", "2", "--min-spare", "1",
             "--max-processes", "3", "--drain-timeout", "1"],
            tmp,
            name="fight",
            env=edge.env,
        ).start()  # fmt: skip
        edge.wait_ready()
        wait_until(lambda: _fight_pool_ready(edge.yellow), 30, "a ready fight process", 0.2)
        yield Game(edge, shots)
    except BaseException:
        print(edge.logs())
        raise
    finally:
        edge.stop()


@pytest.fixture(scope="module")
def browser(game: Game) -> Iterator[Any]:
    """A headless Chromium (Debian's); every ``expect`` waits up to ``WAIT_MS`` meanwhile."""
    with headless_chromium() as browser:
        expect.set_options(timeout=WAIT_MS)
        try:
            yield browser
        finally:
            expect.set_options(timeout=EXPECT_DEFAULT_MS)


@pytest.fixture
def players(game: Game, browser: Any) -> Iterator[Callable[..., Player]]:
    """Make players (each a browser context on the game's page, its URL's query string the
    argument); all closed after the test."""
    made: list[Player] = []

    def make(query: str = "") -> Player:
        made.append(Player(game, browser, query))
        return made[-1]

    try:
        yield make
    finally:
        for player in made:
            player.close()


def play_fight(game: Game, one: Player, two: Player, shot: str) -> str:
    """Both players press "Find a fight", are paired, join, and attack on their turn until
    one wins; each page shows the other's hits as they are pushed. The winner."""
    by_user = {one.user: one, two.user: two}
    for player in (one, two):
        expect(player.page.locator("#find-fight")).to_be_enabled()
        player.page.click("#find-fight")
    for player in (one, two):
        expect(player.page.locator("#fight-panel")).to_have_attribute("data-phase", "fighting")
    assert one.panel("data-fight-id") == two.panel("data-fight-id")
    turn = one.panel("data-turn")
    assert turn in by_user and two.panel("data-turn") == turn
    for hit in range(1, MAX_TURNS + 1):
        attacker = by_user[turn]
        other = two if attacker is one else one
        expect(other.page.locator("#attack")).to_be_disabled()
        expect(attacker.page.locator("#attack")).to_be_enabled()
        attacker.page.click("#attack")
        # The hit shows on both pages: on the other one, from the fight.turn (or fight.end)
        # push alone.
        for player in (attacker, other):
            entry = player.page.locator(f'#fight-log li[data-turn="{hit}"]')
            expect(entry).to_have_attribute("data-by", attacker.user)
            expect(entry).to_have_attribute("data-target", other.user)
        damage = other.page.locator(f'#fight-log li[data-turn="{hit}"]').get_attribute(
            "data-damage"
        )
        assert 15 <= int(damage or 0) <= 30
        expect(other.page.locator("#fight-panel")).not_to_have_attribute("data-turn", turn)
        if other.panel("data-phase") == "over":
            break
        turn = other.user
        if hit == 1:
            game.shoot(other.page, f"{shot}-fighting")
    else:
        raise AssertionError(f"no winner after {MAX_TURNS} attacks")
    for player in (one, two):
        expect(player.page.locator("#fight-panel")).to_have_attribute("data-phase", "over")
    winner = one.panel("data-winner")
    assert winner == attacker.user and two.panel("data-winner") == winner
    loser = other.user
    expect(by_user[winner].page.locator("#fight-status")).to_have_text("You win!")
    expect(by_user[loser].page.locator("#fight-status")).to_have_text(f"{winner} wins.")
    expect(by_user[winner].page.locator("#hp-foe-text")).to_have_text("0 hp")
    expect(by_user[loser].page.locator("#hp-me-text")).to_have_text("0 hp")
    for player in (one, two):
        expect(player.page.locator("#find-fight")).to_have_text("Fight again")
        expect(player.page.locator("#attack")).to_be_disabled()
    game.shoot(by_user[winner].page, f"{shot}-won")
    game.shoot(by_user[loser].page, f"{shot}-lost")
    return winner


def test_the_game_is_served_beside_the_broker_list(game: Game) -> None:
    """/game/ serves the page, its script, styles and the SDK with their content types and
    no-cache, no listing, nothing outside; /, /status and a 404 are as they were."""
    status, headers, body = _get(game.url)
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    assert headers["cache-control"] == "no-cache"
    assert headers["content-security-policy"].startswith("default-src 'self'")
    assert b'<script type="module" src="game.js">' in body
    for path, kind in [
        ("game.js", "text/javascript"),
        ("game.css", "text/css"),
        ("sdk/index.js", "text/javascript"),
        ("sdk/client.js", "text/javascript"),
        ("index.html", "text/html"),
    ]:
        status, headers, _ = _get(game.url + path)
        assert (status, headers["content-type"]) == (200, f"{kind}; charset=utf-8"), path
        assert headers["cache-control"] == "no-cache", path
    status, headers, _ = _get(f"{game.origin}/game")
    assert status in (301, 302) and headers["location"].endswith("/game/")
    # No directory listing, nothing outside the directory.
    for path in ("sdk/", "nope.js", "..%2f..%2fbrokerlist%2fservice.py", "../mmo.thrift"):
        assert _get(game.url + path)[0] == 404, path
    # The broker list and the status are as they were.
    status, headers, body = _get(f"{game.origin}/")
    assert (status, headers["content-type"]) == (200, "application/json")
    listing = json.loads(body)
    assert set(listing["websocketList"]) == {f"127.0.0.1:{p}" for p in game.edge.ws_ports}
    status, headers, body = _get(f"{game.origin}/status")
    assert status == 200 and set(json.loads(body)["brokers"]) == {"broker-1", "broker-2"}
    status, headers, body = _get(f"{game.origin}/games")
    assert (status, json.loads(body)) == (404, {"error": "not found"})


def test_register_a_new_account_and_log_in_with_it(game: Game, players: Any) -> None:
    """A wrong password and a taken name are refused on the page; a new account is
    registered, logs in, chats, logs out, and logs in again from another page."""
    zoe = players()
    zoe.page.fill("#user", "alice")
    zoe.page.fill("#password", "wrong")
    zoe.page.click("#login-button")
    expect(zoe.page.locator("#login-error")).to_have_text("wrong user name or password")
    zoe.page.fill("#user", "alice")
    zoe.page.fill("#password", "pw-zoe")
    zoe.page.click("#register-button")
    expect(zoe.page.locator("#login-error")).to_have_text("user 'alice' already exists")
    expect(zoe.page.locator("#login-panel")).to_be_visible()
    game.shoot(zoe.page, "login-refused")

    zoe.log_in("zoe", "pw-zoe", register=True)
    expect(zoe.page.locator('#members li[data-user="zoe"]')).to_have_count(1)
    zoe.say("hello, I am new here")
    zoe.heard("zoe", "hello, I am new here")
    game.shoot(zoe.page, "registered")
    zoe.page.click("#logout-button")
    expect(zoe.page.locator("#login-panel")).to_be_visible()
    expect(zoe.page.locator("#connection")).to_have_attribute("data-state", "closed")

    # The account stays: a new page logs in with it.
    again = players()
    again.log_in("zoe", "pw-zoe")
    again.page.click("#logout-button")  # out of the room: the next test's players are alone
    expect(again.page.locator("#connection")).to_have_attribute("data-state", "closed")
    assert zoe.errors == [] and again.errors == [], (zoe.errors, again.errors)


def test_two_players_chat_fight_and_play_on_after_their_broker_dies(
    game: Game, players: Any
) -> None:
    """alice and bob, on two brokers, chat and fight to a winner; alice's broker is killed
    (kill -9): her page resumes on bob's, and they chat and fight again."""
    alice = players()
    alice.log_in("alice", "pw-alice")
    # bob starts on the other broker (``?broker=``), so that every push between them
    # crosses brokers, and the kill below takes alice's broker alone.
    on = {f"127.0.0.1:{port}" for port in game.edge.ws_ports}
    assert alice.broker in on, alice.broker
    (other,) = on - {alice.broker}
    bob = players(f"?broker={other}")
    bob.log_in("bob", "pw-bob")
    assert bob.broker == other
    for player in (alice, bob):
        for user in ("alice", "bob"):
            expect(player.page.locator(f'#members li[data-user="{user}"]')).to_have_count(1)
    alice.say("hi bob, fancy a fight?")
    bob.heard("alice", "hi bob, fancy a fight?")
    bob.say("always")
    alice.heard("bob", "always")
    alice.heard("alice", "hi bob, fancy a fight?")  # the sender gets the room's push too
    game.shoot(alice.page, "chat")

    play_fight(game, alice, bob, "fight-1")

    # kill -9 the broker alice is on: her page resumes on bob's, says so, and everything
    # goes on; bob's page never lost its connection.
    lost = alice.broker
    game.edge.processes[game.broker_of(lost)].kill()
    expect(alice.page.locator("#connection")).to_have_attribute("data-state", "resumed")
    assert alice.broker == other
    assert alice.page.locator("body").get_attribute("data-resumes") == "1"
    expect(bob.page.locator("#connection")).to_have_attribute("data-state", "connected")
    assert bob.page.locator("body").get_attribute("data-resumes") is None
    expect(alice.page.locator("#whoami")).to_have_text("alice")
    for user in ("alice", "bob"):
        expect(alice.page.locator(f'#members li[data-user="{user}"]')).to_have_count(1)
    game.shoot(alice.page, "resumed")

    alice.say("still here after my broker died")
    bob.heard("alice", "still here after my broker died")
    bob.say("me too")
    alice.heard("bob", "me too")

    play_fight(game, alice, bob, "fight-2")
    for player in (alice, bob):
        assert player.errors == [], (player.user, player.errors)
        # Everything the page loaded came from the brokerlist's origin (no network assets).
        foreign = [u for u in player.requests if not u.startswith(game.origin + "/")]
        assert player.requests and not foreign, foreign
