"""``SSOService``: accounts in memory, for demos, tests and the broker's default login.

Passwords are kept only as scrypt hashes with a random salt per account and
compared in constant time. The scrypt cost is deliberately small
(``n=2**12, r=8, p=1``: a few milliseconds, run on the reactor thread) so that
tests and demos stay fast; a real deployment needs a higher cost, run off the
reactor, and accounts in the data layer, which the data-layer work will bring.

``$MMO_SSO_ACCOUNTS`` (``"alice:pw1,bob:pw2"``) seeds accounts at start, for demos.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from typing import Any

from mmo.config import ConfigError
from mmo.errors import MmoError
from mmo.logic import Context, ServiceHandler
from mmo.wire.gen.mmo.ttypes import ErrorCode

__all__ = [
    "ACCOUNTS_ENV",
    "AccountExists",
    "BadCredentials",
    "InvalidAccount",
    "SSOError",
    "SSOService",
]

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


class SSOService(ServiceHandler):
    """The ``sso`` service: ``register`` and ``login`` against accounts held in memory.

    Attributes:
        scrypt_n: scrypt CPU/memory cost (small on purpose; see the module doc).
        scrypt_r: scrypt block size.
        scrypt_p: scrypt parallelism.
        accounts: user name -> (salt, scrypt hash); never a password.
    """

    default_service = "sso"
    scrypt_n: int = 2**12
    scrypt_r: int = 8
    scrypt_p: int = 1

    def __init__(self, runtime: Any) -> None:
        super().__init__(runtime)
        self.accounts: dict[str, tuple[bytes, bytes]] = {}
        # Hashed against when the user is unknown, so that a login takes as long
        # for an unknown user as for a wrong password.
        self._dummy = (secrets.token_bytes(16), b"")
        self.seed(os.environ.get(ACCOUNTS_ENV, ""))

    def seed(self, spec: str) -> None:
        """Add the accounts of ``"user:password,user:password"`` (empty: none).

        Raises:
            ConfigError: an entry is malformed, invalid or repeated.
        """
        for entry in filter(None, (e.strip() for e in spec.split(","))):
            user, sep, password = entry.partition(":")
            try:
                if not sep:
                    raise InvalidAccount("expected user:password")
                self._add(*_check(user, password))
            except SSOError as e:
                raise ConfigError(ACCOUNTS_ENV, f"account {user!r}: {e}") from None

    def hash_password(self, password: str, salt: bytes) -> bytes:
        """The scrypt hash of ``password`` with ``salt``."""
        return hashlib.scrypt(
            password.encode(), salt=salt, n=self.scrypt_n, r=self.scrypt_r, p=self.scrypt_p
        )

    def on_register(self, ctx: Context, user: str, password: str) -> dict[str, str]:
        """Create an account.

        Returns:
            ``{"user_id": user}``.

        Raises:
            InvalidAccount: the user name or password is not acceptable.
            AccountExists: the user name is taken.
        """
        user, password = _check(user, password)
        self._add(user, password)
        return {"user_id": user}

    def on_login(self, ctx: Context, user: str, password: str) -> dict[str, str]:
        """Check a user's password.

        Returns:
            ``{"user_id": user, "name": user}`` (the broker opens the session).

        Raises:
            InvalidAccount: the user name or password is malformed.
            BadCredentials: unknown user or wrong password.
        """
        user, password = _check(user, password)
        salt, expected = self.accounts.get(user, self._dummy)
        if not hmac.compare_digest(self.hash_password(password, salt), expected):
            raise BadCredentials("wrong user name or password")
        return {"user_id": user, "name": user}

    def _add(self, user: str, password: str) -> None:
        if user in self.accounts:
            raise AccountExists(f"user {user!r} already exists")
        salt = secrets.token_bytes(16)
        self.accounts[user] = (salt, self.hash_password(password, salt))
