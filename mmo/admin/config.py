"""Configuration of the admin console."""

from __future__ import annotations

from dataclasses import dataclass

from mmo.config import ConfigError, check_server_endpoint, check_zmq_address

#: Where the console listens unless told otherwise (loopback only).
DEFAULT_LISTEN = "tcp:7000:interface=127.0.0.1"


@dataclass(frozen=True)
class AdminConfig:
    """Settings of ``twistd mmo-admin`` (TOML section ``[admin]``).

    Attributes:
        yellow: addresses of the yellows (the console watches the registry).
        listen: Twisted strports description of its HTTP(S) port: ``tcp:7000:...``, or
            ``ssl:7443:privateKey=key.pem:certKey=cert.pem`` (cookies are then ``Secure``).
        accounts: a file of admin accounts, one ``name:scrypt$...`` line each (made by
            ``mmo admin-password NAME``); ``$MMO_ADMIN_ACCOUNTS`` (the same lines,
            comma-separated) adds more. None shipped: without any the console refuses to
            start, unless ``MMO_DEMO=1`` (a demo account ``admin``, logged).
        poll: seconds between two reads of every process (the live page's pace).
        history: seconds of traffic the charts show.
        session_ttl: seconds an admin stays logged in without using the console.
    """

    yellow: tuple[str, ...]
    listen: str = DEFAULT_LISTEN
    accounts: str | None = None
    poll: float = 2.0
    history: float = 300.0
    session_ttl: float = 8 * 3600.0

    def validate(self) -> None:
        """Check the values."""
        if not self.yellow:
            raise ConfigError("yellow", "at least one yellow address is required")
        for address in self.yellow:
            check_zmq_address("yellow", address)
        check_server_endpoint("listen", self.listen, DEFAULT_LISTEN)
        if not 0.2 <= self.poll <= 60:
            raise ConfigError("poll", "must be between 0.2 and 60 seconds")
        if not self.poll * 2 <= self.history <= 86400:
            raise ConfigError("history", "must be between two polls and a day")
        if self.session_ttl <= 0:
            raise ConfigError("session-ttl", "must be positive")

    @property
    def secure(self) -> bool:
        """Whether the console speaks TLS (its cookies are then ``Secure``)."""
        return self.listen.startswith(("ssl:", "tls:"))
