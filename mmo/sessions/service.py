"""``SessionService``: every client session's record, its lifecycle and its events.

A session is opened by a broker after a login, goes offline when its connection
drops (or its broker disappears from the registry), comes back online when the
client resumes it with its token (on any broker), and ends at logout or when it
stays offline longer than :attr:`SessionService.grace`. Each step is published
on the service's PUB socket (topics ``enter``, ``offline``, ``online``,
``leave``; payload ``{"session_id", "user_id", "broker", "reason"}``).

Records live in memory (one instance per cluster, as ``docs/edge.md`` says):
a record is deleted when its session leaves, so memory is bounded by the live
sessions plus those within their grace period. A record lives only while its
broker does: when the broker leaves the registry (or was never in it) its
sessions go offline, and end after their grace.

Only brokers call ``open``, ``resume``, ``refresh``, ``closed``, ``logout`` and
``track`` (:func:`~mmo.logic.callers`), and the broker a call is about is the
caller itself, never a value in the body. No method is a client route. A user
holds at most :attr:`Settings.max_sessions_per_user` sessions: by default a new
login replaces the old session (its connection is kicked, the record ends with
reason ``replaced``), as a game with one connection per account wants.

A session's resume token is signed (:mod:`mmo.data.tokens`, purpose ``"resume"``,
subject the session id) with the key the brokers share, so a broker turns away a
forged or expired token without asking; it expires after :attr:`SessionService.token_ttl`
(``refresh`` gives a new one) and is replaced at every resume (only the latest works).
Without a key (``$MMO_AUTH_KEY`` / ``$MMO_AUTH_KEY_FILE``) the service refuses to start,
unless ``MMO_DEMO=1``.

A broker's call about a session only acts when that broker still holds it: once a
session has moved to another broker (resume), late messages from the old one (its
``closed``, ``track`` or ``logout`` of the replaced connection) change nothing.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import task
from twisted.logger import Logger
from typing_extensions import override

from mmo.config import ConfigError
from mmo.data import tokens
from mmo.errors import BadRequest, MmoError
from mmo.logic import Context, ServiceHandler, callers, idempotent
from mmo.logic.sessions import BROKER_SERVICE, RESUME_PURPOSE
from mmo.registry import Change, Instance
from mmo.types import DelayedCall
from mmo.wire.gen.mmo.ttypes import ErrorCode, Session

__all__ = [
    "RESUME_PURPOSE",
    "ResumeFailed",
    "SessionRecord",
    "SessionService",
    "SessionSettings",
    "TooManySessions",
]

log = Logger()


#: Event reasons (the ``reason`` of an event's payload).
REASON_LOGIN = "login"
REASON_RESUMED = "resumed"
REASON_CLOSED = "closed"
REASON_BROKER_LOST = "broker lost"
REASON_LOGOUT = "logout"
REASON_EXPIRED = "expired"
REASON_REPLACED = "replaced"

#: The kick reason a previous connection gets when its session is resumed elsewhere.
KICK_REPLACED = "REPLACED"


class TooManySessions(MmoError):
    """The user holds as many sessions as allowed and the service refuses more
    (``when-full = "refuse"``); a ``RemoteError`` of that type to the broker."""

    code = ErrorCode.REMOTE


@dataclass(frozen=True)
class SessionSettings:
    """Settings of the session service (``[worker.settings]`` or ``--set NAME=VALUE``).

    Attributes:
        grace: seconds an offline session may be resumed before it ends.
        token_ttl: seconds a resume token is valid (a client refreshes it before then).
        max_sessions_per_user: sessions one user holds at once.
        when_full: at a login past ``max_sessions_per_user``: ``"replace"`` ends the
            user's oldest session (its connection gets a KICK), ``"refuse"`` fails the login.
        sweep_interval: seconds between checks that each online session's broker is
            still in the registry (a session whose broker is gone goes offline).
    """

    grace: float = 30.0
    token_ttl: float = 24 * 3600.0
    max_sessions_per_user: int = 1
    when_full: str = "replace"
    sweep_interval: float = 5.0

    def validate(self) -> None:
        """Check the values."""
        if self.grace < 0 or self.token_ttl < 0 or self.sweep_interval <= 0:
            raise ConfigError("grace", "grace and token-ttl >= 0, sweep-interval > 0 seconds")
        if self.max_sessions_per_user < 1:
            raise ConfigError("max-sessions-per-user", "must be at least 1")
        if self.when_full not in ("replace", "refuse"):
            raise ConfigError("when-full", f"must be replace or refuse, not {self.when_full!r}")


class ResumeFailed(MmoError):
    """The session cannot be resumed: unknown, expired (past its grace), or wrong token.

    It reaches the broker as a ``RemoteError`` whose ``type`` is ``"ResumeFailed"``.
    """

    code = ErrorCode.REMOTE


@dataclass(slots=True)
class SessionRecord:
    """What the service knows of one session.

    Attributes:
        session_id: the session's id (random, URL-safe).
        user_id: the user it belongs to.
        broker: the instance id of the broker that holds (or last held) it.
        token: the secret that resumes it (replaced at every resume).
        online: whether a connection holds it now.
        props: its properties (restored on resume).
        channels: the channels it is in (restored on resume).
        bindings: route prefix -> instance id it is bound to (restored on resume).
        timer: while offline, the call that ends it when the grace period is over.
    """

    session_id: str
    user_id: str
    broker: str
    token: str
    online: bool = True
    props: dict[str, Any] = field(default_factory=dict)
    channels: set[str] = field(default_factory=set)
    bindings: dict[str, str] = field(default_factory=dict)
    timer: DelayedCall | None = field(default=None, repr=False)

    def cancel_timer(self) -> None:
        """Stop the grace timer, if one runs."""
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None


def _text(method: str, name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise BadRequest(f"session.{method}: {name} must be a non-empty string")
    return value


def _broker(ctx: Context) -> str:
    # The broker a session is held by is the broker that called: never a body's word.
    return _text(ctx.method, "caller", ctx.caller)


def _user_id(method: str, value: Any) -> str:
    # Auth services may answer a numeric id; sessions carry it as a string.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return _text(method, "user_id", value)


def _map(method: str, name: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"session.{method}: {name} must be a map")
    return value


def _strings(method: str, name: str, value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequest(f"session.{method}: {name} must be a list of strings")
    return value


class SessionService(ServiceHandler):
    """The ``session`` service: open, resume, close, end and describe client sessions.

    Attributes:
        settings: a :class:`SessionSettings`.
        grace: seconds an offline session may be resumed before it ends.
        token_ttl: seconds a resume token is valid.
        key: the key resume tokens are signed with (:func:`mmo.data.tokens.load_key`).
        records: the sessions by id.
        counters: ``replaced`` (sessions ended by a newer login), ``refused`` (logins
            refused as one too many), ``orphaned`` (sessions whose broker was gone).
    """

    default_service = "session"
    Settings = SessionSettings
    settings: SessionSettings

    def __init__(self, runtime: Any) -> None:
        super().__init__(runtime)
        self.grace = self.settings.grace
        self.token_ttl = self.settings.token_ttl
        self.key = tokens.load_key()
        self.records: dict[str, SessionRecord] = {}
        self.counters = {"replaced": 0, "refused": 0, "orphaned": 0}
        # user id -> its session ids (a dict as an insertion-ordered set).
        self._by_user: dict[str, dict[str, None]] = {}
        self._sweeper: task.LoopingCall | None = None

    # -- lifecycle -------------------------------------------------------------

    @override
    def start(self) -> None:
        """Watch the registry, so that the sessions of a lost broker go offline, and
        sweep for sessions held by a broker the registry does not list."""
        directory = getattr(self.runtime, "directory", None)
        if directory is None:
            return
        directory.view.listen(self.registry_changed)
        self._sweeper = task.LoopingCall(self.sweep, directory.view)
        self._sweeper.clock = self.clock  # type: ignore[assignment]
        self._sweeper.start(self.settings.sweep_interval, now=False)

    @override
    def stop(self) -> None:
        """Cancel the timers (records live in memory and end with the process)."""
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()
        for record in self.records.values():
            record.cancel_timer()

    def sweep(self, view: Any) -> int:
        """Set offline every online session whose broker the registry does not list
        (a broker that died unseen, or never was); return how many. Done only while
        the registry view is complete (``view.warm``)."""
        if not view.warm:
            return 0
        live = view.instances.get(BROKER_SERVICE, {})
        orphans = [r for r in self.records.values() if r.online and r.broker not in live]
        for record in orphans:
            self._go_offline(record, REASON_BROKER_LOST)
        if orphans:
            self.counters["orphaned"] += len(orphans)
            log.warn(
                "sessions: {n} sessions held by brokers the registry does not list went offline",
                n=len(orphans),
            )
        return len(orphans)

    def registry_changed(self, change: int, instance: Instance, reason: str) -> None:
        """Registry listener: a broker that went DOWN (for any reason) loses its sessions."""
        if change == Change.DOWN and instance.service_name == BROKER_SERVICE:
            self.broker_lost(instance.instance_id)

    def broker_lost(self, broker: str) -> int:
        """Set every online session held by ``broker`` offline; return how many."""
        lost = [r for r in self.records.values() if r.online and r.broker == broker]
        for record in lost:
            self._go_offline(record, REASON_BROKER_LOST)
        if lost:
            log.info(
                "sessions: broker {broker} lost; {n} sessions offline", broker=broker, n=len(lost)
            )
        return len(lost)

    # -- service methods ---------------------------------------------------------

    @callers(BROKER_SERVICE)
    def on_open(
        self, ctx: Context, user_id: Any, props: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Open a session for ``user_id`` held by the calling broker; publish ``enter``.

        A user at :attr:`SessionSettings.max_sessions_per_user` loses their oldest
        session (``when_full = "replace"``: its connection is kicked, ``leave`` is
        published with reason ``replaced``) or is refused.

        Returns:
            ``{"session_id", "token", "token_ttl"}``; the token resumes the session.

        Raises:
            TooManySessions: the user is at the limit and ``when_full`` is ``refuse``.
        """
        user = _user_id("open", user_id)
        broker = _broker(ctx)
        props = dict(_map("open", "props", props))
        self._make_room(user)
        session_id = secrets.token_urlsafe(12)
        while session_id in self.records:
            session_id = secrets.token_urlsafe(12)
        record = SessionRecord(session_id, user, broker, self._token(session_id), props=props)
        self.records[session_id] = record
        self._by_user.setdefault(user, {})[session_id] = None
        self._event("enter", record, REASON_LOGIN)
        return {"session_id": session_id, "token": record.token, "token_ttl": self.token_ttl}

    @callers(BROKER_SERVICE)
    def on_resume(self, ctx: Context, session_id: str, token: str) -> dict[str, Any]:
        """Resume a session on the calling broker with its token; publish ``online``.

        The token is replaced (the old one no longer works). A connection still
        holding the session on another broker is kicked with ``REPLACED``.

        Returns:
            ``{"session_id", "user_id", "token", "token_ttl", "props", "channels",
            "bindings"}``: the new token and what the broker restores.

        Raises:
            ResumeFailed: unknown or expired session, a token that is not the
                session's latest, or one that is forged or expired.
        """
        broker = _broker(ctx)
        record = self._checked(session_id, token)
        if record.online and record.broker != broker:
            self.sessions.kick(Session(id=record.session_id, broker=record.broker), KICK_REPLACED)
        record.cancel_timer()
        record.online = True
        record.broker = broker
        record.token = self._token(record.session_id)
        self._event("online", record, REASON_RESUMED)
        return {
            "session_id": record.session_id,
            "user_id": record.user_id,
            "token": record.token,
            "token_ttl": self.token_ttl,
            "props": dict(record.props),
            "channels": sorted(record.channels),
            "bindings": dict(record.bindings),
        }

    @callers(BROKER_SERVICE)
    def on_refresh(self, ctx: Context, session_id: str) -> dict[str, Any]:
        """A new resume token for the session the calling broker holds online (the
        old one stops working): a client refreshes before :attr:`token_ttl` runs out.

        Returns:
            ``{"token", "token_ttl"}``.

        Raises:
            ResumeFailed: no such session online on this broker.
        """
        record = self._lookup(session_id)
        if record is None or not record.online or record.broker != ctx.caller:
            raise ResumeFailed("no such session online on this broker")
        record.token = self._token(record.session_id)
        return {"token": record.token, "token_ttl": self.token_ttl}

    @callers(BROKER_SERVICE)
    def on_closed(self, ctx: Context, session_id: str) -> None:
        """(one-way) The calling broker lost the session's connection: offline, publish
        ``offline``.

        The session ends after :attr:`grace` seconds unless resumed. Nothing happens
        if that broker no longer holds the session or it is already offline.
        """
        record = self._lookup(session_id)
        if record is not None and record.online and record.broker == ctx.caller:
            self._go_offline(record, REASON_CLOSED)

    @callers(BROKER_SERVICE)
    def on_logout(self, ctx: Context, session_id: str, reason: str = REASON_LOGOUT) -> bool:
        """End the session the calling broker holds at once; publish ``leave``.

        Args:
            reason: the ``leave`` event's reason (a broker ending a session that
                logic kicked may say so).

        Returns:
            Whether a session was ended (False: unknown, or held by another broker).
        """
        record = self._lookup(session_id)
        if record is None or record.broker != ctx.caller:
            return False
        self._end(record, str(reason) or REASON_LOGOUT)
        return True

    @callers(BROKER_SERVICE)
    def on_track(
        self,
        ctx: Context,
        session_id: str,
        joined: list[str] | None = None,
        left: list[str] | None = None,
        props: dict[str, Any] | None = None,
        bound: dict[str, str] | None = None,
        unbound: list[str] | None = None,
    ) -> None:
        """(one-way) Record what a resume restores, as told by the broker holding it.

        ``joined`` channels are added, then ``left`` ones removed; ``props`` are
        merged (a ``None`` value deletes the property); ``bound`` prefixes are set,
        then ``unbound`` ones removed. Ignored unless the calling broker holds it.
        """
        record = self._lookup(session_id)
        if record is None or record.broker != ctx.caller:
            return
        record.channels.update(_strings("track", "joined", joined))
        record.channels.difference_update(_strings("track", "left", left))
        for key, value in _map("track", "props", props).items():
            if value is None:
                record.props.pop(key, None)
            else:
                record.props[key] = value
        for prefix, instance_id in _map("track", "bound", bound).items():
            record.bindings[prefix] = _text("track", "bound instance", instance_id)
        for prefix in _strings("track", "unbound", unbound):
            record.bindings.pop(prefix, None)

    @idempotent
    def on_get(self, ctx: Context, session_id: str) -> dict[str, Any] | None:
        """The session's record, or None if there is no such session.

        Returns:
            ``{"user_id", "broker", "online", "props", "channels", "bindings"}``
            (never the token).
        """
        record = self._lookup(session_id)
        if record is None:
            return None
        return {
            "user_id": record.user_id,
            "broker": record.broker,
            "online": record.online,
            "props": dict(record.props),
            "channels": sorted(record.channels),
            "bindings": dict(record.bindings),
        }

    @idempotent
    def on_find(self, ctx: Context, user_id: Any) -> list[dict[str, Any]]:
        """The sessions of ``user_id``, oldest first: ``[{"session_id", "broker", "online"}]``."""
        user = _user_id("find", user_id)
        return [
            {"session_id": sid, "broker": record.broker, "online": record.online}
            for sid in self._by_user.get(user, {})
            for record in (self.records[sid],)
        ]

    # -- internals -------------------------------------------------------------

    def _make_room(self, user: str) -> None:
        """Before ``user`` opens one more session: end their oldest or refuse."""
        held = self._by_user.get(user)
        extra = len(held) - self.settings.max_sessions_per_user + 1 if held else 0
        if extra <= 0:
            return
        assert held is not None
        if self.settings.when_full == "refuse":
            self.counters["refused"] += 1
            log.info("sessions: {user} holds {n} sessions; login refused", user=user, n=len(held))
            raise TooManySessions(
                f"{user!r} already holds {len(held)} session(s), the most allowed"
            )
        for session_id in list(held)[:extra]:
            record = self.records[session_id]
            if record.online:
                self.sessions.kick(
                    Session(id=record.session_id, broker=record.broker),
                    "logged in elsewhere: this session was replaced by a newer login",
                )
            self.counters["replaced"] += 1
            if self.counters["replaced"] % 100 == 1:
                log.info(
                    "sessions: {user} logged in again: session {sid} on {broker} replaced"
                    " ({n} replaced so far)",
                    user=user,
                    sid=session_id,
                    broker=record.broker,
                    n=self.counters["replaced"],
                )
            self._end(record, REASON_REPLACED)

    def _lookup(self, session_id: Any) -> SessionRecord | None:
        return self.records.get(session_id) if isinstance(session_id, str) else None

    def _token(self, session_id: str) -> str:
        return tokens.issue(session_id, self.key, ttl=self.token_ttl, purpose=RESUME_PURPOSE)

    def _checked(self, session_id: Any, token: Any) -> SessionRecord:
        """The session ``token`` resumes: signed for it, unexpired, and its latest."""
        try:
            subject = tokens.verify(token, self.key, purpose=RESUME_PURPOSE)
        except tokens.TokenError as e:
            raise ResumeFailed(f"bad resume token: {e}") from None
        record = self._lookup(session_id)
        if (
            record is None
            or subject != session_id
            or not hmac.compare_digest(record.token.encode(), token.encode())
        ):
            raise ResumeFailed("unknown or expired session, or not its latest token")
        return record

    def _go_offline(self, record: SessionRecord, reason: str) -> None:
        record.online = False
        record.cancel_timer()
        record.timer = self.clock.callLater(self.grace, self._expired, record.session_id)
        self._event("offline", record, reason)

    def _expired(self, session_id: str) -> None:
        record = self._lookup(session_id)
        if record is not None and not record.online:
            record.timer = None
            self._end(record, REASON_EXPIRED)

    def _end(self, record: SessionRecord, reason: str) -> None:
        record.cancel_timer()
        del self.records[record.session_id]
        sessions = self._by_user.get(record.user_id)
        if sessions is not None:
            sessions.pop(record.session_id, None)
            if not sessions:
                del self._by_user[record.user_id]
        self._event("leave", record, reason)

    def _event(self, topic: str, record: SessionRecord, reason: str) -> None:
        self.publish(
            topic,
            {
                "session_id": record.session_id,
                "user_id": record.user_id,
                "broker": record.broker,
                "reason": reason,
            },
        )
