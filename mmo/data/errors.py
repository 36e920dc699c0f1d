"""The errors of the data layer, each distinct and clear.

They derive from :class:`mmo.errors.MmoError` with the ``REMOTE`` code, so a
handler that lets one escape gives its caller a ``RemoteError`` whose ``type``
is the class name (``DatabaseUnavailable``, ``CacheUnavailable``...).
"""

from __future__ import annotations

from mmo.errors import MmoError
from mmo.wire.gen.mmo.ttypes import ErrorCode

__all__ = [
    "CacheError",
    "CacheUnavailable",
    "DataError",
    "DatabaseError",
    "DatabaseTimeout",
    "DatabaseUnavailable",
    "IntegrityError",
    "MigrationError",
    "SchemaTooNew",
]


class DataError(MmoError):
    """Base of every data-layer error."""

    code = ErrorCode.REMOTE


class DatabaseError(DataError):
    """The database refused a statement (bad SQL, wrong types...): retrying will not help."""


class IntegrityError(DatabaseError):
    """A constraint was violated (a duplicate primary key, a NOT NULL column...)."""


class DatabaseUnavailable(DatabaseError):
    """The database cannot be reached or the connection was lost: it may work again later.

    The statement may or may not have run if the connection broke while it was in flight.
    """


class DatabaseTimeout(DatabaseUnavailable):
    """The operation did not finish within its deadline (its connection is closed)."""


class MigrationError(DatabaseError):
    """The migrations cannot be applied (a malformed file, one changed after it was applied...)."""


class SchemaTooNew(MigrationError):
    """The database's schema is newer than this code knows: refusing to touch it."""


class CacheError(DataError):
    """The cache refused an operation (e.g. ``incr`` of a value that is not an integer)."""


class CacheUnavailable(CacheError):
    """The cache cannot be reached or did not answer within the deadline."""
