"""The errors a caller of a service can get, each distinct and clear.

Every class carries a stable ``code`` (the wire's ``ErrorCode``) so that an
error crossing a process boundary comes back as the same class.
"""

from __future__ import annotations

from mmo.wire.gen.mmo.ttypes import ErrorCode


class MmoError(Exception):
    """Base class of every error mmo raises to its users."""

    code: int = 0


class RemoteError(MmoError):
    """The remote handler raised; ``type`` and ``message`` say what it raised."""

    code = ErrorCode.REMOTE

    def __init__(self, message: str, type: str = "Exception") -> None:
        super().__init__(f"{type}: {message}")
        self.type = type
        self.message = message


class UnknownMethod(MmoError):
    """The service has no handler for the method called."""

    code = ErrorCode.UNKNOWN_METHOD


class NoLiveInstance(MmoError):
    """No live instance of the service is known to the registry."""

    code = ErrorCode.NO_INSTANCE


class DeadlineExceeded(MmoError):
    """The call's deadline passed before an answer came."""

    code = ErrorCode.DEADLINE


class BadRequest(MmoError):
    """The message could not be decoded or is not valid."""

    code = ErrorCode.BAD_REQUEST


class InstanceLost(MmoError):
    """The instance died with this (non-idempotent) call in flight: it may or may not have run."""

    code = ErrorCode.INSTANCE_LOST


class Unavailable(MmoError):
    """The instance is stopping and did not run the call (callers resend it elsewhere)."""

    code = ErrorCode.UNAVAILABLE


class Forbidden(MmoError):
    """The method exists, but the caller may not call it (its role is not one the
    method allows). Players never see it: to them such a method does not exist."""

    code = ErrorCode.FORBIDDEN


_BY_CODE: dict[int, type[MmoError]] = {
    cls.code: cls
    for cls in (
        UnknownMethod,
        NoLiveInstance,
        DeadlineExceeded,
        BadRequest,
        InstanceLost,
        Unavailable,
        Forbidden,
    )
}


def from_wire(code: int | None, type_name: str | None, message: str | None) -> MmoError:
    """Rebuild the error a remote process reported."""
    if code == ErrorCode.REMOTE or code not in _BY_CODE:
        return RemoteError(message or "", type_name or "Exception")
    return _BY_CODE[code](message or "")


def outcome(error: BaseException | None) -> str:
    """How a call ended, as metrics label it: ``ok``, or the error's code in lower case
    (``remote`` for anything a handler raised that is not an MmoError)."""
    if error is None:
        return "ok"
    code = getattr(error, "code", 0) if isinstance(error, MmoError) else ErrorCode.REMOTE
    return ErrorCode._VALUES_TO_NAMES.get(code, "remote").lower()
