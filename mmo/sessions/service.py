"""``SessionService``: every client session's record, its lifecycle and its events.

A session is opened by a broker after a login, goes offline when its connection
drops (or its broker disappears from the registry), comes back online when the
client resumes it with its token (on any broker), and ends at logout or when it
stays offline longer than :attr:`SessionService.grace`. Each step is published
on the service's PUB socket (topics ``enter``, ``offline``, ``online``,
``leave``; payload ``{"session_id", "user_id", "broker", "reason"}``).

Records live in the cache (:class:`~mmo.sessions.store.SessionStore`): the worker's
``--cache`` (Redis, shared: run several instances, any answers for any session, and
one killed loses nothing), else an in-process cache of the instance's own (the
embedded default: one instance). A record is deleted when its session leaves, so the
cache holds the live sessions plus those within their grace period. A record lives
only while its broker does: when the broker leaves the registry (or was never in it)
its sessions go offline, and end after their grace. Each event is published by one
instance only (the store's claims decide which).

Only brokers call ``open``, ``resume``, ``refresh``, ``closed``, ``logout`` and
``track`` (:func:`~mmo.logic.callers`), and the broker a call is about is the
caller itself, never a value in the body; only operators (the admin console, the
``mmo`` tool: :data:`~mmo.logic.OPERATOR_ROLES`) call ``channels`` (each channel
with its members); ``get`` and ``find`` (what an admin page shows of a session:
broker, channels, bindings, props, since when) are any member's. No method is a
client route. A user holds at most :attr:`Settings.max_sessions_per_user`
sessions: by default a new login replaces the old session (its connection is
kicked, the record ends with reason ``replaced``), as a game with one connection
per account wants.

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
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, task
from twisted.logger import Logger
from typing_extensions import override

from mmo.config import ConfigError
from mmo.data import tokens
from mmo.data.memory import MemoryCache
from mmo.errors import BadRequest, MmoError
from mmo.logic import OPERATOR_ROLES, Context, ServiceHandler, callers, idempotent
from mmo.logic.sessions import BROKER_SERVICE, RESUME_PURPOSE
from mmo.registry import Change, Instance
from mmo.sessions.store import SessionStore, StoredSession
from mmo.types import DelayedCall
from mmo.wire.gen.mmo.ttypes import ErrorCode, Session

__all__ = [
    "RESUME_PURPOSE",
    "ResumeFailed",
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


def _described(record: StoredSession) -> dict[str, Any]:
    """A session as ``get`` and ``find`` answer it (never its token)."""
    return {
        "session_id": record.session_id,
        "user_id": record.user_id,
        "broker": record.broker,
        "online": record.online,
        "since": record.created,
        "offline_until": record.deadline,
        "props": record.props,
        "channels": sorted(record.channels),
        "bindings": record.bindings,
    }


class SessionService(ServiceHandler):
    """The ``session`` service: open, resume, close, end and describe client sessions.

    Every method reads and writes the records in :attr:`store`; several instances sharing
    one cache serve the same sessions.

    Attributes:
        settings: a :class:`SessionSettings`.
        grace: seconds an offline session may be resumed before it ends.
        token_ttl: seconds a resume token is valid.
        key: the key resume tokens are signed with (:func:`mmo.data.tokens.load_key`).
        store: the records (:class:`~mmo.sessions.store.SessionStore`).
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
        # Without a cache of the worker's, the embedded default: the records in this
        # process (one instance).
        cache = self.cache if self.cache is not None else MemoryCache.started(self.clock)
        if not cache.shared:
            log.info("sessions: records in this process's cache: run one session instance")
        self.store = SessionStore(cache)
        self.counters = {"replaced": 0, "refused": 0, "orphaned": 0}
        # session id -> the call that ends it when its grace is over (in the instance
        # that took it offline; the sweep of any instance ends it otherwise).
        self._timers: dict[str, DelayedCall] = {}
        self._sweeper: task.LoopingCall | None = None

    # -- lifecycle -------------------------------------------------------------

    @override
    def start(self) -> None:
        """Watch the registry, so that the sessions of a lost broker go offline, and
        sweep for sessions held by a broker the registry does not list and for sessions
        whose grace ended unseen (their instance died)."""
        directory = getattr(self.runtime, "directory", None)
        if directory is None:
            return
        directory.view.listen(self.registry_changed)
        self._sweeper = task.LoopingCall(self._sweep_logged, directory.view)
        self._sweeper.clock = self.clock  # type: ignore[assignment]
        self._sweeper.start(self.settings.sweep_interval, now=False)

    @override
    def stop(self) -> None:
        """Cancel the timers (the records stay in the cache)."""
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers.clear()

    def _sweep_logged(self, view: Any) -> defer.Deferred[Any]:
        return self.sweep(view).addErrback(lambda f: log.failure("sessions: sweep failed", f))

    @defer.inlineCallbacks
    def sweep(self, view: Any) -> Any:
        """Set offline every online session whose broker the registry does not list
        (a broker that died unseen, or never was), and end every session whose grace
        is over; fire with how many went offline. Done only while the registry view is
        complete (``view.warm``)."""
        if not view.warm:
            return 0
        live = view.instances.get(BROKER_SERVICE, {})
        orphaned = 0
        for broker in (yield self.store.brokers()) - set(live):
            orphaned += yield self.broker_lost(broker)
            if not (yield self.store.online_at(broker)):
                yield self.store.forget_broker(broker)
        if orphaned:
            self.counters["orphaned"] += orphaned
            log.warn(
                "sessions: {n} sessions held by brokers the registry does not list went offline",
                n=orphaned,
            )
        for session_id in (yield self.store.overdue(self.clock.seconds())):
            yield self._expired(session_id)
        return orphaned

    def registry_changed(self, change: int, instance: Instance, reason: str) -> None:
        """Registry listener: a broker that went DOWN (for any reason) loses its sessions."""
        if change == Change.DOWN and instance.service_name == BROKER_SERVICE:
            self.broker_lost(instance.instance_id).addErrback(
                lambda f: log.failure("sessions: broker {b} lost", f, b=instance.instance_id)
            )

    @defer.inlineCallbacks
    def broker_lost(self, broker: str) -> Any:
        """Set every online session held by ``broker`` offline; fire with how many (this
        instance did: the others, told the same, did the rest)."""
        lost = 0
        for session_id in (yield self.store.online_at(broker)):
            record = yield self.store.get(session_id)
            if record is not None and (yield self._go_offline(record, REASON_BROKER_LOST)):
                lost += 1
        if lost:
            log.info("sessions: broker {broker} lost; {n} sessions offline", broker=broker, n=lost)
        return lost

    # -- service methods ---------------------------------------------------------

    @callers(BROKER_SERVICE)
    @defer.inlineCallbacks
    def on_open(self, ctx: Context, user_id: Any, props: dict[str, Any] | None = None) -> Any:
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
        # 96 random bits: a collision is not worth a round trip to rule out.
        session_id = secrets.token_urlsafe(12)
        token = self._token(session_id)
        yield self.store.create(session_id, user, broker, token, self.clock.seconds(), props)
        # Counted after the session is stored, so that logins at once on two instances
        # see each other.
        yield self._make_room(user, session_id, broker)
        self._event("enter", session_id, user, broker, REASON_LOGIN)
        return {"session_id": session_id, "token": token, "token_ttl": self.token_ttl}

    @callers(BROKER_SERVICE)
    @defer.inlineCallbacks
    def on_resume(self, ctx: Context, session_id: str, token: str) -> Any:
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
        record = yield self._checked(session_id, token)
        if record.online and record.broker != broker:
            self.sessions.kick(Session(id=record.session_id, broker=record.broker), KICK_REPLACED)
        new_token = self._token(record.session_id)
        yield self.store.bring_online(record.session_id, record.broker, broker, new_token)
        self._cancel_timer(record.session_id)
        whole = yield self.store.get(record.session_id, whole=True)
        self._event("online", record.session_id, record.user_id, broker, REASON_RESUMED)
        return {
            "session_id": record.session_id,
            "user_id": record.user_id,
            "token": new_token,
            "token_ttl": self.token_ttl,
            "props": whole.props if whole else {},
            "channels": sorted(whole.channels) if whole else [],
            "bindings": whole.bindings if whole else {},
        }

    @callers(BROKER_SERVICE)
    @idempotent
    @defer.inlineCallbacks
    def on_refresh(self, ctx: Context, session_id: str) -> Any:
        """A new resume token for the session the calling broker holds online (the
        old one stops working): a client refreshes before :attr:`token_ttl` runs out.

        Returns:
            ``{"token", "token_ttl"}``.

        Raises:
            ResumeFailed: no such session online on this broker.
        """
        record = yield self._lookup(session_id)
        if record is None or not record.online or record.broker != ctx.caller:
            raise ResumeFailed("no such session online on this broker")
        token = self._token(record.session_id)
        yield self.store.set_token(record.session_id, token)
        return {"token": token, "token_ttl": self.token_ttl}

    @callers(BROKER_SERVICE)
    @idempotent
    @defer.inlineCallbacks
    def on_closed(self, ctx: Context, session_id: str) -> Any:
        """The calling broker lost the session's connection: offline, publish ``offline``.

        The session ends after :attr:`grace` seconds unless resumed. Nothing happens
        if that broker no longer holds the session or it is already offline.
        """
        record = yield self._lookup(session_id)
        if record is not None and record.online and record.broker == ctx.caller:
            yield self._go_offline(record, REASON_CLOSED)

    @callers(BROKER_SERVICE)
    @idempotent
    @defer.inlineCallbacks
    def on_logout(self, ctx: Context, session_id: str, reason: str = REASON_LOGOUT) -> Any:
        """End the session the calling broker holds at once; publish ``leave``.

        Args:
            reason: the ``leave`` event's reason (a broker ending a session that
                logic kicked may say so).

        Returns:
            Whether a session was ended (False: unknown, or held by another broker).
        """
        record = yield self._lookup(session_id)
        if record is None or record.broker != ctx.caller:
            return False
        return (yield self._end(record, str(reason) or REASON_LOGOUT))

    @callers(BROKER_SERVICE)
    @idempotent
    @defer.inlineCallbacks
    def on_track(
        self,
        ctx: Context,
        session_id: str,
        joined: list[str] | None = None,
        left: list[str] | None = None,
        props: dict[str, Any] | None = None,
        bound: dict[str, str] | None = None,
        unbound: list[str] | None = None,
    ) -> Any:
        """Record what a resume restores, as told by the broker holding it.

        ``joined`` channels are added, then ``left`` ones removed; ``props`` are
        merged (a ``None`` value deletes the property); ``bound`` prefixes are set,
        then ``unbound`` ones removed. Ignored unless the calling broker holds it.
        """
        change = (
            _strings("track", "joined", joined),
            _strings("track", "left", left),
            _map("track", "props", props),
            {
                p: _text("track", "bound instance", i)
                for p, i in _map("track", "bound", bound).items()
            },
            _strings("track", "unbound", unbound),
        )
        record = yield self._lookup(session_id)
        if record is None or record.broker != ctx.caller:
            return
        yield self.store.track(record.session_id, *change)

    @idempotent
    @defer.inlineCallbacks
    def on_get(self, ctx: Context, session_id: str) -> Any:
        """The session's record, or None if there is no such session.

        Returns:
            ``{"session_id", "user_id", "broker", "online", "since", "offline_until",
            "props", "channels", "bindings"}`` (never the token): ``since`` is when it
            was opened, ``offline_until`` when an offline one's grace ends (None online).
        """
        record = yield self._lookup(session_id, whole=True)
        if record is None:
            return None
        return _described(record)

    @idempotent
    @defer.inlineCallbacks
    def on_find(self, ctx: Context, user_id: Any) -> Any:
        """The sessions of ``user_id``, oldest first, each as :meth:`on_get` describes it:
        ``[{"session_id", "user_id", "broker", "online", "since", "offline_until",
        "props", "channels", "bindings"}]``."""
        found = []
        for session_id in (yield self.store.of_user(_user_id("find", user_id))):
            record = yield self.store.get(session_id, whole=True)
            if record is not None:
                found.append(_described(record))
        return found

    @callers(*OPERATOR_ROLES)
    @idempotent
    @defer.inlineCallbacks
    def on_channels(self, ctx: Context, prefix: str = "", limit: int = 1000) -> Any:
        """The channels sessions are in, with how many (online sessions and offline ones
        within their grace): ``{channel: members}``, the ``limit`` largest whose name
        starts with ``prefix``, largest first (then by name). Reads every session's
        record: for operators (``admin``, ``tool``), not for a game's hot path.
        """
        if not isinstance(prefix, str):
            raise BadRequest("session.channels: prefix must be a string")
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
            raise BadRequest("session.channels: limit must be a whole number >= 0")
        members = yield self.store.channel_members(prefix)
        largest = sorted(members.items(), key=lambda item: (-item[1], item[0]))[:limit]
        return dict(largest)

    # -- internals -------------------------------------------------------------

    @defer.inlineCallbacks
    def _make_room(self, user: str, own: str, broker: str) -> Any:
        """After ``user`` opened session ``own``: end their oldest beyond the limit, or
        refuse ``own``."""
        held = yield self.store.of_user(user)
        limit = self.settings.max_sessions_per_user
        if len(held) <= limit:
            return
        if self.settings.when_full == "refuse":
            if own not in held[limit:]:
                return  # a login at the same moment is the one too many
            yield self.store.remove(own, user, broker)
            self.counters["refused"] += 1
            log.info("sessions: {user} holds {n} sessions; login refused", user=user, n=limit)
            raise TooManySessions(f"{user!r} already holds {limit} session(s), the most allowed")
        for session_id in held[:-limit]:
            record = yield self.store.get(session_id)
            if session_id == own or record is None:
                continue  # a newer login at the same moment replaces this one
            if record.online:
                self.sessions.kick(
                    Session(id=record.session_id, broker=record.broker),
                    "logged in elsewhere: this session was replaced by a newer login",
                )
            if not (yield self._end(record, REASON_REPLACED)):
                continue
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

    def _lookup(self, session_id: Any, *, whole: bool = False) -> defer.Deferred[Any]:
        if not isinstance(session_id, str) or not session_id:
            return defer.succeed(None)
        return self.store.get(session_id, whole=whole)

    def _token(self, session_id: str) -> str:
        return tokens.issue(session_id, self.key, ttl=self.token_ttl, purpose=RESUME_PURPOSE)

    @defer.inlineCallbacks
    def _checked(self, session_id: Any, token: Any) -> Any:
        """The session ``token`` resumes: signed for it, unexpired, and its latest;
        claimed, so that of two resumes at once with it only one goes on."""
        try:
            subject = tokens.verify(token, self.key, purpose=RESUME_PURPOSE)
        except tokens.TokenError as e:
            raise ResumeFailed(f"bad resume token: {e}") from None
        refused = ResumeFailed("unknown or expired session, or not its latest token")
        record = yield self._lookup(session_id)
        if (
            record is None
            or subject != session_id
            or not hmac.compare_digest(record.token.encode(), token.encode())
            or (record.deadline is not None and record.deadline <= self.clock.seconds())
        ):
            raise refused
        claimed = yield self.store.claim_token(record.session_id)
        if not claimed:
            raise refused  # another resume with this token took it a moment ago
        return record

    @defer.inlineCallbacks
    def _go_offline(self, record: StoredSession, reason: str) -> Any:
        """Take the session offline (if its broker still holds it: the claim); whether
        this instance did."""
        deadline = self.clock.seconds() + self.grace
        if not (yield self.store.take_offline(record.session_id, record.broker, deadline)):
            return False
        self._cancel_timer(record.session_id)
        self._timers[record.session_id] = self.clock.callLater(
            self.grace, self._expired_logged, record.session_id
        )
        self._event("offline", record.session_id, record.user_id, record.broker, reason)
        return True

    def _cancel_timer(self, session_id: str) -> None:
        timer = self._timers.pop(session_id, None)
        if timer is not None and timer.active():
            timer.cancel()

    def _expired_logged(self, session_id: str) -> None:
        self._timers.pop(session_id, None)
        self._expired(session_id).addErrback(
            lambda f: log.failure("sessions: ending {sid}", f, sid=session_id)
        )

    @defer.inlineCallbacks
    def _expired(self, session_id: str) -> Any:
        """End the session if it is still offline past its grace."""
        record = yield self.store.get(session_id)
        if record is None or record.online:
            yield self.store.unmark_overdue(session_id)
        elif record.deadline is None or record.deadline <= self.clock.seconds():
            yield self._end(record, REASON_EXPIRED)

    @defer.inlineCallbacks
    def _end(self, record: StoredSession, reason: str) -> Any:
        """Delete the session and publish ``leave``, if this instance is the one that
        deleted it; whether it was."""
        self._cancel_timer(record.session_id)
        if not (yield self.store.remove(record.session_id, record.user_id, record.broker)):
            return False
        self._event("leave", record.session_id, record.user_id, record.broker, reason)
        return True

    def _event(self, topic: str, session_id: str, user_id: str, broker: str, reason: str) -> None:
        self.publish(
            topic,
            {"session_id": session_id, "user_id": user_id, "broker": broker, "reason": reason},
        )
