"""Helpers for testing mmo services: handler factories and real-process fixtures.

* :func:`handler_factory` builds a handler with a fake runtime (Nameko's
  ``worker_factory`` idea): call its ``on_<name>`` methods directly in a unit test.
* :class:`TwistdProcess` runs a real ``twistd`` role in a child process, for
  integration tests; it stops what it starts.

The pytest plugin (:mod:`mmo.testing.plugin`) exposes them as fixtures.
"""

from mmo.testing.fakes import FakeRuntime, fake_context, handler_factory, result_of
from mmo.testing.processes import TwistdProcess, free_port

__all__ = [
    "FakeRuntime",
    "TwistdProcess",
    "fake_context",
    "free_port",
    "handler_factory",
    "result_of",
]
