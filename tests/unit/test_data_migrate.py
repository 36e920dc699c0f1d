"""Migrations: versioned files, applied once, recorded, refusing newer or edited schemas."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mmo.data import DatabaseError, MigrationError, SchemaTooNew, load_migrations, migrate
from mmo.testing import result_of as value
from mmo.testing.fakes import FakeDatabase


@pytest.fixture
def package(tmp_path: Path) -> Iterator[Any]:
    """Make importable migration packages: ``package(name, {file: sql})`` -> dotted name."""
    sys.path.insert(0, str(tmp_path))
    made: list[str] = []

    def make(name: str, files: dict[str, str]) -> str:
        root = tmp_path / name
        root.mkdir()
        (root / "__init__.py").write_text("")
        for file, sql in files.items():
            (root / file).write_text(sql)
        made.append(name)
        return name

    yield make
    sys.path.remove(str(tmp_path))
    for name in made:
        sys.modules.pop(name, None)


def test_mmo_ships_accounts_then_players() -> None:
    """mmo's own migrations are 0001_accounts.sql and 0002_players.sql."""
    names = [m.name for m in load_migrations()]
    assert names[:2] == ["0001_accounts.sql", "0002_players.sql"]
    assert [m.version for m in load_migrations()] == list(range(1, len(names) + 1))


def test_migrate_applies_once_and_records_versions() -> None:
    """The first run applies every file and records it; the second applies nothing."""
    db = FakeDatabase()
    assert value(migrate(db)) == ["0001_accounts.sql", "0002_players.sql"]
    assert value(migrate(db)) == []
    rows = value(db.run_query("SELECT component, version, name FROM mmo_schema ORDER BY 2"))
    assert rows == [("mmo", 1, "0001_accounts.sql"), ("mmo", 2, "0002_players.sql")]
    assert value(db.run_query("SELECT count(*) FROM accounts")) == [(0,)]


def test_a_newer_schema_is_refused(package: Any) -> None:
    """A database at a version the code lacks: SchemaTooNew, nothing touched."""
    db = FakeDatabase()
    value(migrate(db))
    value(
        db.run_operation(
            "INSERT INTO mmo_schema VALUES (%s, %s, %s, %s, %s)",
            ("mmo", 3, "0003_future.sql", "x", 0),
        )
    )
    with pytest.raises(SchemaTooNew, match=r"version 3 \(0003_future.sql\), newer than .* 2"):
        value(migrate(db))


def test_an_edited_migration_is_refused(package: Any) -> None:
    """A file whose text changed after it was applied: MigrationError naming it."""
    db = FakeDatabase()
    first = package("game_v1", {"0001_items.sql": "CREATE TABLE items (id TEXT);"})
    value(migrate(db, first, "game"))
    edited = package("game_v2", {"0001_items.sql": "CREATE TABLE items (id INTEGER);"})
    with pytest.raises(MigrationError, match=r"0001_items\.sql .* changed"):
        value(migrate(db, edited, "game"))


def test_components_are_versioned_separately(package: Any) -> None:
    """A game's own migrations live beside mmo's, each with its own versions."""
    db = FakeDatabase()
    value(migrate(db))
    game = package(
        "game_tables",
        {
            "0001_items.sql": "CREATE TABLE items (id TEXT PRIMARY KEY);\n"
            "CREATE INDEX items_id ON items (id);",
            "0002_more.sql": "ALTER TABLE items ADD COLUMN n BIGINT NOT NULL DEFAULT 0;",
        },
    )
    assert value(migrate(db, game, "game")) == ["0001_items.sql", "0002_more.sql"]
    assert value(migrate(db)) == []
    value(db.run_operation("INSERT INTO items (id, n) VALUES (%s, %s)", ("sword", 2)))


@pytest.mark.parametrize(
    ("files", "match"),
    [
        ({"1_x.sql": "SELECT 1;"}, "NNNN_name.sql"),
        ({"0001_a.sql": "SELECT 1;", "0001_b.sql": "SELECT 1;"}, "same version"),
        ({"0001_a.sql": "SELECT 1;", "0003_c.sql": "SELECT 1;"}, "no gap"),
    ],
)
def test_bad_migration_files_are_refused(package: Any, files: dict[str, str], match: str) -> None:
    """Misnamed, repeated or missing versions are a MigrationError before anything runs."""
    name = package(f"bad_{abs(hash(match))}", files)
    db = FakeDatabase()
    with pytest.raises(MigrationError, match=match):
        value(migrate(db, name, "bad"))
    assert db.statements == []


def test_a_package_without_migration_files_is_refused(package: Any) -> None:
    """A migrations package with no .sql file (a wheel without its data) is refused, by name."""
    empty = package("no_sql_here", {"README.txt": "the .sql files were left out"})
    with pytest.raises(MigrationError, match=r"no_sql_here: no migration files"):
        load_migrations(empty)
    db = FakeDatabase()
    with pytest.raises(MigrationError, match="no_sql_here"):
        value(migrate(db, empty, "empty"))
    assert db.statements == []


def test_a_missing_migrations_package_is_refused() -> None:
    """A migrations package that cannot be imported is a MigrationError naming it."""
    with pytest.raises(MigrationError, match=r"no_such_migrations: no such migrations package"):
        load_migrations("no_such_migrations")


def test_a_failing_migration_leaves_nothing_behind(package: Any) -> None:
    """A statement that fails rolls the whole run back: no table, no record."""
    db = FakeDatabase()
    broken = package(
        "broken",
        {
            "0001_ok.sql": "CREATE TABLE t1 (x TEXT);",
            "0002_bad.sql": "CREATE TABLE t2 (x TEXT) garbage;",
        },
    )
    with pytest.raises(DatabaseError, match="garbage"):
        value(migrate(db, broken, "broken"))
    tables = value(db.run_query("SELECT name FROM sqlite_master WHERE type = 'table'"))
    assert ("t1",) not in tables
