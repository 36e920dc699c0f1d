"""SSOService in memory: registration, login, validation, hashing, tokens, env seeding."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import pytest

from mmo.config import ConfigError
from mmo.data import tokens
from mmo.errors import MmoError, RemoteError, from_wire
from mmo.examples.sso import (
    AccountExists,
    BadCredentials,
    InvalidAccount,
    LoginThrottled,
    RegistrationThrottled,
    SSOService,
)
from mmo.testing import before_login, call, handler_factory, result_of
from mmo.wire.gen.mmo.ttypes import ErrorCode

KEY = "k" * 32


@pytest.fixture(autouse=True)
def _no_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests start with a signing key, not in demo mode."""
    monkeypatch.delenv(tokens.DEMO_ENV, raising=False)
    monkeypatch.setenv(tokens.KEY_ENV, KEY)


@pytest.fixture
def sso() -> SSOService:
    """An SSO service on a fake runtime."""
    return handler_factory(SSOService)


def test_register_then_login(sso: SSOService) -> None:
    """A registered user logs in with its password and gets its user id, name and a token."""
    assert result_of(call(sso, "register", user="harry", password="hedwig")) == {"user_id": "harry"}
    reply = result_of(call(sso, "login", user="harry", password="hedwig"))
    assert set(reply) == {"user_id", "name", "auth_token", "expires"}
    assert reply["user_id"] == reply["name"] == "harry"
    assert tokens.verify(reply["auth_token"], KEY.encode()) == "harry"


def test_login_token_expires_after_token_ttl(sso: SSOService) -> None:
    """The token's expiry is token_ttl from now; after it, verify raises TokenExpired."""
    result_of(call(sso, "register", user="harry", password="hedwig"))
    reply = result_of(call(sso, "login", user="harry", password="hedwig"))
    assert abs(reply["expires"] - (time.time() + sso.settings.token_ttl)) < 5
    with pytest.raises(tokens.TokenExpired):
        tokens.verify(reply["auth_token"], KEY.encode(), now=reply["expires"] + 1)
    with pytest.raises(tokens.InvalidToken):
        tokens.verify(reply["auth_token"], b"another-key-of-16+-chars")


def test_sso_refuses_to_start_without_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """No $MMO_AUTH_KEY and no MMO_DEMO=1: a ConfigError naming the variable."""
    monkeypatch.delenv(tokens.KEY_ENV)
    with pytest.raises(ConfigError, match="MMO_AUTH_KEY"):
        handler_factory(SSOService)


def test_demo_mode_signs_with_the_demo_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """MMO_DEMO=1 without a key: tokens are signed with the public demo key."""
    monkeypatch.delenv(tokens.KEY_ENV)
    monkeypatch.setenv(tokens.DEMO_ENV, "1")
    sso = handler_factory(SSOService)
    result_of(call(sso, "register", user="harry", password="hedwig"))
    token = result_of(call(sso, "login", user="harry", password="hedwig"))["auth_token"]
    assert tokens.verify(token, tokens.DEMO_KEY) == "harry"


def test_register_twice_is_account_exists(sso: SSOService) -> None:
    """A user name can be registered once; the first password stays valid."""
    result_of(call(sso, "register", user="harry", password="one"))
    with pytest.raises(AccountExists, match="harry"):
        result_of(call(sso, "register", user="harry", password="two"))
    assert result_of(call(sso, "login", user="harry", password="one"))["user_id"] == "harry"


def test_wrong_password_and_unknown_user_are_indistinguishable(sso: SSOService) -> None:
    """Both a wrong password and an unknown user raise BadCredentials with the same message."""
    result_of(call(sso, "register", user="harry", password="hedwig"))
    with pytest.raises(BadCredentials) as wrong:
        result_of(call(sso, "login", user="harry", password="crookshanks"))
    with pytest.raises(BadCredentials) as unknown:
        result_of(call(sso, "login", user="draco", password="hedwig"))
    assert str(wrong.value) == str(unknown.value)


def test_passwords_are_stored_only_as_salted_scrypt_hashes(sso: SSOService) -> None:
    """No plaintext is kept: each account holds a random salt and a 64-byte scrypt hash."""
    result_of(call(sso, "register", user="a", password="same-password"))
    result_of(call(sso, "register", user="b", password="same-password"))
    (salt_a, hash_a), (salt_b, hash_b) = sso.accounts["a"], sso.accounts["b"]
    assert len(salt_a) == 16 and len(hash_a) == 64
    assert salt_a != salt_b and hash_a != hash_b
    assert b"same-password" not in salt_a + hash_a + salt_b + hash_b
    assert "same-password" not in repr(sso.__dict__)


def test_scrypt_cost_is_small_and_overridable() -> None:
    """The default scrypt cost is the small documented one; a subclass may raise it."""
    assert (SSOService.scrypt_n, SSOService.scrypt_r, SSOService.scrypt_p) == (2**12, 8, 1)

    class Costly(SSOService):
        scrypt_n = 2**13

    sso = handler_factory(Costly)
    result_of(call(sso, "register", user="harry", password="hedwig"))
    salt, digest = sso.accounts["harry"]
    assert digest == sso.hash_password("hedwig", salt)
    assert digest == hashlib.scrypt(b"hedwig", salt=salt, n=2**13, r=8, p=1)
    assert digest != hashlib.scrypt(b"hedwig", salt=salt, n=2**12, r=8, p=1)


@pytest.mark.parametrize(
    "user",
    ["", "x" * 33, "has space", "semi;colon", "émile", None, 42],
)
def test_bad_user_names_are_invalid_accounts(sso: SSOService, user: Any) -> None:
    """A user name must be 1-32 letters, digits, '_' or '-' (register and login alike)."""
    with pytest.raises(InvalidAccount):
        result_of(call(sso, "register", user=user, password="pw"))
    with pytest.raises(InvalidAccount):
        result_of(call(sso, "login", user=user, password="pw"))
    assert sso.accounts == {}


@pytest.mark.parametrize("password", ["", "x" * 129, None, 1234])
def test_bad_passwords_are_invalid_accounts(sso: SSOService, password: Any) -> None:
    """A password must be a string of 1-128 characters (register and login alike)."""
    with pytest.raises(InvalidAccount):
        result_of(call(sso, "register", user="harry", password=password))
    with pytest.raises(InvalidAccount):
        result_of(call(sso, "login", user="harry", password=password))
    assert sso.accounts == {}


def test_names_and_passwords_at_the_limits_are_accepted(sso: SSOService) -> None:
    """A 32-character name of every allowed kind and a 128-character password register."""
    user = "Aa0_-" + "z" * 27
    assert result_of(call(sso, "register", user=user, password="p" * 128)) == {"user_id": user}
    assert result_of(call(sso, "login", user=user, password="p" * 128))["user_id"] == user


def test_errors_reach_callers_as_typed_remote_errors() -> None:
    """Each SSO error carries the REMOTE code, so a caller gets a RemoteError of that type."""
    for cls in (AccountExists, BadCredentials, InvalidAccount):
        error = cls("why")
        assert isinstance(error, MmoError) and error.code == ErrorCode.REMOTE
        remote = from_wire(error.code, cls.__name__, "why")
        assert isinstance(remote, RemoteError) and remote.type == cls.__name__


def test_accounts_are_seeded_from_the_setting() -> None:
    """The setting accounts, "user:password,...", creates those accounts (a password may
    hold ':')."""
    sso = handler_factory(SSOService, settings={"accounts": "alice:pw1, bob:p:w2,"})
    assert sorted(sso.accounts) == ["alice", "bob"]
    assert result_of(call(sso, "login", user="alice", password="pw1"))["user_id"] == "alice"
    assert result_of(call(sso, "login", user="bob", password="p:w2"))["user_id"] == "bob"


@pytest.mark.parametrize("spec", ["alice", "alice:", "bad name:pw", "alice:a,alice:b"])
def test_a_bad_seed_is_a_config_error(spec: str) -> None:
    """A malformed, invalid or repeated seeded account is refused, naming the setting."""
    with pytest.raises(ConfigError, match="accounts"):
        handler_factory(SSOService, settings={"accounts": spec})


def test_sso_serves_register_and_login_only() -> None:
    """The service's method table is register and login, neither retried elsewhere."""
    assert SSOService.method_names() == {"register": False, "login": False}
    assert SSOService.default_service == "sso"


# -- abuse limits ---------------------------------------------------------------------


def test_login_and_register_are_login_methods_only() -> None:
    """Players reach login and register before login only; after it they do not exist."""
    meta = SSOService.registry_meta()
    assert (meta["login"], meta["client"]) == (["login", "register"], [])


def test_guessing_one_account_from_one_address_is_throttled_not_the_owner(
    sso: SSOService,
) -> None:
    """After login_failures_per_pair wrong passwords from one address, that address is refused
    for that account (even with the right password) until the window ends; the owner from
    another address logs in meanwhile."""
    guesser, owner = before_login("10.6.6.6"), before_login("10.1.1.1")
    result_of(call(sso, "register", user="harry", password="hedwig"))
    for _ in range(5):
        with pytest.raises(BadCredentials):
            result_of(call(sso, "login", user="harry", password="guess", **guesser))
    with pytest.raises(LoginThrottled, match="try again in"):
        result_of(call(sso, "login", user="harry", password="hedwig", **guesser))
    assert result_of(call(sso, "login", user="harry", password="hedwig", **owner))["user_id"]
    assert sso.counters["logins_throttled"] == 1
    sso.clock.advance(sso.settings.login_window)
    assert result_of(call(sso, "login", user="harry", password="hedwig", **guesser))["user_id"]


def test_one_address_trying_many_accounts_is_throttled(sso: SSOService) -> None:
    """Failures from one address across accounts stop at login_failures_per_address."""
    guesser = before_login("10.6.6.6")
    for n in range(30):
        with pytest.raises(BadCredentials):
            result_of(call(sso, "login", user=f"user{n}", password="guess", **guesser))
    with pytest.raises(LoginThrottled):
        result_of(call(sso, "login", user="someone", password="guess", **guesser))
    with pytest.raises(BadCredentials):
        result_of(call(sso, "login", user="someone", password="guess", **before_login("10.2.2.2")))


def test_many_addresses_guessing_one_account_lock_it_for_the_window() -> None:
    """Past login_failures_per_account (from any addresses) the account waits for its window."""
    sso = handler_factory(SSOService, settings={"login_failures_per_account": 6})
    owner = before_login("10.1.1.1")
    result_of(call(sso, "register", user="harry", password="hedwig"))
    for n in range(6):
        guesser = before_login(f"10.9.0.{n}")
        with pytest.raises(BadCredentials):
            result_of(call(sso, "login", user="harry", password="guess", **guesser))
    with pytest.raises(LoginThrottled):
        result_of(call(sso, "login", user="harry", password="hedwig", **owner))
    sso.clock.advance(sso.settings.login_window)
    assert result_of(call(sso, "login", user="harry", password="hedwig", **owner))["user_id"]


def test_registrations_per_address_are_limited() -> None:
    """registrations_per_address accounts per window from one address; others are served."""
    sso = handler_factory(SSOService, settings={"registrations_per_address": 3})
    bot, human = before_login("10.6.6.6"), before_login("10.1.1.1")
    for n in range(3):
        result_of(call(sso, "register", user=f"bot{n}", password="pw", **bot))
    with pytest.raises(RegistrationThrottled):
        result_of(call(sso, "register", user="bot3", password="pw", **bot))
    assert "bot3" not in sso.accounts
    result_of(call(sso, "register", user="human", password="pw", **human))
    assert sso.counters["registrations_throttled"] == 1
