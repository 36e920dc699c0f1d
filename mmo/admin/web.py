"""The console's web side: login, the page, its live feed and the actions.

* ``GET /login``, ``POST /login`` (a form: ``name``, ``password``, ``csrf``), ``POST
  /logout``: an admin session in a cookie (``HttpOnly``, ``SameSite=Strict``, ``Secure``
  over TLS); a failed login waits as long as a good one and is logged.
* ``GET /``: the page (``static/console.html``, its scripts and styles under ``/static``,
  all served by the role itself: nothing comes from the network).
* ``GET /events``: Server-Sent Events, one ``state`` event per poll (what
  :class:`~mmo.admin.state.ClusterState` makes), the page's live feed.
* ``GET /api/state``, ``/api/player?user=``, ``/api/channels``, ``/api/fights``,
  ``/api/logs?role=&instance=&level=&trace=&limit=``, ``/api/audit``: JSON.
* ``POST /api/kick``, ``/api/push``, ``/api/drain``, ``/api/drain-fight`` (JSON bodies):
  the actions. Each needs the session's CSRF token in ``X-CSRF-Token`` (the page has it)
  and a same-origin ``Origin`` if the browser sends one; each is logged with the admin's
  name (namespace ``mmo.admin.audit``) and kept for the page's audit list.

Every page says ``Content-Security-Policy: default-src 'self'`` and is never cached.
"""

from __future__ import annotations

import json
import secrets
from collections import deque
from importlib import resources
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource, server

from mmo.admin.accounts import Accounts
from mmo.admin.state import ClusterState
from mmo.errors import MmoError
from mmo.logic.sessions import SESSION_SERVICE, Sessions
from mmo.wire import encode_value
from mmo.wire.gen.mmo.ttypes import Session

__all__ = ["Console"]

log = Logger()
audit = Logger(namespace="mmo.admin.audit")

COOKIE = b"mmo_admin"
LOGIN_COOKIE = b"mmo_admin_login"
HEADERS = {
    b"content-security-policy": b"default-src 'self'; frame-ancestors 'none'; form-action 'self'",
    b"x-content-type-options": b"nosniff",
    b"referrer-policy": b"no-referrer",
    b"cache-control": b"no-store",
}
#: The cluster supervisor's control endpoint (a rolling reload), and how long one may take.
CLUSTER_SERVICE = "cluster"
RELOAD_TIMEOUT = 300.0
#: The route of an admin's message to players, and what travels with it.
MESSAGE_ROUTE = "admin.message"
#: Failed logins from one address within :data:`LOGIN_WINDOW` seconds before it is made
#: to wait (a guess then costs the guesser the rest of the window, not only scrypt's time).
LOGIN_FAILURES = 10
LOGIN_WINDOW = 300.0


class AdminSession:
    """A logged-in admin: their name, the CSRF token of their session, its expiry."""

    def __init__(self, name: str, expires: float) -> None:
        self.name = name
        self.csrf = secrets.token_urlsafe(24)
        self.expires = expires


class _Static(resource.Resource):
    """The page's own scripts and styles (``/static/NAME``), from the package."""

    isLeaf = True
    types = {".js": b"text/javascript", ".css": b"text/css"}

    def render_GET(self, request: server.Request) -> bytes:
        name = request.path.rsplit(b"/", 1)[-1].decode("ascii", "replace")
        kind = self.types.get(name[name.rfind(".") :]) if "." in name else None
        if kind is None or not name.replace(".", "").replace("_", "").isalnum():
            request.setResponseCode(404)
            return b"not found"
        try:
            body = _page(name)
        except (FileNotFoundError, IsADirectoryError):
            request.setResponseCode(404)
            return b"not found"
        _secure_headers(request)
        request.setHeader(b"content-type", kind)
        return body


class ActionError(Exception):
    """An action that cannot be done as asked (a 400 with this message)."""


def _page(name: str) -> bytes:
    return resources.files("mmo.admin").joinpath("static", name).read_bytes()


def _secure_headers(request: server.Request) -> None:
    for key, value in HEADERS.items():
        request.setHeader(key, value)


def _json(request: server.Request, value: Any, code: int = 200) -> bytes:
    _secure_headers(request)
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(value, default=repr).encode() + b"\n"


class Console(resource.Resource):
    """The console's root resource.

    Args:
        state: the cluster as the console keeps it.
        directory: the console's directory (caller role ``admin``).
        accounts: the admins.
        secure: whether it is served over TLS (cookies are then ``Secure``).
        session_ttl: seconds an admin session lives unused.
    """

    def __init__(
        self,
        state: ClusterState,
        directory: Any,
        accounts: Accounts,
        *,
        secure: bool,
        session_ttl: float,
        instance_id: str,
    ) -> None:
        super().__init__()
        self.state = state
        self.directory = directory
        self.clock = directory.clock
        self.accounts = accounts
        self.secure = secure
        self.session_ttl = session_ttl
        self.players = Sessions(directory, instance_id)
        self.admins: dict[str, AdminSession] = {}
        self.audit: deque[dict[str, Any]] = deque(maxlen=200)
        self.failures: dict[str, deque[float]] = {}
        self.static = _Static()

    # -- routing ---------------------------------------------------------------

    def getChild(self, path: bytes, request: server.Request) -> resource.Resource:
        """Every path: the login and logout, the static files, else what needs an admin."""
        if path == b"static":
            return self.static
        return self

    def render(self, request: server.Request) -> Any:
        """Dispatch on the method and the path."""
        path = request.path.rstrip(b"/") or b"/"
        method = request.method
        if path == b"/login":
            return self._login_page(request) if method == b"GET" else self._login(request)
        admin = self._admin(request)
        if path == b"/logout" and method == b"POST":
            return self._logout(request, admin)
        if admin is None:
            if path != b"/":
                return _json(request, {"error": "not logged in"}, 401)
            request.redirect(b"/login")
            return b""
        if method == b"GET":
            return self._get(request, path, admin)
        if method == b"POST" and path.startswith(b"/api/"):
            return self._post(request, path, admin)
        return _json(request, {"error": "no such page"}, 404)

    def _admin(self, request: server.Request) -> AdminSession | None:
        sid = request.getCookie(COOKIE)
        admin = self.admins.get(sid.decode("latin-1")) if sid else None
        now = self.clock.seconds()
        if admin is None or admin.expires < now:
            return None
        admin.expires = now + self.session_ttl
        return admin

    def _cookie(self, request: server.Request, name: bytes, value: str, max_age: int) -> None:
        request.addCookie(
            name,
            value.encode(),
            path=b"/",
            max_age=str(max_age).encode(),
            httpOnly=True,
            secure=self.secure,
            sameSite=b"strict",
        )

    # -- login -----------------------------------------------------------------

    def _login_page(self, request: server.Request, error: str = "") -> bytes:
        # One token per browser while it lasts: a second page (another tab, a reload)
        # does not make the first one's form stale.
        known = request.getCookie(LOGIN_COOKIE)
        token = known.decode() if known and len(known) == 32 else secrets.token_urlsafe(24)
        self._cookie(request, LOGIN_COOKIE, token, 600)
        _secure_headers(request)
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        page = _page("login.html").decode()
        return page.replace("{csrf}", token).replace("{error}", error).encode()

    def _login(self, request: server.Request) -> Any:
        args = request.args
        name = (args.get(b"name") or [b""])[0].decode("utf-8", "replace")
        password = (args.get(b"password") or [b""])[0].decode("utf-8", "replace")
        token = (args.get(b"csrf") or [b""])[0]
        expected = request.getCookie(LOGIN_COOKIE)
        if not expected or not secrets.compare_digest(token, expected):
            request.setResponseCode(403)
            return self._login_page(request, "The form expired: try again.")
        peer = _peer(request)
        now = self.clock.seconds()
        failed = self.failures.get(peer)
        while failed and failed[0] < now - LOGIN_WINDOW:
            failed.popleft()
        if failed is not None and len(failed) >= LOGIN_FAILURES:
            log.warn("admin: login from {peer} refused: too many failures", peer=peer)
            request.setResponseCode(429)
            return self._login_page(request, "Too many failed logins: wait a few minutes.")

        def checked(ok: bool) -> None:
            if ok:
                sid = secrets.token_urlsafe(32)
                self.admins[sid] = AdminSession(name, self.clock.seconds() + self.session_ttl)
                self._cookie(request, COOKIE, sid, int(self.session_ttl))
                audit.info("admin {admin} logged in from {peer}", admin=name, peer=_peer(request))
                request.redirect(b"/")
                request.finish()
                return
            log.warn("admin: failed login as {name!r} from {peer}", name=name, peer=peer)
            self.failures.setdefault(peer, deque()).append(self.clock.seconds())
            request.setResponseCode(401)
            request.write(self._login_page(request, "Wrong name or password."))
            request.finish()

        self.accounts.check(name, password).addCallback(checked)
        return server.NOT_DONE_YET

    def _logout(self, request: server.Request, admin: AdminSession | None) -> bytes:
        if admin is not None and self._csrf_ok(request, admin):
            for sid, known in list(self.admins.items()):
                if known is admin:
                    del self.admins[sid]
            audit.info("admin {admin} logged out", admin=admin.name)
        self._cookie(request, COOKIE, "", 0)
        request.redirect(b"/login")
        return b""

    def _csrf_ok(self, request: server.Request, admin: AdminSession) -> bool:
        token = request.getHeader(b"x-csrf-token") or (request.args.get(b"csrf") or [b""])[0]
        if isinstance(token, str):
            token = token.encode()
        if not token or not secrets.compare_digest(token, admin.csrf.encode()):
            return False
        origin = request.getHeader(b"origin")
        host = request.getHeader(b"host")
        if origin is not None and host is not None:
            scheme = b"https" if self.secure else b"http"
            return origin == scheme + b"://" + host
        return True

    # -- reading -----------------------------------------------------------------

    def _get(self, request: server.Request, path: bytes, admin: AdminSession) -> Any:
        if path == b"/":
            _secure_headers(request)
            request.setHeader(b"content-type", b"text/html; charset=utf-8")
            page = _page("console.html").decode()
            return page.replace("{csrf}", admin.csrf).replace("{admin}", admin.name).encode()
        if path == b"/events":
            return self._events(request)
        if path == b"/api/state":
            return _json(request, self.state.state or {"processes": [], "series": {}})
        if path == b"/api/audit":
            return _json(request, list(self.audit))
        readers = {
            b"/api/player": self._player,
            b"/api/channels": self._channels,
            b"/api/fights": self._fights,
            b"/api/logs": self._logs,
        }
        reader = readers.get(path)
        if reader is None:
            return _json(request, {"error": "no such page"}, 404)
        args = {k.decode(): v[0].decode("utf-8", "replace") for k, v in request.args.items()}
        return self._answer(request, defer.maybeDeferred(reader, args))

    def _answer(self, request: server.Request, d: defer.Deferred[Any]) -> Any:
        def done(value: Any) -> None:
            if not request.finished and not getattr(request, "_disconnected", False):
                request.write(_json(request, value))
                request.finish()

        def failed(failure: Any) -> None:
            error = failure.value
            code = 400 if isinstance(error, ActionError | MmoError) else 500
            if code == 500:
                log.failure("admin: request failed", failure)
            message = str(error) if code == 400 else "internal error (logged)"
            done_error = {"error": f"{type(error).__name__}: {message}"}
            if not request.finished and not getattr(request, "_disconnected", False):
                request.write(_json(request, done_error, code))
                request.finish()

        d.addCallbacks(done, failed)
        return server.NOT_DONE_YET

    def _events(self, request: server.Request) -> Any:
        _secure_headers(request)
        request.setHeader(b"content-type", b"text/event-stream")

        def send(state: dict[str, Any]) -> None:
            request.write(b"event: state\ndata: " + json.dumps(state).encode() + b"\n\n")

        if self.state.state is not None:
            send(self.state.state)
        else:
            request.write(b": waiting for the first reads\n\n")
        self.state.listeners.append(send)
        request.notifyFinish().addBoth(lambda _: self.state.listeners.remove(send))
        return server.NOT_DONE_YET

    @defer.inlineCallbacks
    def _player(self, args: dict[str, str]) -> Any:
        user = args.get("user", "").strip()
        if not user:
            raise ActionError("say whose sessions (user)")
        found = yield self.directory.call(SESSION_SERVICE, "find", {"user_id": user})
        return {"user": user, "sessions": found}

    def _channels(self, args: dict[str, str]) -> Any:
        return self.directory.call(SESSION_SERVICE, "channels", {"prefix": args.get("prefix", "")})

    @defer.inlineCallbacks
    def _fights(self, args: dict[str, str]) -> Any:
        pools = {}
        view = self.directory.view
        for service, instances in sorted(view.instances.items()):
            for iid, instance in sorted(instances.items()):
                if "fight_handler" in (instance.meta or {}):
                    status = yield self.directory.call(service, "status", instance=iid)
                    pools[f"{service}/{iid}"] = {"service": service, "instance": iid, **status}
        return pools

    @defer.inlineCallbacks
    def _logs(self, args: dict[str, str]) -> Any:
        limit = args.get("limit") or "200"
        if not limit.isdigit():
            raise ActionError("limit: a count of events")
        query: dict[str, Any] = {"limit": min(int(limit), 1000)}
        for key in ("role", "instance", "level", "trace", "since"):
            if args.get(key):
                query[key] = args[key]
        collectors = self.directory.view.get("logs")
        if not collectors:
            return {"collector": False, "events": []}
        events: list[dict[str, Any]] = []
        for instance in collectors:
            answer = yield self.directory.call(
                "logs", "query", query, instance=instance.instance_id
            )
            events.extend(answer.get("events") or [])
        events.sort(key=lambda e: (e.get("time") or "", e.get("seq") or 0))
        return {"collector": True, "events": events[-query["limit"] :]}

    # -- actions -----------------------------------------------------------------

    def _post(self, request: server.Request, path: bytes, admin: AdminSession) -> Any:
        if not self._csrf_ok(request, admin):
            log.warn(
                "admin: {admin}'s {path} refused: no CSRF token",
                admin=admin.name,
                path=path.decode(),
            )
            return _json(request, {"error": "refused: missing or wrong CSRF token"}, 403)
        try:
            body = json.loads((request.content.read() if request.content else b"") or b"{}")
            if not isinstance(body, dict):
                raise ValueError("a JSON object, please")
        except ValueError as e:
            return _json(request, {"error": f"bad body: {e}"}, 400)
        actions = {
            b"/api/kick": self._kick,
            b"/api/push": self._push,
            b"/api/drain": self._drain,
            b"/api/drain-fight": self._drain_fight,
            b"/api/reload": self._reload,
        }
        action = actions.get(path)
        if action is None:
            return _json(request, {"error": "no such action"}, 404)
        d = defer.maybeDeferred(action, body)
        d.addBoth(self._audited, admin, path.decode().rsplit("/", 1)[1], body)
        return self._answer(request, d)

    def _audited(self, outcome: Any, admin: AdminSession, action: str, body: Any) -> Any:
        """Keep and log what an admin did and how it went (a failure too)."""
        result = f"failed: {outcome.value}" if isinstance(outcome, Failure) else outcome
        entry = {
            "time": self.clock.seconds(),
            "admin": admin.name,
            "action": action,
            "what": body,
            "result": result,
        }
        self.audit.append(entry)
        audit.info(
            "admin {admin}: {action} {what}: {result}",
            admin=admin.name,
            action=action,
            what=json.dumps(body, sort_keys=True),
            result=json.dumps(result, default=repr),
        )
        return outcome

    @defer.inlineCallbacks
    def _session(self, session_id: str) -> Any:
        record = yield self.directory.call(SESSION_SERVICE, "get", {"session_id": session_id})
        if record is None:
            raise ActionError(f"no session {session_id!r}")
        return Session(id=session_id, user_id=record["user_id"], broker=record["broker"])

    @defer.inlineCallbacks
    def _kick(self, body: dict[str, Any]) -> Any:
        session = yield self._session(str(body.get("session_id") or ""))
        reason = str(body.get("reason") or "kicked by an operator")
        return {"kicked": self.players.kick(session, reason), "session_id": session.id}

    @defer.inlineCallbacks
    def _push(self, body: dict[str, Any]) -> Any:
        to = body.get("to")
        text = str(body.get("text") or "").strip()
        if not text:
            raise ActionError("say what (text)")
        message = {"text": text}
        if to == "session":
            session = yield self._session(str(body.get("session_id") or ""))
            return {"delivered_to": self.players.push(session, MESSAGE_ROUTE, message)}
        if to == "room":
            room = str(body.get("room") or "").strip()
            if not room:
                raise ActionError("say which room")
            return {"brokers": self.players.broadcast(room, MESSAGE_ROUTE, message)}
        if to == "all":
            return {"brokers": self.players.push_all(MESSAGE_ROUTE, message)}
        raise ActionError("to: session, room or all")

    @defer.inlineCallbacks
    def _drain(self, body: dict[str, Any]) -> Any:
        service, instance = str(body.get("service") or ""), str(body.get("instance") or "")
        draining = _flag(body, "draining")
        if not service or not instance:
            raise ActionError("say which service and instance")
        if service == "broker":
            sent = self.directory.send(
                "broker", "drain", encode_value({"draining": draining}), instance=instance
            )
            if sent is None:
                raise ActionError(f"no live broker {instance!r}")
            return {"instance": instance, "draining": draining}
        answer = yield self.directory.call(
            service, "ops_drain", {"draining": draining}, instance=instance
        )
        return answer

    def _drain_fight(self, body: dict[str, Any]) -> Any:
        service, pool = str(body.get("service") or ""), str(body.get("pool") or "")
        process = str(body.get("process") or "")
        if not service or not process:
            raise ActionError("say which pool and process")
        return self.directory.call(
            service,
            "drain_process",
            {"instance": process, "draining": _flag(body, "draining")},
            instance=pool or None,
        )

    def _reload(self, body: dict[str, Any]) -> Any:
        service, batch = str(body.get("service") or ""), body.get("batch", 1)
        if not service:
            raise ActionError("say which service")
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ActionError("batch: a whole number, at least 1")
        if not self.directory.view.get(CLUSTER_SERVICE):
            raise ActionError(
                "no cluster supervisor in the registry: a rolling reload is mmo-cluster's "
                "(with [cluster] yellow set)"
            )
        return self.directory.call(
            CLUSTER_SERVICE,
            "reload",
            {"service": service, "batch": batch},
            timeout=RELOAD_TIMEOUT,
        )


def _flag(body: dict[str, Any], name: str, default: bool = True) -> bool:
    """``body[name]``, a JSON true or false (a string is refused, not read as true)."""
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise ActionError(f"{name}: true or false")
    return value


def _peer(request: server.Request) -> str:
    peer = request.getClientAddress()
    return str(getattr(peer, "host", peer))
