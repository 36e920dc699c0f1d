"""Errors crossing a process boundary come back as the same, distinct classes."""

from __future__ import annotations

import pytest

from mmo.errors import (
    BadRequest,
    DeadlineExceeded,
    Forbidden,
    InstanceLost,
    MmoError,
    NoLiveInstance,
    RemoteError,
    Unavailable,
    UnknownMethod,
    from_wire,
)
from mmo.wire.gen.mmo.ttypes import ErrorCode

TYPED = {
    ErrorCode.UNKNOWN_METHOD: UnknownMethod,
    ErrorCode.NO_INSTANCE: NoLiveInstance,
    ErrorCode.DEADLINE: DeadlineExceeded,
    ErrorCode.BAD_REQUEST: BadRequest,
    ErrorCode.INSTANCE_LOST: InstanceLost,
    ErrorCode.UNAVAILABLE: Unavailable,
    ErrorCode.FORBIDDEN: Forbidden,
}


@pytest.mark.parametrize(("code", "cls"), sorted(TYPED.items()))
def test_each_code_maps_to_its_class(code: int, cls: type[MmoError]) -> None:
    """Each wire ErrorCode is rebuilt as its own class, carrying the remote message."""
    error = from_wire(code, cls.__name__, "what went wrong")
    assert type(error) is cls
    assert error.code == code
    assert str(error) == "what went wrong"


def test_every_code_is_covered() -> None:
    """Every ErrorCode the wire defines has a class whose code round-trips."""
    assert set(ErrorCode._VALUES_TO_NAMES) == {*TYPED, ErrorCode.REMOTE}
    for code in ErrorCode._VALUES_TO_NAMES:
        assert from_wire(code, "X", "m").code == code


def test_remote_error_keeps_type_and_message() -> None:
    """REMOTE gives a RemoteError with the handler's exception type and message."""
    error = from_wire(ErrorCode.REMOTE, "KeyError", "'user'")
    assert type(error) is RemoteError
    assert (error.type, error.message) == ("KeyError", "'user'")
    assert str(error) == "KeyError: 'user'"
    assert error.code == ErrorCode.REMOTE


@pytest.mark.parametrize("code", [None, 0, 99, -1])
def test_unknown_code_is_remote_error(code: int | None) -> None:
    """An unknown or missing code (a newer peer) still gives a RemoteError with type and message."""
    error = from_wire(code, "FutureError", "from a newer peer")
    assert type(error) is RemoteError
    assert (error.type, error.message) == ("FutureError", "from a newer peer")


def test_missing_type_and_message_have_defaults() -> None:
    """A peer that sends no type or message still yields a readable error."""
    error = from_wire(ErrorCode.REMOTE, None, None)
    assert isinstance(error, RemoteError)
    assert (error.type, error.message) == ("Exception", "")
    assert str(from_wire(ErrorCode.DEADLINE, None, None)) == ""


def test_all_are_mmo_errors() -> None:
    """Every error from_wire can return is an MmoError, so callers can catch them all at once."""
    for code in [*ErrorCode._VALUES_TO_NAMES, None, 99]:
        assert isinstance(from_wire(code, "T", "m"), MmoError)
