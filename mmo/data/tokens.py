"""Signed session tokens: what ``sso.login`` returns and a broker verifies.

A token is ``v1.<payload>.<signature>``: the payload is the base64url of the
JSON ``[user_id, expiry]`` (expiry in Unix seconds), the signature the
base64url of HMAC-SHA256 over ``v1.<payload>`` with the shared key. Anyone
holding the key can check a token without asking the sso service::

    from mmo.data import tokens

    key = tokens.load_key()            # $MMO_AUTH_KEY (or the demo key with MMO_DEMO=1)
    user_id = tokens.verify(token, key)  # raises InvalidToken / TokenExpired

The key comes from ``$MMO_AUTH_KEY`` (at least 16 characters), shared by the
sso workers and the brokers. Without it a process refuses to start, unless
``MMO_DEMO=1``, which uses a fixed, public demo key and logs a warning.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import time
from collections.abc import Mapping

from twisted.logger import Logger

from mmo.config import ConfigError
from mmo.errors import MmoError
from mmo.wire.gen.mmo.ttypes import ErrorCode

__all__ = [
    "DEMO_ENV",
    "KEY_ENV",
    "InvalidToken",
    "TokenError",
    "TokenExpired",
    "expiry_of",
    "issue",
    "load_key",
    "verify",
]

log = Logger()

#: Environment variable holding the signing key.
KEY_ENV = "MMO_AUTH_KEY"
#: Environment variable that, set to 1, allows the demo key.
DEMO_ENV = "MMO_DEMO"
#: The demo key: public, so tokens signed with it prove nothing. Demos and tests only.
DEMO_KEY = b"mmo-demo-key-not-secret-do-not-use-in-production"
_MIN_KEY = 16
_VERSION = "v1"


class TokenError(MmoError):
    """Base of token errors (callers of a service get a ``RemoteError`` of that type)."""

    code = ErrorCode.REMOTE


class InvalidToken(TokenError):
    """The token is malformed or its signature does not match the key."""


class TokenExpired(TokenError):
    """The token was valid but its expiry has passed."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(message: str, key: bytes) -> str:
    return _b64(hmac.new(key, message.encode("ascii"), hashlib.sha256).digest())


def issue(user_id: str | int, key: bytes, *, ttl: float, now: float | None = None) -> str:
    """A token for ``user_id`` valid for ``ttl`` seconds from ``now`` (default: the time)."""
    if not key:
        raise ValueError("an empty key signs nothing")
    now = time.time() if now is None else now
    expiry = int(now + ttl)
    payload = _b64(json.dumps([user_id, expiry], separators=(",", ":")).encode())
    message = f"{_VERSION}.{payload}"
    return f"{message}.{_sign(message, key)}"


def expiry_of(token: str) -> int:
    """The expiry written in ``token`` (not verified: for display only)."""
    payload = json.loads(_unb64(token.split(".")[1]))
    return int(payload[1])


def verify(token: str, key: bytes, *, now: float | None = None) -> str | int:
    """The user id of a valid, unexpired token.

    Raises:
        InvalidToken: malformed, or signed with another key.
        TokenExpired: past its expiry.
    """
    if not isinstance(token, str):
        raise InvalidToken("a token is a string")
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != _VERSION:
        raise InvalidToken("malformed token (expected v1.<payload>.<signature>)")
    message = f"{parts[0]}.{parts[1]}"
    try:
        good = hmac.compare_digest(_sign(message, key), parts[2])
    except (TypeError, UnicodeEncodeError):
        good = False
    if not good:
        raise InvalidToken("bad token signature")
    try:
        user_id, expiry = json.loads(_unb64(parts[1]))
    except (ValueError, TypeError, binascii.Error):
        raise InvalidToken("malformed token payload") from None
    if not isinstance(user_id, str | int) or not isinstance(expiry, int):
        raise InvalidToken("malformed token payload")
    now = time.time() if now is None else now
    if now >= expiry:
        raise TokenExpired(f"token expired {int(now - expiry)}s ago")
    return user_id


def load_key(env: Mapping[str, str] | None = None) -> bytes:
    """The signing key from ``$MMO_AUTH_KEY``; the demo key when ``MMO_DEMO=1``.

    Raises:
        ConfigError: no key (and no demo mode), or a key shorter than 16 characters.
    """
    env = os.environ if env is None else env
    raw = env.get(KEY_ENV, "")
    if raw:
        if len(raw) < _MIN_KEY:
            raise ConfigError(KEY_ENV, f"the key must be at least {_MIN_KEY} characters")
        return raw.encode()
    if env.get(DEMO_ENV, "") == "1":
        log.warn(
            "{env} is not set: signing tokens with the public demo key ({demo}=1); "
            "never do this in production",
            env=KEY_ENV,
            demo=DEMO_ENV,
        )
        return DEMO_KEY
    raise ConfigError(
        KEY_ENV,
        "is not set: give the token signing key (16+ characters, the same for sso and "
        f"brokers), or set {DEMO_ENV}=1 to use the public demo key",
    )
