"""The admin console's security and actions, in process: accounts, login, cookies, CSRF,
and what each action asks of the cluster (a fake directory stands in for it)."""

from __future__ import annotations

import http.cookiejar
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import pytest
import pytest_twisted  # type: ignore[import-untyped]
from twisted.internet import defer, reactor, threads
from twisted.web import server

from mmo.admin import accounts as accounts_module
from mmo.admin.accounts import ACCOUNTS_ENV, Accounts, hash_password
from mmo.admin.web import Console
from mmo.config import ConfigError
from mmo.testing.directory import FakeDirectory
from mmo.wire import decode_value

# Cheap hashes for tests (the real cost is set in mmo.admin.accounts).
FAST = {"n": 2**4, "r": 8, "p": 1}


@pytest.fixture(autouse=True)
def cheap_scrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accounts_module, "N", 2**4)


def test_a_hash_checks_its_password_only(monkeypatch: pytest.MonkeyPatch) -> None:
    stored = hash_password("correct horse", **FAST)
    assert stored.startswith("scrypt$16$8$1$") and "correct" not in stored
    assert stored != hash_password("correct horse", **FAST)  # salted
    assert accounts_module._check(stored, "correct horse")
    assert not accounts_module._check(stored, "wrong horse")


def test_accounts_come_from_a_file_and_the_environment(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "admins"
    path.write_text(f"# operators\nann:{hash_password('pw-ann-1', **FAST)}\n\n")
    monkeypatch.setenv(ACCOUNTS_ENV, f"bob:{hash_password('pw-bob-1', **FAST)}")
    accounts = Accounts.load(str(path), demo=False)
    assert set(accounts.hashes) == {"ann", "bob"}


def test_no_account_is_refused_outside_demo_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ACCOUNTS_ENV, raising=False)
    with pytest.raises(ConfigError, match="no admin account"):
        Accounts.load(None, demo=False)
    assert set(Accounts.load(None, demo=True).hashes) == {"admin"}


@pytest.mark.parametrize(
    "line", ["ann", "ann:plain", "ann:scrypt$1$2$3$!!$xx", ":scrypt$1$1$1$a$b"]
)
def test_malformed_account_lines_are_refused(monkeypatch: pytest.MonkeyPatch, line: str) -> None:
    monkeypatch.setenv(ACCOUNTS_ENV, line)
    with pytest.raises(ConfigError):
        Accounts.load(None, demo=True)


class FakeState:
    """Stands in for ClusterState: a fixed state, listeners kept."""

    def __init__(self) -> None:
        self.state = {"time": 1.0, "cluster": {}, "processes": [], "services": [], "series": {}}
        self.listeners: list[Any] = []


class Browser:
    """A cookie-keeping HTTP client in a thread (the site runs on the test's reactor)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self.jar), _NoRedirect()
        )

    def _open(self, path: str, data: bytes | None, headers: dict[str, str]) -> Any:
        request = urllib.request.Request(self.base + path, data=data, headers=headers)
        try:
            with self.opener.open(request, timeout=10) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def get(self, path: str) -> defer.Deferred[Any]:
        return threads.deferToThread(self._open, path, None, {})

    def post(self, path: str, body: Any, **headers: str) -> defer.Deferred[Any]:
        if isinstance(body, dict) and path == "/login":
            data = urllib.parse.urlencode(body).encode()
        else:
            data = json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        return threads.deferToThread(self._open, path, data, headers)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


@pytest.fixture
def console(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv(ACCOUNTS_ENV, f"ann:{hash_password('pw-ann-1', **FAST)}")
    directory = FakeDirectory(reactor, caller_role="admin")
    directory.register("broker", "broker-1")
    site = server.Site(
        Console(
            FakeState(),  # type: ignore[arg-type]
            directory,
            Accounts.load(None, demo=False),
            secure=False,
            session_ttl=60.0,
            instance_id="admin-1",
        )
    )
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    yield directory, Browser(f"http://127.0.0.1:{port.getHost().port}")
    port.stopListening()


def form_token(page: bytes) -> str:
    return page.decode().split('name="csrf" value="')[1].split('"')[0]


@defer.inlineCallbacks
def logged_in(browser: Browser) -> Any:
    """Log ``ann`` in; the page's CSRF token."""
    _, _, page = yield browser.get("/login")
    status, _headers, _ = yield browser.post(
        "/login", {"name": "ann", "password": "pw-ann-1", "csrf": form_token(page)}
    )
    assert status == 302, status
    _, _, page = yield browser.get("/")
    return page.decode().split('name="csrf-token" content="')[1].split('"')[0]


@pytest_twisted.inlineCallbacks
def test_login_sets_a_strict_httponly_cookie_and_a_wrong_password_is_refused(
    console: Any,
) -> Any:
    _, browser = console
    status, headers, _ = yield browser.get("/")
    assert status == 302 and headers["Location"] == "/login"
    assert (yield browser.get("/api/state"))[0] == 401
    _, headers, page = yield browser.get("/login")
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    token = form_token(page)
    status, _, page = yield browser.post(
        "/login", {"name": "ann", "password": "nope", "csrf": token}
    )
    assert status == 401 and b"Wrong name or password" in page
    status, _, _ = yield browser.post(
        "/login", {"name": "ann", "password": "pw-ann-1", "csrf": "forged"}
    )
    assert status == 403  # the login form's own CSRF token
    status, headers, _ = yield browser.post(
        "/login", {"name": "ann", "password": "pw-ann-1", "csrf": token}
    )
    assert status == 302
    cookie = headers["Set-Cookie"]
    assert "mmo_admin=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert "Secure" not in cookie  # over plain HTTP; Secure over TLS
    status, _, body = yield browser.get("/api/state")
    assert status == 200 and json.loads(body)["processes"] == []


@pytest_twisted.inlineCallbacks
def test_actions_need_the_csrf_token_and_a_same_origin(console: Any) -> Any:
    directory, browser = console
    token = yield logged_in(browser)
    directory.reply("session", "get", {"user_id": "bob", "broker": "broker-1"})
    kick = {"session_id": "s-1"}
    assert (yield browser.post("/api/kick", kick))[0] == 403
    assert (yield browser.post("/api/kick", kick, **{"X-CSRF-Token": "forged"}))[0] == 403
    evil = {"X-CSRF-Token": token, "Origin": "http://evil.example"}
    assert (yield browser.post("/api/kick", kick, **evil))[0] == 403
    assert directory.sent == []
    status, _, body = yield browser.post("/api/kick", kick, **{"X-CSRF-Token": token})
    assert status == 200 and json.loads(body) == {"kicked": True, "session_id": "s-1"}
    (sent,) = directory.sent
    assert (sent.service, sent.method, sent.instance) == ("broker", "kick", "broker-1")
    assert sent.header["targets"] == ["s-1"]
    _, _, body = yield browser.get("/api/audit")
    (entry,) = json.loads(body)
    assert (entry["admin"], entry["action"], entry["what"]) == ("ann", "kick", kick)


@pytest_twisted.inlineCallbacks
def test_push_and_drain_ask_the_cluster(console: Any) -> Any:
    directory, browser = console
    token = yield logged_in(browser)
    csrf = {"X-CSRF-Token": token}
    status, _, body = yield browser.post("/api/push", {"to": "all", "text": "restart in 5"}, **csrf)
    assert status == 200
    assert [(s.method, decode_value(s.body)) for s in directory.sent][-1][1]["text"] == (
        "restart in 5"
    )
    status, _, body = yield browser.post("/api/push", {"to": "moon", "text": "x"}, **csrf)
    assert status == 400 and "to: session, room or all" in json.loads(body)["error"]
    directory.reply("echo", "ops_drain", {"instance": "echo-1", "draining": True})
    drain = {"service": "echo", "instance": "echo-1", "draining": True}
    status, _, body = yield browser.post("/api/drain", drain, **csrf)
    assert status == 200 and json.loads(body)["draining"] is True
    (call,) = [c for c in directory.calls if c.method == "ops_drain"]
    assert (call.instance, call.kwargs) == ("echo-1", {"draining": True})
    status, _, body = yield browser.post(
        "/api/drain", {"service": "broker", "instance": "broker-1"}, **csrf
    )
    assert status == 200
    drained = directory.sent[-1]
    assert (drained.method, decode_value(drained.body)) == ("drain", {"draining": True})


@pytest_twisted.inlineCallbacks
def test_bad_input_is_a_clear_400_and_failed_actions_are_audited(console: Any) -> Any:
    directory, browser = console
    token = yield logged_in(browser)
    csrf = {"X-CSRF-Token": token}
    status, _, body = yield browser.get("/api/logs?limit=abc")
    assert status == 400 and "limit" in json.loads(body)["error"]
    drain = {"service": "echo", "instance": "echo-1", "draining": "false"}
    status, _, body = yield browser.post("/api/drain", drain, **csrf)
    assert status == 400 and "draining: true or false" in json.loads(body)["error"]
    assert not [c for c in directory.calls if c.method == "ops_drain"]
    _, _, body = yield browser.get("/api/audit")
    (entry,) = json.loads(body)
    assert entry["action"] == "drain" and entry["result"].startswith("failed: ")


@pytest_twisted.inlineCallbacks
def test_an_address_guessing_passwords_is_made_to_wait(
    console: Any, monkeypatch: pytest.MonkeyPatch
) -> Any:
    from mmo.admin import web

    monkeypatch.setattr(web, "LOGIN_FAILURES", 3)
    _, browser = console
    _, _, page = yield browser.get("/login")
    guess = {"name": "ann", "password": "guess", "csrf": form_token(page)}
    for _ in range(3):
        assert (yield browser.post("/login", guess))[0] == 401
    status, _, page = yield browser.post("/login", {**guess, "password": "pw-ann-1"})
    assert status == 429 and b"Too many failed logins" in page
