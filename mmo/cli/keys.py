"""``mmo keys DIR``: make the CURVE keys that encrypt the cluster's internal links.

mmo keys DIR [--force]
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from twisted.internet import defer

from mmo.cli.common import CommandError

__all__ = ["add_parser", "cmd_keys"]


def cmd_keys(reactor: Any, args: argparse.Namespace) -> defer.Deferred[None]:
    """Make a CURVE keys directory for ``$MMO_CURVE_KEYS`` (docs/security.md)."""
    from mmo.zmq.curve import ENV_KEYS, create_keys

    def make() -> None:
        try:
            written = create_keys(args.directory, force=args.force)
        except FileExistsError as e:
            raise CommandError(f"{e}: keys are already there (--force replaces them)") from e
        except OSError as e:
            raise CommandError(f"cannot write the keys: {e}") from e
        for path in written:
            print(f"wrote {path}")
        print(f"give every process of the cluster {ENV_KEYS}={os.path.abspath(args.directory)}")

    return defer.maybeDeferred(make)


def add_parser(sub: Any) -> None:
    """Add ``keys`` to the ``mmo`` tool's subcommands."""
    keys = sub.add_parser(
        "keys", help="make the CURVE keys that encrypt internal links (docs/security.md)"
    )
    keys.add_argument("directory", metavar="DIR", help="directory to create (mode 0700)")
    keys.add_argument("--force", action="store_true", help="replace the keys already in DIR")
    keys.set_defaults(run=cmd_keys)
