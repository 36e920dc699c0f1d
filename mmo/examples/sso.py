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

``$MMO_SSO_ACCOUNTS`` (``"alice:pw1,bob:pw2"``) seeds accounts at start, for
demos (in the database: those not there yet).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import time
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from mmo.config import ConfigError
from mmo.data import IntegrityError, tokens
from mmo.errors import MmoError
from mmo.logic import Context, ServiceHandler
from mmo.types import InlineCallbacks
from mmo.wire.gen.mmo.ttypes import ErrorCode

__all__ = [
    "ACCOUNTS_ENV",
    "AccountExists",
    "BadCredentials",
    "InvalidAccount",
    "SSOError",
    "SSOService",
]

log = Logger()

#: Environment variable seeding accounts: ``"user:password,user:password"``.
ACCOUNTS_ENV = "MMO_SSO_ACCOUNTS"

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


def _check(user: Any, password: Any) -> tuple[str, str]:
    if not isinstance(user, str) or not _USER.fullmatch(user):
        raise InvalidAccount("user names are 1-32 letters, digits, '_' or '-'")
    if not isinstance(password, str) or not 1 <= len(password) <= _MAX_PASSWORD:
        raise InvalidAccount(f"passwords are 1-{_MAX_PASSWORD} characters")
    return user, password


def _parse_seed(spec: str) -> list[tuple[str, str]]:
    """The accounts of ``"user:password,..."``; ConfigError naming the variable if bad."""
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
            raise ConfigError(ACCOUNTS_ENV, f"account {user!r}: {e}") from None
        seen.add(user)
        accounts.append((user, password))
    return accounts


class SSOService(ServiceHandler):
    """The ``sso`` service: ``register`` and ``login``.

    Attributes:
        scrypt_n: scrypt CPU/memory cost (small on purpose; see the module doc).
        scrypt_r: scrypt block size.
        scrypt_p: scrypt parallelism.
        token_ttl: seconds a login's ``auth_token`` stays valid.
        accounts: without a database, user name -> (salt, scrypt hash); never a password.
        auth_key: the token signing key (``$MMO_AUTH_KEY``).
    """

    default_service = "sso"
    scrypt_n: int = 2**12
    scrypt_r: int = 8
    scrypt_p: int = 1
    token_ttl: float = 3600.0

    def __init__(self, runtime: Any) -> None:
        super().__init__(runtime)
        self.auth_key = tokens.load_key()
        self.accounts: dict[str, tuple[bytes, bytes]] = {}
        # Hashed against when the user is unknown, so that a login takes as long
        # for an unknown user as for a wrong password.
        self._dummy = (secrets.token_bytes(16), b"")
        self._seed = _parse_seed(os.environ.get(ACCOUNTS_ENV, ""))
        if self.db is None:
            for user, password in self._seed:
                self._add(user, password)

    def seed(self, spec: str) -> None:
        """Add the accounts of ``"user:password,user:password"`` to memory (empty: none).

        Raises:
            ConfigError: an entry is malformed, invalid or repeated.
        """
        for user, password in _parse_seed(spec):
            try:
                self._add(user, password)
            except SSOError as e:
                raise ConfigError(ACCOUNTS_ENV, f"account {user!r}: {e}") from None

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

    def on_register(self, ctx: Context, user: str, password: str) -> Any:
        """Create an account.

        Returns:
            ``{"user_id": user}`` (a Deferred of it with a database).

        Raises:
            InvalidAccount: the user name or password is not acceptable.
            AccountExists: the user name is taken.
            DatabaseUnavailable: the database cannot be reached.
        """
        user, password = _check(user, password)
        if self.db is None:
            self._add(user, password)
            return {"user_id": user}
        return self._insert(user, password).addCallback(lambda _: {"user_id": user})

    def on_login(self, ctx: Context, user: str, password: str) -> Any:
        """Check a user's password and sign a session token.

        Returns:
            ``{"user_id", "name", "auth_token", "expires"}`` (a Deferred of it with a
            database); ``auth_token`` verifies with ``mmo.data.tokens.verify`` until
            ``expires`` (Unix seconds).

        Raises:
            InvalidAccount: the user name or password is malformed.
            BadCredentials: unknown user or wrong password.
            DatabaseUnavailable: the database cannot be reached.
        """
        user, password = _check(user, password)
        if self.db is None:
            salt, expected = self.accounts.get(user, self._dummy)
            if not hmac.compare_digest(self.hash_password(password, salt), expected):
                raise BadCredentials("wrong user name or password")
            return self._session(user)
        d = self.db.run_query("SELECT password_hash FROM accounts WHERE user_id = %s", (user,))
        return d.addCallback(self._logged_in, user, password)

    def _logged_in(self, rows: list[tuple[Any, ...]], user: str, password: str) -> dict[str, Any]:
        if not rows:
            self.hash_password(password, self._dummy[0])  # as slow as a wrong password
            raise BadCredentials("wrong user name or password")
        if not self.check_hash(password, str(rows[0][0])):
            raise BadCredentials("wrong user name or password")
        return self._session(user)

    def _session(self, user: str) -> dict[str, Any]:
        now = time.time()
        token = tokens.issue(user, self.auth_key, ttl=self.token_ttl, now=now)
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
