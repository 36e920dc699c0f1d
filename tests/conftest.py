"""Shared test configuration: the mmo pytest plugin is loaded from the installed package.

Every process the tests start (and the tests themselves) share one token signing key and
one CURVE keys directory, made afresh for the run, as an operator would give them to a
cluster: brokers, sso and the session service refuse to start without the token key
(outside ``MMO_DEMO=1``), and every role without CURVE keys (unless told ``--insecure``).
"""

import atexit
import os
import secrets
import shutil
import tempfile

from mmo.config import INSECURE_ENV
from mmo.data.tokens import KEY_ENV
from mmo.zmq.curve import ENV_KEYS, create_keys

os.environ.setdefault(KEY_ENV, secrets.token_urlsafe(32))
if not os.environ.get(ENV_KEYS) and os.environ.get(INSECURE_ENV) != "1":
    _keys = tempfile.mkdtemp(prefix="mmo-test-curve-")
    create_keys(_keys, force=True)
    os.environ[ENV_KEYS] = _keys
    atexit.register(shutil.rmtree, _keys, True)
