"""SQL helpers: placeholder translation for SQLite and splitting migration scripts."""

from __future__ import annotations

import pytest

from mmo.data.errors import DatabaseError
from mmo.data.sql import short, split_statements, to_qmark


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT 1", "SELECT 1"),
        ("SELECT * FROM t WHERE a = %s AND b = %s", "SELECT * FROM t WHERE a = ? AND b = ?"),
        ("SELECT '100%%' || %s", "SELECT '100%' || ?"),
        ("INSERT INTO t VALUES (%s,%s)", "INSERT INTO t VALUES (?,?)"),
    ],
)
def test_psycopg_placeholders_become_qmarks(sql: str, expected: str) -> None:
    """%s becomes ? and %% becomes %, everything else stays."""
    assert to_qmark(sql) == expected


@pytest.mark.parametrize("sql", ["SELECT %(name)s", "SELECT %d", "SELECT 50%"])
def test_other_percent_sequences_are_refused(sql: str) -> None:
    """Named or other placeholders, and a lone %, are a clear DatabaseError."""
    with pytest.raises(DatabaseError, match="placeholder"):
        to_qmark(sql)


def test_scripts_split_at_semicolons_outside_quotes_and_comments() -> None:
    """A ; inside quotes or a comment does not end a statement; comments are dropped."""
    script = """
    -- a comment; with a semicolon
    CREATE TABLE a (x TEXT DEFAULT 'a;b');
    INSERT INTO a VALUES ('it''s; fine');  -- trailing
    CREATE INDEX a_x ON a (x)
    """
    assert split_statements(script) == [
        "CREATE TABLE a (x TEXT DEFAULT 'a;b')",
        "INSERT INTO a VALUES ('it''s; fine')",
        "CREATE INDEX a_x ON a (x)",
    ]


def test_an_unterminated_quote_is_an_error() -> None:
    """A script with an open quote is refused rather than run in pieces."""
    with pytest.raises(DatabaseError, match="unterminated"):
        split_statements("INSERT INTO a VALUES ('oops);")


def test_short_flattens_and_cuts_sql_for_messages() -> None:
    """Messages show SQL on one line, at most the limit long."""
    assert short("SELECT\n  1") == "SELECT 1"
    assert short("x" * 100, limit=10) == "xxxxxxx..."
