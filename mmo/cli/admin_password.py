"""``mmo admin-password NAME``: an admin account line for the console's accounts.

mmo admin-password NAME [--stdin]

Asks for the password (twice; ``--stdin`` reads it from the first line of standard input)
and prints ``NAME:scrypt$...``, a line for the file ``mmo-admin --accounts FILE`` reads or
for ``$MMO_ADMIN_ACCOUNTS`` (docs/admin.md). The password itself is stored nowhere.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from twisted.internet import defer

from mmo.cli.common import CommandError

__all__ = ["add_parser", "cmd_admin_password"]


def cmd_admin_password(reactor: Any, args: argparse.Namespace) -> defer.Deferred[None]:
    """Print the account line of ``args.name``."""
    from mmo.admin.accounts import hash_password

    def make() -> None:
        if ":" in args.name or "," in args.name or not args.name.strip():
            raise CommandError("a name has no ':' nor ','")
        if args.stdin:
            password = sys.stdin.readline().rstrip("\n")
        else:
            password = getpass.getpass(f"password for {args.name}: ")
            if getpass.getpass("again: ") != password:
                raise CommandError("the two passwords differ")
        if len(password) < 8:
            raise CommandError("a password has 8 characters at least")
        print(f"{args.name}:{hash_password(password)}")

    return defer.maybeDeferred(make)


def add_parser(sub: Any) -> None:
    """Add ``admin-password`` to the ``mmo`` tool's subcommands."""
    command = sub.add_parser(
        "admin-password", help="an account line for the admin console (docs/admin.md)"
    )
    command.add_argument("name", metavar="NAME", help="the admin's name")
    command.add_argument("--stdin", action="store_true", help="read the password from stdin")
    command.set_defaults(run=cmd_admin_password)
