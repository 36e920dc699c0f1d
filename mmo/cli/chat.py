"""``mmo chat``: a line-mode chat client on :class:`mmo.client.Client`.

    mmo chat (--brokerlist URL | --broker HOST:PORT) --user NAME --password PW --room ROOM
             [--register]

It connects, optionally registers (an existing account is fine), logs in, joins the
room and prints its members; then it prints each push as one line and sends each line
of standard input as ``NOTIFY chat.send {"content": line}``. End of input logs out and
exits 0; a failed login, or a session that ends (kicked, or not resumable), exits 1
with the reason on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, task
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import connectionDone
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from typing_extensions import override
from zope.interface import implementer

from mmo.cli.common import CommandError, to_json
from mmo.client.errors import ClientDisconnected, ClientException, ClientRequestError
from mmo.client.session import Client
from mmo.types import InlineCallbacks


def add_parser(sub: Any) -> None:
    """Add ``chat`` to the ``mmo`` command's subparsers."""
    chat = sub.add_parser("chat", help="chat in a room through the brokers (a client demo)")
    chat.add_argument(
        "--brokerlist",
        default=os.environ.get("MMO_BROKERLIST"),
        help="brokerlist URL (default $MMO_BROKERLIST)",
    )
    chat.add_argument(
        "--broker",
        default=None,
        help="connect to this broker first: host:port, or tls://, ws://, wss://HOST:PORT",
    )
    chat.add_argument(
        "--websocket", action="store_true", help="connect over WebSocket (the websocketList)"
    )
    chat.add_argument(
        "--tls",
        choices=("auto", "on", "off"),
        default="auto",
        help="TLS to the brokers: as the brokerlist says (auto), always, or never",
    )
    chat.add_argument(
        "--ca-file",
        default=os.environ.get("MMO_CA_FILE"),
        help="PEM file of the CA certificates to check brokers against "
        "(default $MMO_CA_FILE, else the system's)",
    )
    chat.add_argument("--user", required=True, help="account name")
    chat.add_argument("--password", required=True, help="account password")
    chat.add_argument("--room", required=True, help="room to join")
    chat.add_argument("--register", action="store_true", help="create the account first")
    chat.set_defaults(run=cmd_chat)


def _who(body: Any) -> str:
    if isinstance(body, dict):
        for key in ("from", "user", "user_id", "name"):
            if body.get(key) is not None:
                return str(body[key])
    return "?"


def format_push(route: str, body: Any) -> str:
    """One line for a push: ``[room] from: content``, ``* user joined``, or route + JSON."""
    if route == "chat.message" and isinstance(body, dict):
        return f"[{body.get('room', '?')}] {_who(body)}: {body.get('content', '')}"
    if route == "chat.joined":
        return f"* {_who(body)} joined"
    if route == "chat.left":
        return f"* {_who(body)} left"
    return f"{route} {to_json(body)}"


def format_members(room: str, reply: Any) -> str:
    """One line listing who is in ``room``, from the reply of ``chat.join``."""
    members = reply.get("members", reply) if isinstance(reply, dict) else reply
    if isinstance(members, list):
        names = [m if isinstance(m, str) else _who(m) for m in members]
        return f"* in {room}: {', '.join(names) if names else 'nobody'}"
    return f"* joined {room}: {to_json(reply)}"


@implementer(IHalfCloseableProtocol)
class ChatConsole(LineReceiver):
    """Standard input and output of the chat: lines in, lines out.

    Until it is connected (to ``StandardIO``) lines are printed; after that they go
    through its transport, as ``StandardIO`` makes standard output non-blocking.
    End of input only half-closes, so what arrives while logging out is still shown.
    """

    delimiter = b"\n"

    def __init__(self) -> None:
        self.on_line: Callable[[str], object] = lambda line: None
        self.on_eof: Callable[[], object] = lambda: None

    def write_line(self, text: str) -> None:
        """Show one line to the user."""
        if self.transport is not None:
            self.transport.write(text.encode("utf-8", "replace") + b"\n")
        else:
            print(text, flush=True)

    @override
    def lineReceived(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace").rstrip("\r")
        if text.strip():
            self.on_line(text)

    def readConnectionLost(self) -> None:
        """End of input (``IHalfCloseableProtocol``): the chat ends."""
        self.on_eof()

    def writeConnectionLost(self) -> None:
        """Standard output closed (``IHalfCloseableProtocol``): nothing to show lines on."""
        self.on_eof()

    @override
    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.on_eof()


#: Seconds to wait for the last broadcasts after the end of input.
LINGER = 0.3


def _error(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@defer.inlineCallbacks
def run_chat(
    client: Client,
    console: ChatConsole,
    attach: Callable[[ChatConsole], object],
    *,
    user: str,
    password: str,
    room: str,
    register: bool = False,
) -> InlineCallbacks[None]:
    """Run a chat session until end of input (or until the session ends).

    Args:
        client: a client not yet connected.
        console: where lines come from and go to.
        attach: connects ``console`` to the user's input (``StandardIO``), once joined.
        user: account name.
        password: account password.
        room: the room to join.
        register: call ``sso.register`` first (an ``AccountExists`` error is ignored).

    Raises:
        CommandError: connecting, registering, logging in or joining failed, or the
            session ended before the input did.
    """
    try:
        yield client.connect()
    except ClientException as e:
        raise CommandError(str(e)) from e
    try:
        if register:
            try:
                yield client.register(user=user, password=password)
            except ClientRequestError as e:
                if "AccountExists" not in e.message:
                    raise CommandError(f"register failed: {e.message or e.name}") from e
        try:
            yield client.login(user=user, password=password)
        except ClientRequestError as e:
            raise CommandError(f"login failed: {e.message or e.name}") from e
        client.on("*", lambda route, body: console.write_line(format_push(route, body)))
        client.on_error(lambda error: _error(f"! {error}"))
        client.on_resumed(lambda reply: _error(f"* resumed on {client.broker_address}"))
        try:
            reply = yield client.request("chat.join", {"room": room})
        except ClientException as e:
            raise CommandError(f"join {room} failed: {e}") from e
        console.write_line(format_members(room, reply))

        done: defer.Deferred[None] = defer.Deferred()

        def send(line: str) -> None:
            try:
                client.notify("chat.send", {"content": line})
            except ClientDisconnected as e:
                _error(f"! not sent: {e}")

        def eof() -> None:
            if not done.called:
                done.callback(None)

        def closed(reason: ClientDisconnected | None) -> None:
            if reason is not None and not done.called:
                done.errback(CommandError(str(reason)))

        console.on_line = send
        console.on_eof = eof
        client.on_closed(closed)
        attach(console)
        yield done
        # Before leaving, let what was sent come back: a round trip through the chat
        # service (it handles this session's messages in order), then a moment for the
        # broadcasts still on their way.
        with contextlib.suppress(ClientException):
            yield client.request("chat.members", {"room": room})
        yield task.deferLater(client.reactor, LINGER, lambda: None)
        yield client.logout()
    except ClientException as e:
        raise CommandError(str(e)) from e
    finally:
        if client.state != "closed":
            yield client.close()


@defer.inlineCallbacks
def cmd_chat(reactor: Any, args: argparse.Namespace) -> InlineCallbacks[None]:
    """The ``mmo chat`` command."""
    from twisted.internet.stdio import StandardIO

    if not args.brokerlist and not args.broker:
        raise CommandError("give --brokerlist URL (or $MMO_BROKERLIST) or --broker HOST:PORT")
    try:
        client = Client(
            reactor,
            brokerlist=args.brokerlist or None,
            broker=args.broker,
            transport="websocket" if args.websocket else "tcp",
            tls={"auto": None, "on": True, "off": False}[args.tls],
            ca_file=args.ca_file or None,
        )
    except ValueError as e:
        raise CommandError(str(e)) from e
    yield run_chat(
        client,
        ChatConsole(),
        lambda console: StandardIO(console, reactor=reactor),
        user=args.user,
        password=args.password,
        room=args.room,
        register=args.register,
    )
