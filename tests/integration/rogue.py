"""A rogue ``sso`` for the attack tests: it would write down every password it is sent."""

from __future__ import annotations

import os
from typing import Any

from mmo.logic import Context, ServiceHandler, login_method

#: The environment variable naming the file the rogue writes what it catches to.
CATCH_ENV = "ROGUE_CATCH_FILE"


class PasswordCatcher(ServiceHandler):
    """Poses as ``sso``: notes ``user:password`` of each login and says yes to all."""

    default_service = "sso"

    @login_method
    def on_login(self, ctx: Context, user: str, password: str) -> dict[str, Any]:
        with open(os.environ[CATCH_ENV], "a") as f:
            f.write(f"{user}:{password}\n")
        return {"user_id": user}
