"""The errors a game client gets from :mod:`mmo.client`.

The broker reports failures as a ``ClientError`` code and a message (in an
``ERROR`` or ``KICK`` packet); :class:`ClientRequestError` carries both. The
other classes are failures the client notices on its own side.
"""

from __future__ import annotations

from mmo.errors import MmoError
from mmo.wire.gen.mmo.ttypes import ClientError


def error_name(code: int | None) -> str:
    """The ``ClientError`` name of ``code`` (``"UNKNOWN_ROUTE"``), or ``"CODE_<n>"``."""
    if code is None:
        return "NO_CODE"
    name: str | None = ClientError._VALUES_TO_NAMES.get(code)
    return name if name is not None else f"CODE_{code}"


class ClientException(MmoError):
    """Base class of every error :mod:`mmo.client` raises."""


class ClientRequestError(ClientException):
    """The broker answered ``ERROR`` (or sent ``KICK``): a ``ClientError`` code and a message.

    Attributes:
        code: the ``ClientError`` value, e.g. ``ClientError.UNKNOWN_ROUTE``.
        name: the enum name of ``code``, e.g. ``"UNKNOWN_ROUTE"``.
        message: what the broker said, for people (a service error reads ``"Type: message"``).
    """

    def __init__(self, code: int, message: str = "") -> None:
        self.code = code
        self.name = error_name(code)
        self.message = message
        super().__init__(f"{self.name}: {message}" if message else self.name)


class ClientTimeout(ClientException):
    """A request got no answer before its deadline (or the connection was not back in time)."""


class ClientDisconnected(ClientException):
    """The connection is gone (or was never there), so the request cannot be answered.

    Attributes:
        cause: what the broker said before it closed (a ``KICK`` or a connection-level
            ``ERROR``), if it said anything.
    """

    def __init__(
        self, message: str = "connection lost", cause: ClientRequestError | None = None
    ) -> None:
        self.cause = cause
        super().__init__(f"{message} ({cause})" if cause is not None else message)


class ClientConnectError(ClientException):
    """No connection could be made: the brokerlist failed, listed no broker, or TCP failed."""
