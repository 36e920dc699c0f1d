"""Typing helpers shared across mmo (structural types for Twisted's interfaces)."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, Protocol, TypeAlias, TypeVar

from twisted.internet import defer

T = TypeVar("T")

#: The generator type of an ``@defer.inlineCallbacks`` function returning ``T``.
InlineCallbacks: TypeAlias = Generator[defer.Deferred[Any], Any, T]


class DelayedCall(Protocol):
    """What mmo uses of ``IDelayedCall``."""

    def active(self) -> bool: ...
    def cancel(self) -> None: ...


class Clock(Protocol):
    """What mmo uses of ``IReactorTime`` (a reactor, or ``task.Clock`` in tests)."""

    def seconds(self) -> float: ...
    def callLater(
        self, delay: float, callable: Callable[..., Any], *args: Any, **kw: Any
    ) -> DelayedCall: ...
