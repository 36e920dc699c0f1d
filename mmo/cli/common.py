"""What the ``mmo`` subcommands share: their error, JSON output, yellow addresses, one call."""

from __future__ import annotations

import argparse
import base64
import json
import os
from collections.abc import Callable
from typing import Any

from twisted.internet import defer

from mmo.errors import MmoError, RemoteError
from mmo.types import InlineCallbacks

__all__ = [
    "DEFAULT_YELLOW",
    "CommandError",
    "add_yellow",
    "call_once",
    "connected",
    "to_json",
    "yellows",
]

DEFAULT_YELLOW = "tcp://127.0.0.1:5555"


class CommandError(Exception):
    """A command failed; the message is printed and the exit status is 1."""


def to_json(value: Any) -> str:
    """JSON text of a reply; bytes become ``{"$bytes": "<base64>"}``."""

    def default(obj: Any) -> Any:
        if isinstance(obj, bytes):
            return {"$bytes": base64.b64encode(obj).decode()}
        raise TypeError(f"cannot show a {type(obj).__name__}")

    return json.dumps(value, default=default, ensure_ascii=False, sort_keys=True)


def yellows(text: str) -> list[str]:
    """The yellow addresses in a comma-separated option."""
    return [part.strip() for part in text.split(",") if part.strip()]


def add_yellow(parser: argparse.ArgumentParser) -> None:
    """``--yellow``, defaulting to ``$MMO_YELLOW`` or the one-machine cluster's."""
    parser.add_argument(
        "--yellow",
        default=os.environ.get("MMO_YELLOW", DEFAULT_YELLOW),
        help="yellow address(es), comma-separated (default $MMO_YELLOW or %(default)s)",
    )


@defer.inlineCallbacks
def connected(
    reactor: Any, yellow: str, work: Callable[[Any], defer.Deferred[Any]]
) -> InlineCallbacks[Any]:
    """``work(directory)`` with a directory of the cluster at ``yellow`` (stopped after):
    what it returns.

    Raises:
        CommandError: a call failed (the error's type and message).
    """
    from mmo.logic import connect

    directory = connect(yellow, reactor=reactor, caller_id=f"mmo-cli-{os.getpid()}")
    try:
        return (yield work(directory))
    except RemoteError as e:
        raise CommandError(f"RemoteError: {e.type}: {e.message}") from e
    except MmoError as e:
        raise CommandError(f"{type(e).__name__}: {e}") from e
    finally:
        yield directory.stopService()


def call_once(
    reactor: Any, yellow: str, service: str, method: str, kwargs: dict[str, Any], timeout: float
) -> defer.Deferred[Any]:
    """Call ``service.method`` through the cluster at ``yellow`` and return the reply.

    Raises:
        CommandError: the call failed (the error's type and message).
    """
    return connected(
        reactor, yellow, lambda directory: directory.call(service, method, kwargs, timeout=timeout)
    )
