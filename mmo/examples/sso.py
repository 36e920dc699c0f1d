"""``SSOService``: accounts, password checks and signed session tokens.

With a database (worker ``--database``) accounts live in its ``accounts`` table
(migration ``0001_accounts.sql``); without one they live in memory, for demos
and tests, and vanish when the process stops.

Passwords are kept only as scrypt hashes with a random 16-byte salt per
account, compared in constant time. The cost is deliberately modest
(``n=2**12, r=8, p=1``: about 4 MiB and a few milliseconds per hash, run on the
reactor thread) so that tests and demos stay fast; a deployment with many
logins per second should raise it in a subclass (``scrypt_n = 2**14`` or more)
and expect proportionally fewer logins per second per worker. The stored form
``scrypt$n$r$p$salt$hash`` keeps each hash's own parameters, so raising the
cost later leaves existing accounts valid.

``login`` returns ``auth_token``: an HMAC-SHA256-signed ``(user_id, expiry)``
(see :mod:`mmo.data.tokens`) that a broker verifies with
``tokens.verify(token, key)``. The key comes from ``$MMO_AUTH_KEY``; without it
the service refuses to start unless ``MMO_DEMO=1`` (a public demo key and a
warning).

The setting ``accounts`` (``"alice:pw1,bob:pw2"``, in ``[worker.settings]``) seeds
accounts at start, for demos (in the database: those not there yet).

``login`` and ``register`` are login methods: players reach them only as the
packets a broker serves before login (``sso.login``, ``sso.register``), never as
ordinary requests after it. Password guessing and mass registration are
throttled (:class:`SSOSettings`), by the player's address the broker passes
(``ctx.peer``) and by account, in the worker's cache (shared by every sso
instance on Redis): failed logins per account and address (a guesser is
stopped), per address (one address trying many accounts), per account (many
addresses trying one; set higher, so that a guesser on one address never locks
the owner out), and registrations per address. A key at its limit is refused
(``LoginThrottled`` / ``RegistrationThrottled``) until its window ends.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from mmo.config import ConfigError
from mmo.data import IntegrityError, tokens
from mmo.errors import MmoError
from mmo.logic import Context, ServiceHandler, login_method
from mmo.logic.throttle import Throttle
from mmo.types import InlineCallbacks
from mmo.wire.gen.mmo.ttypes import ErrorCode

__all__ = [
    "AccountExists",
    "BadCredentials",
    "InvalidAccount",
    "LoginThrottled",
    "RegistrationThrottled",
    "SSOError",
    "SSOService",
    "SSOSettings",
    "parse_accounts",
]

log = Logger()

_USER = re.compile(r"[A-Za-z0-9_-]{1,32}")
_MAX_PASSWORD = 128


class SSOError(MmoError):
    """Base of the errors the SSO service raises (callers get a ``RemoteError``)."""

    code = ErrorCode.REMOTE


class AccountExists(SSOError):
    """The user name is already registered."""


class BadCredentials(SSOError):
    """Unknown user or wrong password (the two are not told apart)."""


class InvalidAccount(SSOError):
    """The user name or password is not acceptable."""


class LoginThrottled(SSOError):
    """Too many failed logins for this account or from this address: wait for the window."""


class RegistrationThrottled(SSOError):
    """Too many registrations from this address: wait for the window."""


@dataclass(frozen=True)
class SSOSettings:
    """Settings of the sso service (``[worker.settings]`` or ``--set NAME=VALUE``).

    Failed logins are counted in windows of ``login_window`` seconds; a key that
    reaches its limit is refused until its window ends.

    Attributes:
        token_ttl: seconds a login's ``auth_token`` stays valid.
        login_failures_per_pair: failed logins per (account, address) per window: what
            stops a guesser (5: a player who mistypes five times waits a few minutes).
        login_failures_per_address: failed logins per address, any account (30: one
            address trying many accounts; a cafe behind one address has room).
        login_failures_per_account: failed logins per account, any address (100: many
            addresses trying one account; high, so that one guessing address, stopped
            by the pair limit after 5, never locks the owner out).
        login_window: the window of the login limits, in seconds (300).
        registrations_per_address: accounts one address may create per window (10).
        registration_window: the window of the registration limit, in seconds (3600).
        accounts: accounts to create at start, ``"user:password,user:password"`` (a
            password may hold ``:``); those a database already has are left alone. For
            demos and tests: give them in the config file, not on a command line that
            ``ps`` shows.
    """

    token_ttl: float = 3600.0
    login_failures_per_pair: int = 5
    login_failures_per_address: int = 30
    login_failures_per_account: int = 100
    login_window: float = 300.0
    registrations_per_address: int = 10
    registration_window: float = 3600.0
    accounts: str = field(default="", repr=False)

    def validate(self) -> None:
        """Check the values (and that ``accounts`` parses)."""
        parse_accounts(self.accounts)
        limits = (
            self.login_failures_per_pair,
            self.login_failures_per_address,
            self.login_failures_per_account,
            self.registrations_per_address,
        )
        if min(limits) < 1:
            raise ConfigError("login-failures-per-pair", "every limit must be at least 1")
        if min(self.token_ttl, self.login_window, self.registration_window) <= 0:
            raise ConfigError("login-window", "times must be positive")


def _check(user: Any, password: Any) -> tuple[str, str]:
    if not isinstance(user, str) or not _USER.fullmatch(user):
        raise InvalidAccount("user names are 1-32 letters, digits, '_' or '-'")
    if not isinstance(password, str) or not 1 <= len(password) <= _MAX_PASSWORD:
        raise InvalidAccount(f"passwords are 1-{_MAX_PASSWORD} characters")
    return user, password


def parse_accounts(spec: str) -> list[tuple[str, str]]:
    """The accounts of ``"user:password,..."``; ConfigError naming the setting if bad."""
    accounts: list[tuple[str, str]] = []
    seen: set[str] = set()
    for entry in filter(None, (e.strip() for e in spec.split(","))):
        user, sep, password = entry.partition(":")
        try:
            if not sep:
                raise InvalidAccount("expected user:password")
            _check(user, password)
            if user in seen:
                raise AccountExists(f"user {user!r} already exists")
        except SSOError as e:
            raise ConfigError("accounts", f"account {user!r}: {e}") from None
        seen.add(user)
        accounts.append((user, password))
    return accounts


class SSOService(ServiceHandler):
    """The ``sso`` service: ``register`` and ``login``.

    Attributes:
        scrypt_n: scrypt CPU/memory cost (small on purpose; see the module doc).
        scrypt_r: scrypt block size.
        scrypt_p: scrypt parallelism.
        settings: an :class:`SSOSettings` (token lifetime, abuse limits).
        accounts: without a database, user name -> (salt, scrypt hash); never a password.
        auth_key: the token signing key (``$MMO_AUTH_KEY``).
        counters: ``login_failures``, ``logins_throttled``, ``registrations_throttled``.
    """

    default_service = "sso"
    Settings = SSOSettings
    settings: SSOSettings
    scrypt_n: int = 2**12
    scrypt_r: int = 8
    scrypt_p: int = 1

    def __init__(self, runtime: Any) -> None:
        super().__init__(runtime)
        self.auth_key = tokens.load_key()
        limits = self.settings
        cache, clock = self.cache, self.clock
        window, registration_window = limits.login_window, limits.registration_window
        self._failures = {
            "pair": Throttle(
                cache, clock, "login-pair", limit=limits.login_failures_per_pair, window=window
            ),
            "address": Throttle(
                cache,
                clock,
                "login-address",
                limit=limits.login_failures_per_address,
                window=window,
            ),
            "account": Throttle(
                cache,
                clock,
                "login-account",
                limit=limits.login_failures_per_account,
                window=window,
            ),
        }
        self._registrations = Throttle(
            cache,
            clock,
            "register-address",
            limit=limits.registrations_per_address,
            window=registration_window,
        )
        self.counters = {"login_failures": 0, "logins_throttled": 0, "registrations_throttled": 0}
        self.accounts: dict[str, tuple[bytes, bytes]] = {}
        # Hashed against when the user is unknown, so that a login takes as long
        # for an unknown user as for a wrong password.
        self._dummy = (secrets.token_bytes(16), b"")
        self._seed = parse_accounts(limits.accounts)
        if self.db is None:
            for user, password in self._seed:
                self._add(user, password)

    def seed(self, spec: str) -> None:
        """Add the accounts of ``"user:password,user:password"`` to memory (empty: none).

        Raises:
            ConfigError: an entry is malformed, invalid or repeated.
        """
        for user, password in parse_accounts(spec):
            try:
                self._add(user, password)
            except SSOError as e:
                raise ConfigError("accounts", f"account {user!r}: {e}") from None

    @defer.inlineCallbacks
    def start(self) -> InlineCallbacks[None]:
        """With a database, add the seeded accounts it lacks."""
        if self.db is None or not self._seed:
            return
        added = 0
        for user, password in self._seed:
            rows = yield self.db.run_query("SELECT 1 FROM accounts WHERE user_id = %s", (user,))
            if not rows:
                yield self._insert(user, password)
                added += 1
        log.info("sso: {n} seeded accounts added to the database", n=added)

    # -- hashing -------------------------------------------------------------------

    def hash_password(self, password: str, salt: bytes) -> bytes:
        """The scrypt hash of ``password`` with ``salt`` at this class's cost."""
        return hashlib.scrypt(
            password.encode(), salt=salt, n=self.scrypt_n, r=self.scrypt_r, p=self.scrypt_p
        )

    def encode_hash(self, password: str) -> str:
        """A new salted hash of ``password`` in its stored form ``scrypt$n$r$p$salt$hash``."""
        salt = secrets.token_bytes(16)
        digest = self.hash_password(password, salt)
        return f"scrypt${self.scrypt_n}${self.scrypt_r}${self.scrypt_p}${salt.hex()}${digest.hex()}"

    @staticmethod
    def check_hash(password: str, stored: str) -> bool:
        """Whether ``password`` matches a stored ``scrypt$n$r$p$salt$hash``."""
        try:
            scheme, n, r, p, salt, digest = stored.split("$")
            if scheme != "scrypt":
                return False
            actual = hashlib.scrypt(
                password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p)
            )
            return hmac.compare_digest(actual, bytes.fromhex(digest))
        except (ValueError, TypeError):
            return False

    # -- the service -----------------------------------------------------------------

    @login_method
    @defer.inlineCallbacks
    def on_register(self, ctx: Context, user: str, password: str) -> InlineCallbacks[Any]:
        """Create an account (at most ``registrations_per_address`` per window from one
        player's address).

        Returns:
            ``{"user_id": user}``.

        Raises:
            InvalidAccount: the user name or password is not acceptable.
            AccountExists: the user name is taken.
            RegistrationThrottled: too many registrations from this address.
            DatabaseUnavailable: the database cannot be reached.
        """
        user, password = _check(user, password)
        if ctx.peer is not None:
            wait = yield self._registrations.blocked(ctx.peer)
            if wait:
                self._refused("registrations_throttled", "registrations", ctx.peer)
                raise RegistrationThrottled(
                    f"too many accounts made from your address; try again in {wait:.0f} s"
                )
        if self.db is None:
            self._add(user, password)
        else:
            yield self._insert(user, password)
        if ctx.peer is not None:
            yield self._registrations.record(ctx.peer)
        return {"user_id": user}

    @login_method
    @defer.inlineCallbacks
    def on_login(self, ctx: Context, user: str, password: str) -> InlineCallbacks[Any]:
        """Check a user's password and sign a session token (within the login limits).

        Returns:
            ``{"user_id", "name", "auth_token", "expires"}``; ``auth_token`` verifies
            with ``mmo.data.tokens.verify`` until ``expires`` (Unix seconds).

        Raises:
            InvalidAccount: the user name or password is malformed.
            LoginThrottled: too many failed logins for this account, from this address,
                or for this account from this address: refused without checking.
            BadCredentials: unknown user or wrong password.
            DatabaseUnavailable: the database cannot be reached.
        """
        user, password = _check(user, password)
        keys = self._failure_keys(user, ctx.peer)
        waits = yield defer.gatherResults([self._failures[kind].blocked(key) for kind, key in keys])
        if max(waits):
            self._refused("logins_throttled", f"logins of {user!r}", ctx.peer)
            raise LoginThrottled(f"too many failed logins; try again in {max(waits):.0f} s")
        if self.db is None:
            salt, expected = self.accounts.get(user, self._dummy)
            good = hmac.compare_digest(self.hash_password(password, salt), expected)
        else:
            rows = yield self.db.run_query(
                "SELECT password_hash FROM accounts WHERE user_id = %s", (user,)
            )
            if rows:
                good = self.check_hash(password, str(rows[0][0]))
            else:
                self.hash_password(password, self._dummy[0])  # as slow as a wrong password
                good = False
        if not good:
            self.counters["login_failures"] += 1
            yield defer.gatherResults([self._failures[kind].record(key) for kind, key in keys])
            raise BadCredentials("wrong user name or password")
        return self._session(user)

    @staticmethod
    def _failure_keys(user: str, peer: str | None) -> list[tuple[str, str]]:
        """The counts a failed login of ``user`` from ``peer`` adds to."""
        keys = [("account", user)]
        if peer is not None:
            keys += [("pair", f"{user}@{peer}"), ("address", peer)]
        return keys

    def _refused(self, counter: str, what: str, peer: str | None) -> None:
        """Count a throttled request; log the first and every 100th."""
        self.counters[counter] += 1
        n = self.counters[counter]
        if n == 1 or n % 100 == 0:
            log.warn(
                "sso: {what} from {peer} throttled ({n} throttled so far)",
                what=what,
                peer=peer or "a cluster member",
                n=n,
            )

    def _session(self, user: str) -> dict[str, Any]:
        now = time.time()
        token = tokens.issue(user, self.auth_key, ttl=self.settings.token_ttl, now=now)
        return {
            "user_id": user,
            "name": user,
            "auth_token": token,
            "expires": tokens.expiry_of(token),
        }

    def _add(self, user: str, password: str) -> None:
        if user in self.accounts:
            raise AccountExists(f"user {user!r} already exists")
        salt = secrets.token_bytes(16)
        self.accounts[user] = (salt, self.hash_password(password, salt))

    def _insert(self, user: str, password: str) -> defer.Deferred[None]:
        assert self.db is not None
        d = self.db.run_operation(
            "INSERT INTO accounts (user_id, password_hash, created_at) VALUES (%s, %s, %s)",
            (user, self.encode_hash(password), int(time.time())),
        )

        def taken(failure: Any) -> None:
            failure.trap(IntegrityError)
            raise AccountExists(f"user {user!r} already exists")

        return d.addErrback(taken)
