"""Shared test configuration: the mmo pytest plugin is loaded from the installed package.

Every process the tests start (and the tests themselves) share one token signing key,
made afresh for the run, as an operator would give one to a cluster: brokers, sso and
the session service refuse to start without it (outside ``MMO_DEMO=1``).
"""

import os
import secrets

from mmo.data.tokens import KEY_ENV

os.environ.setdefault(KEY_ENV, secrets.token_urlsafe(32))
