"""The fight dispatcher role (``twistd mmo-fight``) and the base of fight handlers.

The dispatcher registers as service ``fight`` and keeps a pool of fight
processes (``mmo-worker`` children running a :class:`FightHandler` subclass,
service ``fight-worker``), handing each new fight to the least-loaded one with
room under the cap. See docs/fight.md.
"""

from mmo.errors import Forbidden
from mmo.fight.errors import (
    BadFight,
    FightError,
    NotInFight,
    PoolDraining,
    PoolFull,
    UnknownFight,
)
from mmo.fight.handler import (
    FightHandler,
    FightSettings,
    HeldFight,
    moved_session,
    require_session,
)

__all__ = [
    "BadFight",
    "FightError",
    "FightHandler",
    "FightSettings",
    "Forbidden",
    "HeldFight",
    "NotInFight",
    "PoolDraining",
    "PoolFull",
    "UnknownFight",
    "moved_session",
    "require_session",
]
