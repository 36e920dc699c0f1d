"""Schema migrations: versioned SQL files applied at start, recorded in ``mmo_schema``.

A migrations package holds files named ``NNNN_name.sql`` (``0001_accounts.sql``):
plain SQL that runs on both PostgreSQL and SQLite (``TEXT``, ``BIGINT``,
``INTEGER``, ``DOUBLE PRECISION``, ``PRIMARY KEY``, ``CREATE INDEX``...; no
``SERIAL``, no ``BLOB``/``BYTEA``). Statements end with ``;``.

:func:`migrate` applies, in one transaction, the files the database has not
seen, and records each as ``(component, version, name, checksum)``. It is
idempotent and safe when several processes start at once (PostgreSQL: an
advisory lock; SQLite: ``BEGIN IMMEDIATE``). It refuses, with
:class:`~mmo.data.errors.SchemaTooNew`, a database whose schema is newer than
the code, and with :class:`~mmo.data.errors.MigrationError` one where a file
applied earlier has changed since, or a migrations package that holds no file at
all (an install without its data files must not look like an empty schema).
"""

from __future__ import annotations

import hashlib
import re
import time
import zlib
from dataclasses import dataclass
from importlib import resources
from typing import Any

from twisted.internet import defer

from mmo.data.base import Cursor, Database
from mmo.data.errors import MigrationError, SchemaTooNew
from mmo.data.sql import split_statements

__all__ = ["Migration", "load_migrations", "migrate"]

_NAME = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")

SCHEMA_TABLE = """
CREATE TABLE IF NOT EXISTS mmo_schema (
    component TEXT NOT NULL,
    version INTEGER NOT NULL,
    name TEXT NOT NULL,
    checksum TEXT NOT NULL,
    applied_at BIGINT NOT NULL,
    PRIMARY KEY (component, version)
)
"""


@dataclass(frozen=True)
class Migration:
    """One migration file.

    Attributes:
        version: its number (1, 2, ...).
        name: its file name.
        sql: its text.
        checksum: SHA-256 of its text, to notice a file changed after it was applied.
    """

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        """SHA-256 of the file's text (line endings normalised)."""
        return hashlib.sha256(self.sql.replace("\r\n", "\n").encode()).hexdigest()

    def statements(self) -> list[str]:
        """The file's statements, in order."""
        return split_statements(self.sql)


def load_migrations(package: str = "mmo.data.migrations") -> list[Migration]:
    """The migrations of ``package``, by version: 1, 2, ... with no gap.

    Raises:
        MigrationError: the package cannot be imported or holds no ``.sql`` file (an
            install that left the data files out), a ``.sql`` file is misnamed, or a
            version is missing or repeated.
    """
    try:
        entries = list(resources.files(package).iterdir())
    except ModuleNotFoundError as e:
        raise MigrationError(f"{package}: no such migrations package ({e})") from e
    found: dict[int, Migration] = {}
    for entry in entries:
        if not entry.name.endswith(".sql"):
            continue
        match = _NAME.fullmatch(entry.name)
        if match is None:
            raise MigrationError(f"{package}: {entry.name!r} is not named NNNN_name.sql")
        version = int(match.group(1))
        if version in found:
            raise MigrationError(
                f"{package}: {entry.name} and {found[version].name} have the same version"
            )
        found[version] = Migration(version, entry.name, entry.read_text(encoding="utf-8"))
    if not found:
        # An empty schema would "apply" nothing and let the code fail later on a missing
        # table; this is what a wheel built without its package data looks like.
        raise MigrationError(
            f"{package}: no migration files (NNNN_name.sql) found; "
            "is the package installed without its data files?"
        )
    versions = sorted(found)
    if versions != list(range(1, len(versions) + 1)):
        raise MigrationError(f"{package}: versions must be 1, 2, 3... with no gap: {versions}")
    return [found[v] for v in versions]


@defer.inlineCallbacks
def _apply(
    cursor: Cursor, dialect: str, component: str, migrations: list[Migration], now: int
) -> Any:
    if dialect == "postgresql":
        # Serialises concurrent starts; released at commit.
        key = zlib.crc32(f"mmo_schema:{component}".encode())
        yield cursor.execute("SELECT pg_advisory_xact_lock(%s)", (key,))
    yield cursor.execute(SCHEMA_TABLE)
    yield cursor.execute(
        "SELECT version, name, checksum FROM mmo_schema WHERE component = %s ORDER BY version",
        (component,),
    )
    applied = {int(v): (name, checksum) for v, name, checksum in cursor.fetchall()}
    known = {m.version: m for m in migrations}
    newest = max(known, default=0)
    if applied and max(applied) > newest:
        top = max(applied)
        raise SchemaTooNew(
            f"the database's {component!r} schema is at version {top} "
            f"({applied[top][0]}), newer than this code's {newest}: "
            "refusing to run on it; upgrade the code or use another database"
        )
    for version, (name, checksum) in sorted(applied.items()):
        if known[version].checksum != checksum:
            raise MigrationError(
                f"migration {name} of {component!r} was changed after it was applied; "
                "add a new migration instead of editing an applied one"
            )
    if sorted(applied) != list(range(1, len(applied) + 1)):
        raise MigrationError(f"{component!r}: recorded versions have a gap: {sorted(applied)}")
    done = []
    for migration in migrations:
        if migration.version in applied:
            continue
        for statement in migration.statements():
            yield cursor.execute(statement)
        yield cursor.execute(
            "INSERT INTO mmo_schema (component, version, name, checksum, applied_at) "
            "VALUES (%s, %s, %s, %s, %s)",
            (component, migration.version, migration.name, migration.checksum, now),
        )
        done.append(migration.name)
    return done


def migrate(
    db: Database,
    package: str = "mmo.data.migrations",
    component: str = "mmo",
    *,
    timeout: float | None = None,
) -> defer.Deferred[list[str]]:
    """Apply ``package``'s migrations that ``db`` lacks; fire with the names applied.

    A game adds its own tables with its own package and component name, e.g.
    ``yield migrate(self.db, "mygame.migrations", "mygame")`` in a handler's ``start``.

    Raises (through the Deferred):
        SchemaTooNew: the database has a version this code does not know.
        MigrationError: bad files, or an applied file changed since.
        DatabaseUnavailable: the database cannot be reached.
    """
    try:
        migrations = load_migrations(package)
    except MigrationError as e:
        return defer.fail(e)
    return db.run_interaction(
        _apply, db.dialect, component, migrations, int(time.time()), timeout=timeout
    )
