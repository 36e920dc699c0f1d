"""``EchoService``: the smallest useful service, for demos and tests.

None of its methods is a client route: players cannot call it (``echo.whoami``
through a broker is refused as a route that does not exist). Test rigs that want
it behind a broker use :class:`mmo.testing.handlers.ClientEcho`.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.internet import defer, task

from mmo.logic import Context, ServiceHandler, idempotent


class EchoFailure(Exception):
    """What :meth:`EchoService.on_fail` raises."""


class EchoService(ServiceHandler):
    """Echoes, sleeps, fails and tells who it is, on request.

    Beyond the four basic methods, ``work`` is a non-idempotent ``sleep`` (so a
    call to it is not retried elsewhere), and ``note`` records its arguments and
    publishes them on the topic ``noted`` (a target for pushes and pub-sub; a side
    effect that must happen once per request, even when the client resends it).
    Only the latest :attr:`max_notes` notes are kept.
    """

    default_service = "echo"
    max_notes = 1000

    def __init__(self, runtime: Any) -> None:
        super().__init__(runtime)
        self.notes: deque[dict[str, Any]] = deque(maxlen=self.max_notes)
        self.noted = 0

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

    def on_work(self, ctx: Context, seconds: float = 0.0) -> defer.Deferred[float]:
        """Like ``sleep``, but not idempotent: a lost call is reported, not retried."""
        return self.on_sleep(ctx, seconds)

    def on_note(self, ctx: Context, **kwargs: Any) -> int:
        """Record ``kwargs``, publish them on ``noted``; return how many notes were taken."""
        self.notes.append(kwargs)
        self.noted += 1
        self.publish("noted", {"by": self.instance_id, **kwargs})
        return self.noted

    def on_slow_note(self, ctx: Context, seconds: float, **kwargs: Any) -> defer.Deferred[int]:
        """``note`` after ``seconds`` (the note is taken when called: the reply is late)."""
        count = self.on_note(ctx, **kwargs)
        return task.deferLater(self.clock, float(seconds), lambda: count)  # type: ignore[arg-type]

    @idempotent
    def on_notes(self, ctx: Context) -> list[dict[str, Any]]:
        """The latest notes recorded by this instance (oldest first)."""
        return list(self.notes)

    def on_stick(self, ctx: Context) -> str:
        """Bind the caller's session's ``echo.*`` routes to this instance (dynamic routing)."""
        if ctx.session is None:
            raise ValueError("stick needs a client session")
        self.sessions.bind(ctx.session, "echo")
        return self.instance_id

    def on_unstick(self, ctx: Context) -> str:
        """Route the caller's ``echo.*`` by load again."""
        if ctx.session is None:
            raise ValueError("unstick needs a client session")
        self.sessions.unbind(ctx.session, "echo")
        return self.instance_id
