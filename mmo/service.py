"""Service-tree helpers shared by every role.

* :class:`OrderedMultiService` starts its children in order and stops them in reverse,
  one after another, going on past a child whose stop fails (reported in the log), so
  that what comes first in a tree (the ZeroMQ context) is always closed last.
* :class:`PreparedService` is an ordered tree whose children start only once something
  slow is done (a database migrated, a handler started): :meth:`PreparedService.when_started`
  says how that went, and a failure stops its own children, never the reactor. The
  process (the role's twistd plugin) decides what a failed start means for it.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from typing_extensions import override

__all__ = ["OrderedMultiService", "PreparedService"]

log = Logger()


class OrderedMultiService(MultiService):
    """Starts children in order and stops them in reverse order, one after another.

    Twisted's MultiService starts every child's stop at once; a role needs its
    listeners closed before it deregisters, and its ZeroMQ context alive until
    everything above it has said goodbye. A child whose stop fails is logged and the
    others are stopped all the same.

    Attributes:
        telemetry: a role's tree carries its ``mmo.telemetry.metrics.Telemetry`` here.
    """

    telemetry: Any = None

    @override
    @defer.inlineCallbacks
    def stopService(self) -> Any:
        """Stop the children last first, each after the one before has finished."""
        Service.stopService(self)
        yield self.stop_children()

    @defer.inlineCallbacks
    def stop_children(self) -> Any:
        """Stop the running children, last first, past any that fails."""
        for child in reversed(list(self)):
            if not child.running:
                continue
            try:
                yield defer.maybeDeferred(child.stopService)
            except Exception:
                log.failure(
                    "{parent}: stopping {child} failed; stopping the others",
                    parent=self.name or type(self).__name__,
                    child=child.name or type(child).__name__,
                )


class PreparedService(OrderedMultiService):
    """An ordered tree whose children start after :meth:`prepare` (which may take time).

    A failed start is logged (:meth:`failed`) and stops the children again.
    """

    def __init__(self) -> None:
        super().__init__()
        self._outcome: Failure | bool | None = None  # True: started
        self._waiting: list[defer.Deferred[None]] = []

    def when_started(self) -> defer.Deferred[None]:
        """A Deferred firing once the children run, or failing with why they could not."""
        if isinstance(self._outcome, Failure):
            return defer.fail(self._outcome)
        if self._outcome:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._waiting.append(d)
        return d

    def failed(self, failure: Failure) -> None:
        """Say why the start failed (a subclass may say it better)."""
        log.failure("{name} failed to start", failure, name=self.name or type(self).__name__)

    def prepare(self) -> Any:
        """What must be done before the children start (a Deferred, or a plain value)."""
        return None

    def ready(self) -> None:
        """Called once the children run."""

    @override
    def startService(self) -> None:
        """Prepare, then start the children in order (``started`` says how it went)."""
        Service.startService(self)
        self._outcome = None
        d = defer.maybeDeferred(self.prepare)
        d.addCallback(self._start_children)
        d.addCallbacks(self._ready, self._failed)

    def _start_children(self, _: Any) -> None:
        if not self.running:
            return  # stopped while preparing
        for child in self:
            child.startService()

    def _ready(self, _: Any) -> None:
        if self.running:
            self.ready()
        self._settle(True)

    @defer.inlineCallbacks
    def _failed(self, failure: Failure) -> Any:
        self.failed(failure)
        yield self.stop_children()
        self._settle(failure)

    def _settle(self, outcome: Failure | bool) -> None:
        self._outcome = outcome
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            if isinstance(outcome, Failure):
                d.errback(outcome)
            else:
                d.callback(None)
