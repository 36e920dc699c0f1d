"""Admin accounts: names and scrypt hashes of their passwords.

A line is ``name:scrypt$N$r$p$SALT$HASH`` (salt and hash in URL-safe base64), as
``mmo admin-password NAME`` prints it. Checking a password runs scrypt in a thread (it
takes tens of milliseconds by design): the reactor keeps serving meanwhile.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable
from typing import Any

from twisted.internet import defer, threads
from twisted.logger import Logger

from mmo.config import ConfigError

__all__ = ["ACCOUNTS_ENV", "Accounts", "hash_password"]

log = Logger()

#: Admin account lines in the environment, comma-separated.
ACCOUNTS_ENV = "MMO_ADMIN_ACCOUNTS"
#: scrypt's cost: 2^15 x 8 x 1 (about 32 MiB and 50-100 ms a check here).
N, R, P = 2**15, 8, 1
_MAXMEM = 64 * 1024 * 1024


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)


def hash_password(password: str, *, n: int = N, r: int = R, p: int = P) -> str:
    """The stored form of ``password``: ``scrypt$N$r$p$SALT$HASH``."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=_MAXMEM)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(digest)}"


def _check(stored: str, password: str) -> bool:
    kind, n, r, p, salt, digest = stored.split("$")
    if kind != "scrypt":
        return False
    got = hashlib.scrypt(
        password.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p), maxmem=_MAXMEM
    )
    return hmac.compare_digest(got, _unb64(digest))


def _parse(line: str, where: str) -> tuple[str, str]:
    name, sep, stored = line.strip().partition(":")
    parts = stored.split("$")
    if not sep or not name or len(parts) != 6 or parts[0] != "scrypt":
        raise ConfigError("accounts", f"{where}: expected name:scrypt$N$r$p$salt$hash")
    try:
        int(parts[1]), int(parts[2]), int(parts[3]), _unb64(parts[4]), _unb64(parts[5])
    except ValueError as e:
        raise ConfigError("accounts", f"{where}: {e}") from e
    return name, stored


class Accounts:
    """The admin accounts the console takes.

    Args:
        lines: ``name:scrypt$...`` lines.
    """

    def __init__(self, lines: Iterable[tuple[str, str]]) -> None:
        self.hashes = dict(lines)
        # Checked against when the name is unknown: an unknown name takes as long.
        self._decoy = hash_password(secrets.token_urlsafe(16), n=N)

    @classmethod
    def load(cls, path: str | None, demo: bool) -> Accounts:
        """The accounts of the file ``path`` and of ``$MMO_ADMIN_ACCOUNTS``; with none, a
        demo account (``admin``, password ``$MMO_ADMIN_PASSWORD`` or ``admin``) when
        ``demo``.

        Raises:
            ConfigError: a line is malformed, the file cannot be read, or there is no
                account outside demo mode.
        """
        found: list[tuple[str, str]] = []
        if path is not None:
            try:
                with open(path) as f:
                    text = f.read()
            except OSError as e:
                raise ConfigError("accounts", f"cannot read {path}: {e}") from e
            for number, line in enumerate(text.splitlines(), 1):
                if line.strip() and not line.lstrip().startswith("#"):
                    found.append(_parse(line, f"{path}:{number}"))
        for line in os.environ.get(ACCOUNTS_ENV, "").split(","):
            if line.strip():
                found.append(_parse(line, f"${ACCOUNTS_ENV}"))
        if not found:
            if not demo:
                raise ConfigError(
                    "accounts",
                    f"no admin account: give --accounts FILE or ${ACCOUNTS_ENV} "
                    "(lines made by `mmo admin-password NAME`)",
                )
            password = os.environ.get("MMO_ADMIN_PASSWORD", "admin")
            log.warn("admin: demo mode, account 'admin' (password from $MMO_ADMIN_PASSWORD)")
            found.append(("admin", hash_password(password)))
        return cls(found)

    def check(self, name: str, password: str) -> defer.Deferred[bool]:
        """Whether ``password`` is ``name``'s (in a thread; an unknown name is False)."""
        stored = self.hashes.get(name)
        d: defer.Deferred[Any] = threads.deferToThread(_check, stored or self._decoy, password)
        return d.addCallback(lambda ok: bool(ok) and stored is not None)
