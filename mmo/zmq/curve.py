"""CURVE security for the internal ZeroMQ links, configured by ``$MMO_CURVE_KEYS``.

Set to a directory, ``MMO_CURVE_KEYS`` turns on CURVE (encryption and client
authentication) for every ``tcp://`` socket of the process. Every role (the
twistd plugins) requires it (:func:`role_curve_keys`): without keys a role
refuses to start, unless it is told to run its links in the clear, loudly, by
``--insecure`` (``$MMO_INSECURE=1``, inherited by its children) or ``MMO_DEMO=1``;
then every link uses ZeroMQ's NULL mechanism. Tools and scripts
(:func:`mmo.logic.connect`) use the keys when given and NULL otherwise. The directory
holds, as ``zmq.auth`` certificate files (see ``mmo keys DIR``)::

    cluster.key_secret    the cluster's keypair: the server key of every socket a
                          process binds and the client key of every socket it connects
    cluster.key           its public half (to hand out; not read by mmo)
    authorized/*.key      public keys of the clients allowed to connect; the
                          cluster's own is allowed even when it is not there

Clients are checked over ZAP by pyzmq's own authenticator
(:class:`zmq.auth.thread.ThreadAuthenticator`), started by the first
``tcp://`` bind of a context. docs/security.md says what this protects.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from twisted.logger import Logger
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from mmo.config import DEMO_ENV, INSECURE_ENV, ConfigError, insecure_mode

__all__ = [
    "AUTHORIZED_DIR",
    "CLUSTER_NAME",
    "ENV_KEYS",
    "CurveKeys",
    "create_keys",
    "curve_keys_from_environment",
    "load_curve_keys",
    "provide_curve_keys",
    "role_curve_keys",
    "start_authenticator",
]

log = Logger()

#: The environment variable naming the keys directory.
ENV_KEYS = "MMO_CURVE_KEYS"
#: Base name of the cluster's certificate files (``cluster.key``, ``cluster.key_secret``).
CLUSTER_NAME = "cluster"
#: Subdirectory of the public keys allowed to connect.
AUTHORIZED_DIR = "authorized"
#: Length of a Z85-encoded 32-byte CURVE key.
_Z85_KEY_LENGTH = 40


@dataclass(frozen=True)
class CurveKeys:
    """The CURVE keys of one process; every key Z85-encoded (40 bytes).

    Attributes:
        public_key: this process's public key (as server and as client).
        secret_key: its secret key.
        server_key: public key of the servers it connects to (the cluster's).
        authorized: client public keys its bound sockets accept.
        authorized_dir: where ``authorized`` was read from (for log lines).
    """

    public_key: bytes
    secret_key: bytes = field(repr=False)  # never in a log line
    server_key: bytes
    authorized: frozenset[bytes]
    authorized_dir: str = "the authorized keys given"

    def server_options(self) -> dict[int, Any]:
        """Socket options for a socket about to bind: a CURVE server with this keypair."""
        return {
            zmq.CURVE_SERVER: 1,
            zmq.CURVE_PUBLICKEY: self.public_key,
            zmq.CURVE_SECRETKEY: self.secret_key,
        }

    def client_options(self) -> dict[int, Any]:
        """Socket options for a socket about to connect: a CURVE client of the cluster."""
        # CURVE_SERVERKEY last: setting it is what makes the socket a client again.
        return {
            zmq.CURVE_PUBLICKEY: self.public_key,
            zmq.CURVE_SECRETKEY: self.secret_key,
            zmq.CURVE_SERVERKEY: self.server_key,
        }


def _problem(reason: str) -> ConfigError:
    return ConfigError(ENV_KEYS, reason)


def _checked_key(path: Path, kind: str, key: bytes | None) -> bytes:
    if key is None or len(key) != _Z85_KEY_LENGTH:
        raise _problem(f"{path}: no valid {kind} key in it")
    try:
        z85.decode(key)
    except ValueError as e:
        raise _problem(f"{path}: {kind} key is not Z85: {e}") from e
    return key


def load_curve_keys(directory: str | os.PathLike[str]) -> CurveKeys:
    """Read the keys directory laid out as the module describes.

    Raises:
        ConfigError: (key ``MMO_CURVE_KEYS``) naming the file that is missing or bad.
    """
    root = Path(directory)
    hint = f"(make the keys with `mmo keys {root}`)"
    if not root.is_dir():
        raise _problem(f"{root}: no such directory {hint}")
    keypair = root / f"{CLUSTER_NAME}.key_secret"
    if not keypair.is_file():
        raise _problem(f"{keypair}: missing {hint}")
    authorized_dir = root / AUTHORIZED_DIR
    if not authorized_dir.is_dir():
        raise _problem(f"{authorized_dir}: missing directory of authorized public keys {hint}")
    try:
        public, secret = zmq.auth.load_certificate(keypair)
        authorized = zmq.auth.load_certificates(authorized_dir)
    except (OSError, ValueError) as e:
        raise _problem(f"cannot read the keys in {root}: {e}") from e
    public = _checked_key(keypair, "public", public)
    secret = _checked_key(keypair, "secret", secret)
    for key in authorized:
        _checked_key(authorized_dir, "authorized public", key)
    return CurveKeys(
        public_key=public,
        secret_key=secret,
        server_key=public,
        authorized=frozenset(authorized) | {public},
        authorized_dir=str(authorized_dir),
    )


def curve_keys_from_environment(environ: Mapping[str, str] | None = None) -> CurveKeys | None:
    """The keys named by ``$MMO_CURVE_KEYS``, or ``None`` (NULL security) when it is unset."""
    directory = (os.environ if environ is None else environ).get(ENV_KEYS, "")
    return load_curve_keys(directory) if directory else None


def role_curve_keys(environ: Mapping[str, str] | None = None) -> CurveKeys | None:
    """The keys a role's links use: those ``$MMO_CURVE_KEYS`` names; ``None`` (NULL,
    in the clear) only when insecure links were chosen, which is logged as a warning.

    Raises:
        ConfigError: (key ``MMO_CURVE_KEYS``) no keys and insecure links not chosen,
            or the keys are missing or bad.
    """
    environ = os.environ if environ is None else environ
    keys = curve_keys_from_environment(environ)
    if keys is not None:
        return keys
    if insecure_mode(environ):
        log.warn(
            "INSECURE: {env} is not set, so this process's internal links are NOT encrypted "
            "or authenticated: anyone who reaches its ports may register, call and read "
            "({why}). Never run like this on a network you do not own.",
            env=ENV_KEYS,
            why=f"{DEMO_ENV}=1" if environ.get(INSECURE_ENV, "") != "1" else "--insecure",
        )
        return None
    raise _problem(
        "is not set: every role needs the cluster's CURVE keys (make them once with "
        "`mmo keys DIR`, then set MMO_CURVE_KEYS=DIR for every process; mmo-cluster makes "
        "fresh ones for its children), or run with --insecure to go without, in the clear"
    )


class _Authorized:
    """pyzmq's credentials provider: accepts the keys of a :class:`CurveKeys`.

    Called on the authenticator's thread; a refused key is logged once, on the
    reactor thread (a refused client retries every 100 ms).
    """

    def __init__(self, keys: CurveKeys, reactor: Any) -> None:
        self.keys = keys
        self.reactor = reactor
        self._reported: set[bytes] = set()

    def callback(self, domain: str, key: bytes) -> bool:
        """Whether the client with Z85 public ``key`` may connect."""
        if key in self.keys.authorized:
            return True
        self.reactor.callFromThread(self._report, key)
        return False

    def _report(self, key: bytes) -> None:
        if key not in self._reported:
            self._reported.add(key)
            log.warn(
                "refused a ZeroMQ client: its CURVE key {key} is not in {authorized}",
                key=key.decode(errors="replace"),
                authorized=self.keys.authorized_dir,
            )


def start_authenticator(
    context: zmq.Context[Any], keys: CurveKeys, reactor: Any
) -> ThreadAuthenticator:
    """Start pyzmq's ZAP handler on ``context``, accepting ``keys.authorized`` clients.

    ``stop()`` the authenticator it returns before terminating the context.
    """
    authenticator = ThreadAuthenticator(context)
    authenticator.start()
    authenticator.configure_curve_callback("*", credentials_provider=_Authorized(keys, reactor))
    return authenticator


def create_keys(directory: str | os.PathLike[str], *, force: bool = False) -> list[Path]:
    """Make a keys directory: a new cluster keypair, its public key authorized.

    The directory (and ``authorized/``) is created with mode 0700, the secret
    file with mode 0600. Keys already in ``authorized/`` are kept.

    Returns:
        the files written.

    Raises:
        FileExistsError: the directory already holds a cluster keypair and not ``force``.
    """
    root = Path(directory)
    public = root / f"{CLUSTER_NAME}.key"
    secret = root / f"{CLUSTER_NAME}.key_secret"
    authorized = root / AUTHORIZED_DIR / public.name
    existing = [path for path in (secret, public) if path.exists()]
    if existing and not force:
        raise FileExistsError(f"{existing[0]} exists")
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    authorized.parent.mkdir(mode=0o700, exist_ok=True)
    # Written in a private temporary directory, then moved into place: the secret
    # is never readable by others, even in a directory that already existed.
    with tempfile.TemporaryDirectory(dir=root, prefix=".mmo-keys-") as scratch:
        new_public, new_secret = zmq.auth.create_certificates(scratch, CLUSTER_NAME)
        os.chmod(new_secret, 0o600)
        shutil.copyfile(new_public, Path(scratch) / "authorized.key")
        os.replace(Path(scratch) / "authorized.key", authorized)
        os.replace(new_public, public)
        os.replace(new_secret, secret)
    return [secret, public, authorized]


def provide_curve_keys(directory: str | os.PathLike[str]) -> str | None:
    """Make fresh cluster keys in ``directory`` and name them in this process's
    ``$MMO_CURVE_KEYS`` (so its own links and the children it starts use them), unless
    keys are given already or insecure links were chosen (``MMO_INSECURE=1``).

    For what starts a whole cluster on one machine (``mmo-cluster``, the demo,
    ``mmo bench``): no key ever ships with mmo, and none is needed to try it.

    Returns:
        the directory, if keys were made there (the caller removes it when done).
    """
    if os.environ.get(ENV_KEYS) or os.environ.get(INSECURE_ENV) == "1":
        return None
    create_keys(directory, force=True)
    os.environ[ENV_KEYS] = str(directory)
    return str(directory)
