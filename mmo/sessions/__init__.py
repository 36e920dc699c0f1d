"""The session service: the record of every client session, so any broker can resume it.

Run it as a logic worker (``--handler mmo.sessions:SessionService``, service
``session``); brokers call it at login, on a lost connection, at resume and at
logout, and logic subscribes to its ``enter``/``online``/``offline``/``leave``
events. The records live in the cache (``--cache``): several instances sharing a
Redis serve the same sessions. See ``docs/edge.md`` ("Sessions", "Session service calls").
"""

from mmo.sessions.service import ResumeFailed, SessionService
from mmo.sessions.store import SessionStore, StoredSession

__all__ = ["ResumeFailed", "SessionService", "SessionStore", "StoredSession"]
