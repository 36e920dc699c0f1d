"""``EchoService``: the smallest useful service, for demos and tests."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, task

from mmo.logic import Context, ServiceHandler, idempotent


class EchoFailure(Exception):
    """What :meth:`EchoService.on_fail` raises."""


class EchoService(ServiceHandler):
    """Echoes, sleeps, fails and tells who it is, on request."""

    default_service = "echo"

    @idempotent
    def on_echo(self, ctx: Context, **kwargs: Any) -> dict[str, Any]:
        """Return the keyword arguments it was called with."""
        return kwargs

    @idempotent
    def on_sleep(self, ctx: Context, seconds: float = 0.0) -> defer.Deferred[float]:
        """Answer ``seconds`` after being called."""
        return task.deferLater(self.clock, float(seconds), lambda: float(seconds))  # type: ignore[arg-type]

    def on_fail(self, ctx: Context, message: str = "failed as asked") -> None:
        """Raise ``EchoFailure(message)``."""
        raise EchoFailure(message)

    @idempotent
    def on_whoami(self, ctx: Context) -> str:
        """Return this instance's id."""
        return self.instance_id
