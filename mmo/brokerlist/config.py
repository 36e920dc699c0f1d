"""Configuration of a brokerlist process."""

from __future__ import annotations

from dataclasses import dataclass

from mmo.config import ConfigError, check_server_endpoint, check_zmq_address

#: Where the brokerlist listens unless told otherwise (loopback only).
DEFAULT_LISTEN = "tcp:6000:interface=127.0.0.1"


@dataclass(frozen=True)
class BrokerlistConfig:
    """Settings of ``twistd mmo-brokerlist`` (TOML section ``[brokerlist]``).

    Attributes:
        yellow: addresses of the yellows the broker records are read from.
        listen: Twisted strports description of the HTTP port, e.g.
            ``tcp:6000:interface=0.0.0.0``.
    """

    yellow: tuple[str, ...]
    listen: str = DEFAULT_LISTEN

    def validate(self) -> None:
        """Check the yellow addresses and that ``listen`` parses as a server endpoint."""
        if not self.yellow:
            raise ConfigError("yellow", "at least one yellow address is required")
        for address in self.yellow:
            check_zmq_address("yellow", address)
        check_server_endpoint("listen", self.listen, DEFAULT_LISTEN)
