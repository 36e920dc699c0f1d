"""Signed tokens: sso's ``auth_token`` and the session service's resume tokens.

A token is ``v1.<payload>.<signature>``: the payload is the base64url of the
JSON ``[subject, expiry, purpose, nonce]`` (expiry in Unix seconds; purpose
``"auth"`` for a user's auth token, ``"resume"`` for a session's resume token;
a random nonce so that no two tokens are equal), the signature the base64url of
HMAC-SHA256 over ``v1.<payload>`` with the shared key. Anyone holding the key
can check a token without asking the service that issued it::

    from mmo.data import tokens

    key = tokens.load_key()            # $MMO_AUTH_KEY or $MMO_AUTH_KEY_FILE
    user_id = tokens.verify(token, key)  # raises InvalidToken / TokenExpired

The key (at least 16 characters) comes from ``$MMO_AUTH_KEY``, or from the file
``$MMO_AUTH_KEY_FILE`` names (surrounding whitespace ignored; keep it mode 0600),
shared by the sso workers, the session service and the brokers. Without it those
processes refuse to start, unless ``MMO_DEMO=1`` (the one-machine demo), which uses
a fixed, public demo key and logs a warning.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Mapping

from twisted.logger import Logger

from mmo.config import DEMO_ENV, ConfigError, demo_mode
from mmo.errors import MmoError
from mmo.wire.gen.mmo.ttypes import ErrorCode

__all__ = [
    "DEMO_ENV",
    "KEY_ENV",
    "KEY_FILE_ENV",
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
#: Environment variable naming a file that holds the signing key.
KEY_FILE_ENV = "MMO_AUTH_KEY_FILE"
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


def issue(
    subject: str | int,
    key: bytes,
    *,
    ttl: float,
    purpose: str = "auth",
    now: float | None = None,
) -> str:
    """A token for ``subject`` (a user id, a session id) and ``purpose``, valid for
    ``ttl`` seconds from ``now`` (default: the time)."""
    if not key:
        raise ValueError("an empty key signs nothing")
    now = time.time() if now is None else now
    expiry = int(now + ttl)
    body = [subject, expiry, purpose, secrets.token_urlsafe(6)]
    payload = _b64(json.dumps(body, separators=(",", ":")).encode())
    message = f"{_VERSION}.{payload}"
    return f"{message}.{_sign(message, key)}"


def expiry_of(token: str) -> int:
    """The expiry written in ``token`` (not verified: for display only)."""
    payload = json.loads(_unb64(token.split(".")[1]))
    return int(payload[1])


def verify(token: str, key: bytes, *, purpose: str = "auth", now: float | None = None) -> str | int:
    """The subject of a valid, unexpired token issued for ``purpose``.

    Raises:
        InvalidToken: malformed, signed with another key, or issued for another purpose.
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
        subject, expiry, issued_for, _nonce = json.loads(_unb64(parts[1]))
    except (ValueError, TypeError, binascii.Error):
        raise InvalidToken("malformed token payload") from None
    if not isinstance(subject, str | int) or not isinstance(expiry, int):
        raise InvalidToken("malformed token payload")
    if issued_for != purpose:
        raise InvalidToken(f"not a token for {purpose!r}")
    now = time.time() if now is None else now
    if now >= expiry:
        raise TokenExpired(f"token expired {int(now - expiry)}s ago")
    return subject


def load_key(env: Mapping[str, str] | None = None) -> bytes:
    """The signing key: ``$MMO_AUTH_KEY``, else the contents of ``$MMO_AUTH_KEY_FILE``,
    else the demo key when ``MMO_DEMO=1``.

    Raises:
        ConfigError: no key (and no demo mode), an unreadable key file, a key
            shorter than 16 characters, or the public demo key outside demo mode.
    """
    env = os.environ if env is None else env
    raw, source = env.get(KEY_ENV, ""), KEY_ENV
    path = env.get(KEY_FILE_ENV, "")
    if not raw and path:
        source = KEY_FILE_ENV
        try:
            with open(path, encoding="utf-8") as f:
                raw = f.read().strip()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(KEY_FILE_ENV, f"cannot read the key file {path!r}: {e}") from None
    if raw:
        if len(raw) < _MIN_KEY:
            raise ConfigError(source, f"the key must be at least {_MIN_KEY} characters")
        if raw.encode() == DEMO_KEY and not demo_mode(env):
            raise ConfigError(
                source,
                f"is the public demo key, which anyone can sign with: refused outside "
                f"{DEMO_ENV}=1; make a key of your own (openssl rand -hex 32)",
            )
        return raw.encode()
    if demo_mode(env):
        log.warn(
            "{env} is not set: signing tokens with the public demo key ({demo}=1); "
            "never do this in production",
            env=KEY_ENV,
            demo=DEMO_ENV,
        )
        return DEMO_KEY
    raise ConfigError(
        KEY_ENV,
        f"is not set (nor {KEY_FILE_ENV}): give the token signing key (16+ characters, the "
        f"same for sso, the session service and brokers), or set {DEMO_ENV}=1 to use the "
        "public demo key",
    )
