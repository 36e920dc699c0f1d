"""The data layer: SQL databases and caches behind small asynchronous interfaces.

* :class:`Database` (``run_query``, ``run_operation``, ``run_interaction``):
  :class:`PostgresDatabase` (txpostgres pool) or :class:`SQLiteDatabase`
  (``twisted.enterprise.adbapi``), chosen by URL with :func:`make_database`.
* :class:`Cache` (``get``, ``set``, ``add``, ``delete``, ``take``, ``incr``,
  ``expire``): :class:`RedisCache` (txredisapi: one server, shards, or Sentinel)
  or :class:`MemoryCache` (in-process), chosen by URL with :func:`make_cache`.
* :func:`migrate` applies versioned SQL files at start; :mod:`mmo.data.tokens`
  signs and verifies session tokens.

Every implementation is a Twisted Service and every operation has a deadline.
A worker given ``--database``/``--cache`` hands them to its handler as
``self.db``/``self.cache``. See ``docs/data.md``.
"""

from typing import TYPE_CHECKING, Any

from mmo.data.base import Cache, Cursor, Database, Params, Row
from mmo.data.errors import (
    CacheError,
    CacheUnavailable,
    DatabaseError,
    DatabaseTimeout,
    DatabaseUnavailable,
    DataError,
    IntegrityError,
    MigrationError,
    SchemaTooNew,
)
from mmo.data.migrate import load_migrations, migrate
from mmo.data.urls import make_cache, make_database, parse_cache_url, parse_database_url

if TYPE_CHECKING:
    from mmo.data.memory import MemoryCache
    from mmo.data.postgres import PostgresDatabase
    from mmo.data.rediscache import RedisCache
    from mmo.data.sqlite import SQLiteDatabase

# The implementations import their drivers (psycopg2, txredisapi, sqlite3): only on use.
_LAZY = {
    "MemoryCache": "mmo.data.memory",
    "PostgresDatabase": "mmo.data.postgres",
    "RedisCache": "mmo.data.rediscache",
    "SQLiteDatabase": "mmo.data.sqlite",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mmo.data' has no attribute {name!r}")


__all__ = [
    "Cache",
    "CacheError",
    "CacheUnavailable",
    "Cursor",
    "DataError",
    "Database",
    "DatabaseError",
    "DatabaseTimeout",
    "DatabaseUnavailable",
    "IntegrityError",
    "MemoryCache",
    "MigrationError",
    "Params",
    "PostgresDatabase",
    "RedisCache",
    "Row",
    "SQLiteDatabase",
    "SchemaTooNew",
    "load_migrations",
    "make_cache",
    "make_database",
    "migrate",
    "parse_cache_url",
    "parse_database_url",
]
