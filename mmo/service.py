"""Service-tree helpers shared by every role."""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet import defer
from typing_extensions import override


class OrderedMultiService(MultiService):
    """Starts children in order and stops them in reverse order, one after another.

    Twisted's MultiService starts every child's stop at once; a role needs its
    listeners closed before it deregisters, and its ZeroMQ context alive until
    everything above it has said goodbye.
    """

    @override
    @defer.inlineCallbacks
    def stopService(self) -> Any:
        """Stop the children last first, each after the one before has finished."""
        Service.stopService(self)
        for child in reversed(list(self)):
            if child.running:
                yield defer.maybeDeferred(child.stopService)
