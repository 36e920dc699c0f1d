"""What the fight dispatcher refuses with; callers see each as a ``RemoteError`` whose
``type`` is the class name (``PoolFull``, ``PoolDraining``, ...)."""

from __future__ import annotations

from mmo.errors import RemoteError


class FightError(RemoteError):
    """Base of the dispatcher's refusals: sent as is, its class name as the type."""

    def __init__(self, message: str) -> None:
        super().__init__(message, type(self).__name__)


class PoolFull(FightError):
    """No fight process had room before the caller's deadline (all at the cap, at the max)."""


class PoolDraining(FightError):
    """The dispatcher is shutting down and takes no new fights."""


class UnknownFight(FightError):
    """No such fight is allocated (released, expired, lost, or never)."""


class NotInFight(FightError):
    """The player is not one of the fight's players, or the fight is on another process."""


class BadFight(FightError):
    """The request does not describe a fight (players missing, too many, repeated...)."""
