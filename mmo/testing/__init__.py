"""Helpers for testing mmo services (docs/testing.md): fakes, handler factories, real processes.

* :func:`handler_factory` builds a handler on a :class:`FakeRuntime` (Nameko's
  ``worker_factory`` idea); :func:`call` calls its methods as a worker does;
  :func:`result_of` and :func:`failure_of` read an already-fired Deferred.
* :class:`FakeDirectory` stands in for a worker's directory: scripted services, a
  registry the test plays; :class:`FakeRegistration` records what a role publishes
  about itself. :class:`FakeZmqContext` stands in for the ZeroMQ context:
  sockets that record what is sent and take what the test delivers.
* :class:`FakeDatabase` and :func:`fake_cache` are the data layer without servers;
  :mod:`mmo.testing.data` starts throwaway PostgreSQL and Redis servers.
* :class:`TwistdProcess` runs a real ``twistd`` role in a child process, for
  integration tests; it stops what it starts.

The pytest plugin (:mod:`mmo.testing.plugin`) exposes them as fixtures. This package
imports its parts on first use: loading the plugin must not import ZeroMQ's txzmq, which
installs Twisted's default reactor, before pytest-twisted installs the one ``--reactor``
chose.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mmo.testing.directory import (
        FakeCall,
        FakeDirectory,
        FakeLink,
        FakeRegistration,
        FakeRegistryView,
        FakeSend,
        FakeSubscription,
    )
    from mmo.testing.fakes import (
        FakeDatabase,
        FakeRuntime,
        FakeSessions,
        as_player,
        before_login,
        call,
        failure_of,
        fake_cache,
        fake_context,
        handler_factory,
        result_of,
    )
    from mmo.testing.processes import TwistdProcess, free_port
    from mmo.testing.sockets import FakeZmqContext, FakeZmqSocket

#: Where each public name lives.
_HOMES = {
    "FakeCall": "mmo.testing.directory",
    "FakeDirectory": "mmo.testing.directory",
    "FakeLink": "mmo.testing.directory",
    "FakeRegistration": "mmo.testing.directory",
    "FakeRegistryView": "mmo.testing.directory",
    "FakeSend": "mmo.testing.directory",
    "FakeSubscription": "mmo.testing.directory",
    "FakeDatabase": "mmo.testing.fakes",
    "FakeRuntime": "mmo.testing.fakes",
    "FakeSessions": "mmo.testing.fakes",
    "as_player": "mmo.testing.fakes",
    "before_login": "mmo.testing.fakes",
    "call": "mmo.testing.fakes",
    "fake_cache": "mmo.testing.fakes",
    "failure_of": "mmo.testing.fakes",
    "fake_context": "mmo.testing.fakes",
    "handler_factory": "mmo.testing.fakes",
    "result_of": "mmo.testing.fakes",
    "TwistdProcess": "mmo.testing.processes",
    "free_port": "mmo.testing.processes",
    "FakeZmqContext": "mmo.testing.sockets",
    "FakeZmqSocket": "mmo.testing.sockets",
}

__all__ = [
    "FakeCall",
    "FakeDatabase",
    "FakeDirectory",
    "FakeLink",
    "FakeRegistration",
    "FakeRegistryView",
    "FakeRuntime",
    "FakeSend",
    "FakeSessions",
    "FakeSubscription",
    "FakeZmqContext",
    "FakeZmqSocket",
    "TwistdProcess",
    "as_player",
    "before_login",
    "call",
    "failure_of",
    "fake_cache",
    "fake_context",
    "free_port",
    "handler_factory",
    "result_of",
]


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use (PEP 562)."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
