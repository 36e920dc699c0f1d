"""SSOService on a database: accounts in the accounts table, tokens, seeding, outages."""

from __future__ import annotations

import pytest

from mmo.data import DatabaseUnavailable, migrate, tokens
from mmo.examples.sso import AccountExists, BadCredentials, SSOService
from mmo.testing import FakeDatabase, call, handler_factory, result_of

KEY = "0123456789abcdef-key"


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A signing key."""
    monkeypatch.setenv(tokens.KEY_ENV, KEY)


@pytest.fixture
def db() -> FakeDatabase:
    """A migrated fake database."""
    database = FakeDatabase()
    result_of(migrate(database))
    return database


def test_accounts_are_rows_with_salted_scrypt_hashes(db: FakeDatabase) -> None:
    """Register writes a row; the stored hash names its parameters and holds no password."""
    sso = handler_factory(SSOService, db=db)
    assert result_of(call(sso, "register", user="harry", password="hedwig")) == {"user_id": "harry"}
    result_of(call(sso, "register", user="ron", password="hedwig"))
    rows = result_of(db.run_query("SELECT user_id, password_hash FROM accounts ORDER BY 1"))
    assert [r[0] for r in rows] == ["harry", "ron"]
    harry, ron = (r[1] for r in rows)
    assert harry.startswith("scrypt$4096$8$1$") and harry != ron
    assert "hedwig" not in harry + ron
    assert sso.accounts == {}  # nothing in memory


def test_login_checks_the_database_and_signs_a_token(db: FakeDatabase) -> None:
    """The right password gets a token for the user; a new handler on the same db agrees."""
    result_of(call(handler_factory(SSOService, db=db), "register", user="harry", password="hedwig"))
    sso = handler_factory(SSOService, db=db)  # another process, the same database
    reply = result_of(call(sso, "login", user="harry", password="hedwig"))
    assert reply["user_id"] == "harry"
    assert tokens.verify(reply["auth_token"], KEY.encode()) == "harry"


def test_errors_on_the_database(db: FakeDatabase) -> None:
    """Duplicate, wrong password and unknown user are AccountExists and BadCredentials."""
    sso = handler_factory(SSOService, db=db)
    result_of(call(sso, "register", user="harry", password="hedwig"))
    with pytest.raises(AccountExists, match="harry"):
        result_of(call(sso, "register", user="harry", password="other"))
    with pytest.raises(BadCredentials) as wrong:
        result_of(call(sso, "login", user="harry", password="nope"))
    with pytest.raises(BadCredentials) as unknown:
        result_of(call(sso, "login", user="draco", password="hedwig"))
    assert str(wrong.value) == str(unknown.value)


def test_a_raised_cost_leaves_old_hashes_valid(db: FakeDatabase) -> None:
    """Hashes keep their own parameters: after raising scrypt_n, old accounts still log in."""
    result_of(call(handler_factory(SSOService, db=db), "register", user="harry", password="hedwig"))

    class Costly(SSOService):
        scrypt_n = 2**13

    sso = handler_factory(Costly, db=db)
    assert result_of(call(sso, "login", user="harry", password="hedwig"))["user_id"] == "harry"
    result_of(call(sso, "register", user="ron", password="scabbers"))
    (stored,) = result_of(db.run_query("SELECT password_hash FROM accounts WHERE user_id = 'ron'"))
    assert stored[0].startswith("scrypt$8192$")


def test_seeded_accounts_are_added_once_at_start(db: FakeDatabase) -> None:
    """The setting accounts adds missing accounts at start; restarting does not duplicate
    them."""
    for _ in range(2):
        sso = handler_factory(SSOService, db=db, settings={"accounts": "alice:pw1,bob:pw2"})
        result_of(sso.start())
    rows = result_of(db.run_query("SELECT user_id FROM accounts ORDER BY 1"))
    assert rows == [("alice",), ("bob",)]
    assert result_of(call(sso, "login", user="bob", password="pw2"))["user_id"] == "bob"


def test_a_database_outage_is_reported_clearly(db: FakeDatabase) -> None:
    """With the database down, register and login fail with DatabaseUnavailable."""
    sso = handler_factory(SSOService, db=db)
    db.down = DatabaseUnavailable("postgresql://127.0.0.1:5432/test: connection refused")
    with pytest.raises(DatabaseUnavailable, match="refused"):
        result_of(call(sso, "register", user="harry", password="hedwig"))
    with pytest.raises(DatabaseUnavailable):
        result_of(call(sso, "login", user="harry", password="hedwig"))
