"""The admin console (``twistd mmo-admin``) in a real headless Chromium, against a real
cluster: an edge cluster (yellow, session, sso, chat, two echo workers, two brokers, the
brokerlist), a fight pool, a log collector, every process with its operator listener,
and the console beside them. Playwright's sync API drives Debian's ``chromium``
(``scripts/ensure-servers`` installs it); players are raw TCP clients, so what an action
does is checked where players see it.

One cluster, one console and one logged-in page serve the whole file (module fixtures).
Screenshots of each section go to the module's temporary directory, or to
``$MMO_ADMIN_SCREENSHOTS`` when it names a directory (``MMO_ADMIN_SCREENSHOTS=docs/admin``
makes docs/admin/*.png).
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from mmo.testing import TwistdProcess, free_port
from mmo.testing.rawclient import RawClient
from mmo.wire.gen.mmo.ttypes import PacketKind

from .browser import headless_chromium
from .conftest import wait_until
from .edge import WORKERS, EdgeCluster, Player

PASSWORD = "correct horse battery staple"
METRICS = ("--metrics", "127.0.0.1:0")
#: What every wait of the page allows (ms): the cluster is read every 0.5 s, but several
#: test files run at once on a small machine.
WAIT_MS = 30_000
#: Where the screenshots go (docs/admin/*.png are made with this set to docs/admin).
SHOTS_ENV = "MMO_ADMIN_SCREENSHOTS"

pytestmark = pytest.mark.timeout(180)


class Console:
    """The cluster, the console's URL, where screenshots go, and what the logged-in page
    asked for (every URL) and complained of (script errors, console errors: a CSP
    violation is one)."""

    def __init__(self, edge: EdgeCluster, url: str, shots: Path) -> None:
        self.edge = edge
        self.url = url
        self.shots = shots
        self.requests: list[str] = []
        self.errors: list[str] = []

    def shoot(self, target: Any, name: str, **kwargs: Any) -> Path:
        """Screenshot a page or a locator to ``<shots>/<name>.png``."""
        path = self.shots / f"{name}.png"
        target.screenshot(path=str(path), **kwargs)
        return path

    def shoot_top(self, page: Any, selector: str, name: str, height: int = 520) -> Path:
        """Screenshot the first ``height`` pixels of the section ``selector`` (a long
        one, like the logs, would make a large picture)."""
        box = page.evaluate(
            """(selector) => {
                const r = document.querySelector(selector).getBoundingClientRect();
                return {x: r.left + window.scrollX, y: r.top + window.scrollY,
                        width: r.width, height: r.height};
            }""",
            selector,
        )
        box["height"] = min(box["height"], height)
        return self.shoot(page, name, full_page=True, clip=box)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (OSError, urllib.error.HTTPError):
        return False


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    """The cluster and the console, started once for the module."""
    tmp = tmp_path_factory.mktemp("admin")
    shots = Path(os.environ.get(SHOTS_ENV) or tmp / "shots").resolve()
    shots.mkdir(parents=True, exist_ok=True)
    yellow_ops = f"127.0.0.1:{free_port()}"
    edge = EdgeCluster(
        tmp,
        brokers=2,
        workers={},
        broker_args=METRICS,
        yellow_args=("--metrics", yellow_ops),
        brokerlist_args=METRICS,
    )
    try:
        for name, handler in WORKERS.items():
            edge.start_worker(name, handler, METRICS)
        edge.processes["fight"] = TwistdProcess(
            "mmo-fight",
            ["--yellow", edge.yellow, "--handler", "mmo.examples.fight:TurnFight",
             "--instance-id", "fight-1", "--cap", "2", "--min-spare", "1",
             "--max-processes", "3", "--drain-timeout", "1", *METRICS],
            tmp,
            name="fight",
            env=edge.env,
        ).start()  # fmt: skip
        edge._start(
            "logs-1",
            "mmo-logs",
            ["--yellow", edge.yellow, "--dir", str(tmp / "logs"), "--instance-id", "logs-1",
             *METRICS],
            edge.env,
        )  # fmt: skip
        # A cluster supervisor with one worker of its own: what a rolling reload needs.
        supervised = tmp / "cluster.toml"
        supervised.write_text(
            f'[cluster]\nyellow = "{edge.yellow}"\nstop-timeout = 10.0\nmetrics = "127.0.0.1:0"\n'
            '[[cluster.process]]\nname = "roll"\nrole = "mmo-worker"\n'
            f'args = ["--yellow", "{edge.yellow}", "--handler", "{WORKERS["echo-1"]}", '
            '"--service", "rolled", "--metrics", "127.0.0.1:0"]\n'
        )
        edge._start("cluster", "mmo-cluster", ["--config", str(supervised)], edge.env)
        port = free_port()
        edge._start(
            "admin",
            "mmo-admin",
            ["--yellow", edge.yellow, "--listen", f"tcp:{port}:interface=127.0.0.1",
             "--poll", "0.5", "--target", yellow_ops, *METRICS],
            {**edge.env, "MMO_ADMIN_PASSWORD": PASSWORD},
        )  # fmt: skip
        edge.wait_ready()
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _answers(f"{url}/login"), 30, "the console's login page")
        yield Console(edge, url, shots)
    except BaseException:
        print(edge.logs())
        raise
    finally:
        edge.stop()


@pytest.fixture(scope="module")
def browser(console: Console) -> Iterator[Any]:
    """A headless Chromium (Debian's)."""
    with headless_chromium() as browser:
        yield browser


def log_in(console: Console, page: Any, password: str) -> None:
    """Fill the login form and send it."""
    page.fill("#name", "admin")
    page.fill("#password", password)
    with page.expect_navigation():
        page.click("#login-button")


@pytest.fixture(scope="module")
def page(console: Console, browser: Any) -> Iterator[Any]:
    """A page logged in as the demo admin; every confirm() it asks is accepted."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    page.on("dialog", lambda dialog: dialog.accept())
    page.on("request", lambda request: console.requests.append(request.url))
    page.on("pageerror", lambda error: console.errors.append(str(error)))
    page.on("console", lambda m: console.errors.append(m.text) if m.type == "error" else None)
    page.goto(f"{console.url}/login")
    log_in(console, page, PASSWORD)
    expect(page.locator("#whoami")).to_have_text("admin")
    try:
        yield page
    finally:
        context.close()


def row(page: Any, instance: str) -> Any:
    """The cluster table's row of ``instance``."""
    return page.locator(f'#processes tr[data-instance="{instance}"]')


def test_login_refuses_a_wrong_password_then_lets_the_admin_in(
    console: Console, browser: Any
) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        page = context.new_page()
        page.set_default_timeout(WAIT_MS)
        page.goto(console.url + "/")
        assert page.url == f"{console.url}/login"  # not logged in: sent to the login page
        page.fill("#name", "admin")
        page.fill("#password", "admin")
        console.shoot(page, "login")
        with page.expect_navigation():
            page.click("#login-button")
        expect(page.locator("#login-error")).to_have_text("Wrong name or password.")
        assert page.url == f"{console.url}/login"
        assert not [c for c in context.cookies() if c["name"] == "mmo_admin"]

        log_in(console, page, PASSWORD)
        assert page.url == f"{console.url}/"
        expect(page.locator("#whoami")).to_have_text("admin")
        (cookie,) = [c for c in context.cookies() if c["name"] == "mmo_admin"]
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        token = page.locator('meta[name="csrf-token"]').get_attribute("content")
        assert token and token != "{csrf}"

        with page.expect_navigation():
            page.click('#logout button[type="submit"]')
        assert page.url == f"{console.url}/login"
        assert not [c for c in context.cookies() if c["name"] == "mmo_admin"]
        assert page.request.get(f"{console.url}/api/state").status == 401
    finally:
        context.close()


def test_the_cluster_shows_brokers_and_workers_ready(console: Console, page: Any) -> None:
    for instance in ("broker-1", "broker-2", "echo-1", "echo-2", "sso", "chat", "session"):
        expect(row(page, instance).locator("td.health")).to_have_text("ready", timeout=WAIT_MS)
        expect(row(page, instance).locator("td.state")).to_have_text("serving")
    for instance in ("fight-1", "logs-1", "admin"):
        expect(row(page, instance).locator("td.health")).to_have_text("ready", timeout=WAIT_MS)
    expect(page.locator('#processes tr[data-role="yellow"] td.health')).to_have_text("ready")
    assert row(page, "broker-1").locator("td").nth(0).inner_text() == "broker"
    expect(page.locator("#summary")).to_contain_text("processes")
    expect(page.locator("#live")).to_have_class(re.compile(r"\bon\b"))


def test_a_chart_moves_while_a_player_sends_requests(console: Console, page: Any) -> None:
    stop = threading.Event()
    sent = [0]

    def send() -> None:
        client = RawClient(console.edge.ports[1])
        try:
            client.login("carol", "pw-carol")
            while not stop.is_set():
                client.request("echo.echo", {"n": sent[0]})
                sent[0] += 1
                time.sleep(0.005)
        finally:
            client.close()

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        page.wait_for_function(
            """() => {
                const s = window.mmoState && window.mmoState.series.echo;
                return s && s.length > 1 && s[s.length - 1][1] > 0;
            }""",
            timeout=WAIT_MS,
        )
        chart = page.locator("#chart-echo")
        expect(chart).to_be_visible()
        figures = chart.locator(".figures").inner_text()
        assert float(figures.split(" req/s")[0]) > 0, figures
        assert int(chart.get_attribute("data-points") or 0) > 1
        assert page.locator("#chart-echo polyline.rate").get_attribute("points")
        # The rows of the echo workers say what they served (the 7th cell: req/s).
        served = [
            float(row(page, name).locator("td").nth(6).inner_text() or 0)
            for name in ("echo-1", "echo-2")
        ]
        assert sum(served) > 0, served
        # A few more points, for the picture (the poll is 0.5 s).
        page.wait_for_function(
            "() => window.mmoState.series.echo.filter((p) => p[1] > 0).length >= 6",
            timeout=WAIT_MS,
        )
        page.evaluate("window.scrollTo(0, 0)")
        console.shoot(page, "cluster")
    finally:
        stop.set()
        sender.join(10)
    assert sent[0] > 0


@pytest.fixture(scope="module")
def bob(console: Console) -> Iterator[Player]:
    """A player on broker-1, in the chat room ``lobby``."""
    player = Player(console.edge.ports[0], "bob")

    def joined() -> bool:
        return player.reply(player.send("chat.join", {"room": "lobby"})).kind == PacketKind.RESPONSE

    try:
        wait_until(joined, 20, "bob in the lobby", interval=0.2)
        yield player
    finally:
        player.close()


def find(page: Any, user: str) -> Any:
    """Find ``user``'s sessions on the page; the first one's box."""
    page.fill("#player-user", user)
    page.click('#find-player button[type="submit"]')
    found = page.locator("#player-result .session[data-session]").first
    expect(found).to_be_visible()
    return found


def test_find_a_player_and_message_them(console: Console, page: Any, bob: Player) -> None:
    found = find(page, "bob")
    expect(found).to_contain_text("on broker-1")
    expect(found).to_contain_text("(online)")
    expect(found).to_contain_text("room:lobby")

    found.locator("form.push-player input").fill("the server restarts at noon")
    found.locator('form.push-player button[type="submit"]').click()
    assert bob.push("admin.message", timeout=10) == {"text": "the server restarts at noon"}
    expect(page.locator("#toast")).to_contain_text("done")

    # The room bob is in is listed, with its members.
    page.click("#refresh-rooms")
    lobby = page.locator('#rooms tr[data-channel="room:lobby"]')
    expect(lobby).to_be_visible()
    assert int(lobby.locator("td.num").inner_text()) >= 1
    lobby.locator("input").fill("lobby closes soon")
    lobby.locator('button[type="submit"]').click()
    assert bob.push("admin.message", timeout=10) == {"text": "lobby closes soon"}

    page.fill("#push-all-text", "hello everyone")
    page.click('#push-all button[type="submit"]')
    assert bob.push("admin.message", timeout=10) == {"text": "hello everyone"}

    page.fill("#player-user", "bob")
    page.click('#find-player button[type="submit"]')
    expect(found).to_be_visible()
    console.shoot(page.locator("#players"), "players")


def test_kick_a_player(console: Console, page: Any, bob: Player) -> None:
    found = find(page, "bob")
    session_id = found.get_attribute("data-session")
    found.locator("button.kick").click()
    bob.client.sock.settimeout(10)
    kick = bob.client.recv_until(PacketKind.KICK)
    assert kick.message == "kicked by an operator"
    assert bob.client.closed()
    expect(page.locator("#audit-lines")).to_contain_text("kick")
    expect(page.locator("#audit-lines")).to_contain_text(str(session_id))
    assert console.edge.processes["admin"].wait_for_log("mmo.admin.audit", 10)
    assert "admin admin: kick" in console.edge.processes["admin"].log_tail(400)


def test_drain_and_undrain_a_worker_and_a_broker(console: Console, page: Any) -> None:
    for instance in ("echo-1", "broker-2"):
        state = row(page, instance).locator("td.state")
        expect(state).to_have_text("serving")
        row(page, instance).locator("button.drain").click()
        expect(state).to_have_text("draining")
        expect(row(page, instance).locator("td.health")).to_contain_text("not ready")
        expect(row(page, instance).locator("button.drain")).to_have_text("Undrain")
        row(page, instance).locator("button.drain").click()
        expect(state).to_have_text("serving")
        expect(row(page, instance).locator("td.health")).to_have_text("ready")
    expect(page.locator("#audit-lines")).to_contain_text("drain")


def test_reload_a_service_from_the_page(console: Console, page: Any) -> None:
    """Reload (a cluster supervisor is registered): the supervised worker ``roll`` is
    replaced by ``roll.r1``; a service the supervisor does not run is refused, saying why."""
    expect(row(page, "roll").locator("td.health")).to_have_text("ready")
    errors = len(console.errors)
    row(page, "echo-1").locator("button.reload").click()
    expect(page.locator("#toast")).to_contain_text("no supervised mmo-worker or mmo-fight")
    # The browser reports the refusal (400) as a console error: this one is expected.
    refused = console.errors[errors:]
    assert len(refused) == 1 and "400 (Bad Request)" in refused[0], refused
    del console.errors[errors:]
    row(page, "roll").locator("button.reload").click()
    expect(row(page, "roll.r1").locator("td.health")).to_have_text("ready")
    expect(row(page, "roll").locator("td.state")).to_have_text("gone")
    expect(page.locator("#toast")).to_contain_text("done: Reload rolled")
    expect(page.locator("#audit-lines")).to_contain_text("reload")


def fight_processes(page: Any) -> dict[str, str]:
    """Refresh the fights section; its processes' states by instance, read in one go (the
    section is redrawn by every refresh)."""
    with page.expect_response(lambda response: "/api/fights" in response.url):
        page.click("#refresh-fights")
    return page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll("#fight-pools tr[data-process]")]
            .map((r) => [r.dataset.process, r.children[2].textContent]))"""
    )


def test_drain_a_fight_process(console: Console, page: Any) -> None:
    def ready(but: str | None = None) -> str | None:
        states = fight_processes(page)
        return next((p for p, state in states.items() if state == "ready" and p != but), None)

    process = wait_until(ready, 30, "a ready fight process", interval=0.5)
    page.locator(f'#fight-pools tr[data-process="{process}"] button.drain-fight').click()
    wait_until(
        lambda: fight_processes(page).get(process, "gone") in ("stopping", "gone"),
        30,
        f"{process} stopping or gone",
        interval=0.5,
    )
    # The pool keeps a spare: another process takes its place.
    wait_until(lambda: ready(but=process), 30, "a new spare", interval=0.5)
    expect(page.locator("#audit-lines")).to_contain_text("drain-fight")
    console.shoot(page.locator("#fights"), "fights")


def test_logs_are_shown_and_filtered(console: Console, page: Any) -> None:
    page.fill("#log-role", "broker")
    page.fill("#log-instance", "")
    page.click('#log-filter button[type="submit"]')

    def brokers_only() -> list[str] | None:
        lines = page.locator("#log-lines tr").all_inner_texts()
        return lines if lines and all(" broker/broker-" in ln for ln in lines) else None

    # The lines shown before the filter's answer came are every role's.
    wait_until(brokers_only, 20, "the brokers' log lines", interval=0.2)
    expect(page.locator("#log-note")).to_have_text(re.compile(r"^[1-9]\d* events$"))
    page.fill("#log-role", "")
    page.click('#log-filter button[type="submit"]')
    expect(page.locator("#log-note")).to_have_text(re.compile(r"^[1-9]\d* events$"))
    console.shoot_top(page, "#logs", "logs")
    console.shoot_top(page, "#audit", "audit")


def test_actions_need_the_csrf_token_and_the_cookie(console: Console, page: Any) -> None:
    body = json.dumps({"session_id": "no-such-session"})
    json_type = {"Content-Type": "application/json"}
    token = page.locator('meta[name="csrf-token"]').get_attribute("content")
    # The session's cookie without the token: refused.
    refused = page.request.post(f"{console.url}/api/kick", data=body, headers=json_type)
    assert refused.status == 403, refused.text()
    wrong = {**json_type, "X-CSRF-Token": "not-the-token"}
    assert page.request.post(f"{console.url}/api/kick", data=body, headers=wrong).status == 403
    # The token from another origin: refused.
    foreign = {**json_type, "X-CSRF-Token": token, "Origin": "http://evil.example"}
    assert page.request.post(f"{console.url}/api/kick", data=body, headers=foreign).status == 403
    # Both: taken (and answered: there is no such session).
    taken = page.request.post(
        f"{console.url}/api/kick", data=body, headers={**json_type, "X-CSRF-Token": token}
    )
    assert taken.status == 400 and "no-such-session" in taken.json()["error"], taken.text()

    # No cookie at all: 401, even with a token.
    for method, path, data in (
        ("POST", "/api/kick", body.encode()),
        ("POST", "/api/drain", b'{"service": "echo", "instance": "echo-1"}'),
        ("GET", "/api/state", None),
        ("GET", "/events", None),
    ):
        request = urllib.request.Request(
            console.url + path,
            data=data,
            method=method,
            headers={**json_type, "X-CSRF-Token": str(token)},
        )
        with pytest.raises(urllib.error.HTTPError) as refused_info:
            urllib.request.urlopen(request, timeout=5)
        assert refused_info.value.code == 401, (path, refused_info.value.code)

    # A login form posted from elsewhere (no login cookie and token): refused.
    login = urllib.request.Request(
        console.url + "/login",
        data=urllib.parse.urlencode({"name": "admin", "password": PASSWORD, "csrf": "x"}).encode(),
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as refused_info:
        urllib.request.urlopen(login, timeout=10)
    assert refused_info.value.code == 403
    assert b"The form expired" in refused_info.value.read()

    # Every page says what it may load: only from the console itself.
    response = page.request.get(f"{console.url}/")
    assert response.headers["content-security-policy"].startswith("default-src 'self'")
    assert response.headers["cache-control"] == "no-store"


def test_the_page_loads_only_from_the_console_and_has_no_error(console: Console, page: Any) -> None:
    expect(page.locator("#live")).to_have_class(re.compile(r"\bon\b"))
    assert console.requests and all(u.startswith(console.url + "/") for u in console.requests), [
        u for u in console.requests if not u.startswith(console.url + "/")
    ]
    assert console.errors == [], console.errors
