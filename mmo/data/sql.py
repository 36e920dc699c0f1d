"""SQL text helpers: placeholder translation and splitting a script into statements."""

from __future__ import annotations

from functools import lru_cache

from mmo.data.errors import DatabaseError

__all__ = ["short", "split_statements", "to_qmark"]


@lru_cache(maxsize=512)
def to_qmark(sql: str) -> str:
    """Translate psycopg placeholders to SQLite's: ``%s`` -> ``?`` and ``%%`` -> ``%``.

    Raises:
        DatabaseError: any other ``%`` sequence (named ``%(x)s`` placeholders included),
            which would mean one thing on PostgreSQL and another on SQLite.
    """
    out: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c == "%":
            following = sql[i + 1 : i + 2]
            if following == "s":
                out.append("?")
            elif following == "%":
                out.append("%")
            else:
                raise DatabaseError(
                    f"unsupported placeholder {sql[i : i + 3]!r} in {short(sql)!r}: "
                    "use %s for parameters and %% for a literal %"
                )
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def split_statements(script: str) -> list[str]:
    """Split a SQL script into statements at ``;`` outside quotes and comments.

    Comments (``-- ...`` to the end of the line) are dropped; empty statements too.
    """
    statements: list[str] = []
    current: list[str] = []
    i, n = 0, len(script)
    while i < n:
        c = script[i]
        if c == "-" and script.startswith("--", i):
            end = script.find("\n", i)
            i = n if end < 0 else end
            continue
        if c in ("'", '"'):
            end = script.find(c, i + 1)
            while end >= 0 and script.startswith(c * 2, end):
                end = script.find(c, end + 2)  # a doubled quote is an escaped one
            if end < 0:
                raise DatabaseError(f"unterminated {c} quote in SQL script")
            current.append(script[i : end + 1])
            i = end + 1
            continue
        if c == ";":
            statement = "".join(current).strip()
            if statement:
                statements.append(statement)
            current = []
        else:
            current.append(c)
        i += 1
    statement = "".join(current).strip()
    if statement:
        statements.append(statement)
    return statements


def short(sql: str, limit: int = 80) -> str:
    """``sql`` on one line, cut to ``limit`` characters, for error messages."""
    flat = " ".join(sql.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
