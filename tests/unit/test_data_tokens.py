"""Signed tokens: HMAC-SHA256 over (subject, expiry, purpose, nonce), with the shared key."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmo.config import ConfigError
from mmo.data import tokens
from mmo.data.tokens import InvalidToken, TokenExpired, issue, load_key, verify

KEY = b"a-test-key-of-32-bytes-----------"


def test_a_token_verifies_to_its_user_until_it_expires() -> None:
    """verify returns the user id before the expiry and raises TokenExpired from it on."""
    token = issue("harry", KEY, ttl=60, now=1000.0)
    assert verify(token, KEY, now=1000.0) == "harry"
    assert verify(token, KEY, now=1059.0) == "harry"
    assert tokens.expiry_of(token) == 1060
    with pytest.raises(TokenExpired, match="expired"):
        verify(token, KEY, now=1060.0)


def test_integer_user_ids_survive() -> None:
    """A numeric user id comes back as the same integer."""
    assert verify(issue(42, KEY, ttl=60, now=0), KEY, now=1) == 42


def test_another_key_or_a_tampered_token_is_invalid() -> None:
    """A token signed with another key, or with its payload changed, does not verify."""
    token = issue("harry", KEY, ttl=60, now=1000.0)
    with pytest.raises(InvalidToken, match="signature"):
        verify(token, b"another-key-of-at-least-16", now=1000.0)
    forged = issue("draco", b"attacker-key-0123456789", ttl=60, now=1000.0)
    version, _, signature = token.split(".")
    spliced = f"{version}.{forged.split('.')[1]}.{signature}"
    with pytest.raises(InvalidToken):
        verify(spliced, KEY, now=1000.0)


@pytest.mark.parametrize("token", ["", "v1.abc", "v2.a.b", "x.y.z.w", None, 5, "v1.a.\u00e9"])
def test_malformed_tokens_are_invalid(token: object) -> None:
    """Anything but v1.<payload>.<signature> with a good signature is InvalidToken."""
    with pytest.raises(InvalidToken):
        verify(token, KEY)  # type: ignore[arg-type]


def test_key_comes_from_the_environment() -> None:
    """$MMO_AUTH_KEY is the key; it must be at least 16 characters."""
    assert load_key({"MMO_AUTH_KEY": "0123456789abcdef"}) == b"0123456789abcdef"
    with pytest.raises(ConfigError, match="at least 16"):
        load_key({"MMO_AUTH_KEY": "short"})


def test_a_token_is_only_good_for_its_purpose_and_never_repeats() -> None:
    """An auth token does not resume a session, nor the other way round; two tokens
    issued at the same moment for the same subject differ."""
    auth = issue("s1", KEY, ttl=60, now=0)
    resume = issue("s1", KEY, ttl=60, purpose="resume", now=0)
    assert verify(resume, KEY, purpose="resume", now=1) == "s1"
    with pytest.raises(InvalidToken, match="resume"):
        verify(auth, KEY, purpose="resume", now=1)
    with pytest.raises(InvalidToken, match="auth"):
        verify(resume, KEY, now=1)
    assert issue("s1", KEY, ttl=60, now=0) != auth


def test_key_comes_from_a_file(tmp_path: Path) -> None:
    """$MMO_AUTH_KEY_FILE names a file holding the key (whitespace around it ignored);
    $MMO_AUTH_KEY wins when both are set; a missing file is a ConfigError naming it."""
    path = tmp_path / "auth.key"
    path.write_text("  0123456789abcdef-from-file\n")
    assert load_key({"MMO_AUTH_KEY_FILE": str(path)}) == b"0123456789abcdef-from-file"
    both = {"MMO_AUTH_KEY_FILE": str(path), "MMO_AUTH_KEY": "0123456789abcdef"}
    assert load_key(both) == b"0123456789abcdef"
    with pytest.raises(ConfigError, match=r"MMO_AUTH_KEY_FILE.*nope"):
        load_key({"MMO_AUTH_KEY_FILE": str(tmp_path / "nope")})
    path.write_text("short\n")
    with pytest.raises(ConfigError, match=r"MMO_AUTH_KEY_FILE.*at least 16"):
        load_key({"MMO_AUTH_KEY_FILE": str(path)})


def test_no_key_is_refused_unless_demo() -> None:
    """Without a key: ConfigError naming MMO_AUTH_KEY, or the demo key with MMO_DEMO=1."""
    with pytest.raises(ConfigError, match=r"MMO_AUTH_KEY.*MMO_DEMO=1"):
        load_key({})
    with pytest.raises(ConfigError):
        load_key({"MMO_DEMO": "yes"})
    assert load_key({"MMO_DEMO": "1"}) == tokens.DEMO_KEY
    assert load_key({"MMO_DEMO": "1", "MMO_AUTH_KEY": "0123456789abcdef"}) == b"0123456789abcdef"


def test_token_errors_reach_callers_typed() -> None:
    """Token errors carry the REMOTE code, so a caller sees their class name."""
    assert InvalidToken.code == TokenExpired.code == tokens.TokenError.code != 0
    assert issubclass(TokenExpired, tokens.TokenError)
