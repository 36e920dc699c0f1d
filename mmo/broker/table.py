"""Who is at a broker: its client connections, their sessions and the channels they are in.

The :class:`SessionTable` admits connections within the per-address cap, holds the
sessions by id and the members of each channel (within the channel limits), and
finds the connections a message from logic is for. It only keeps state: what the
session service must hear of a change is said by the broker's other parts.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Collection, Iterable

from twisted.logger import Logger

from mmo.broker.config import BrokerConfig
from mmo.broker.connection import ClientConnection
from mmo.broker.counters import Counters
from mmo.logic.sessions import ALL
from mmo.wire.gen.mmo.ttypes import ClientError

__all__ = ["SessionTable", "peer_host"]


def peer_host(peer: str) -> str:
    """The host part of a carrier's ``host:port`` (what the per-address cap counts)."""
    host, colon, _ = peer.rpartition(":")
    return host if colon else peer


class SessionTable:
    """The connections, sessions and channels of one broker.

    Args:
        config: the broker's settings (capacity, per-address cap, channel limits).
        counters: where refusals are counted.

    Attributes:
        connections: every admitted connection, logged in or not.
        sessions: session id -> the connection holding it.
        channels: channel -> the connections in it (a channel without members is no key).
        per_address: client host -> connections open from it.
    """

    log = Logger()

    def __init__(self, config: BrokerConfig, counters: Counters) -> None:
        self.config = config
        self.counters = counters
        self.connections: set[ClientConnection] = set()
        self.sessions: dict[str, ClientConnection] = {}
        self.channels: dict[str, set[ClientConnection]] = defaultdict(set)
        self.per_address: Counter[str] = Counter()

    # -- connections -----------------------------------------------------------

    def full(self) -> bool:
        """Whether the broker holds as many connections as its capacity."""
        return len(self.connections) >= self.config.capacity

    def admit(self, conn: ClientConnection) -> bool:
        """Take a new connection unless its address is at the cap (then refuse it: False)."""
        host = peer_host(conn.carrier.peer())
        cap = self.config.max_per_address
        if cap and self.per_address[host] >= cap:
            self.counters.count("refused_per_address")
            refused = self.counters["refused_per_address"]
            if refused == 1 or refused % 100 == 0:
                # A flood refuses thousands: log the first and then every 100th.
                self.log.warn(
                    "broker: {host} is at its cap of {cap} connections, refusing"
                    " ({refused} refused so far)",
                    host=host,
                    cap=cap,
                    refused=refused,
                )
            conn.fail(None, ClientError.UNAVAILABLE, "too many connections from your address")
            return False
        self.per_address[host] += 1
        conn.host = host
        self.connections.add(conn)
        return True

    def release(self, conn: ClientConnection) -> str | None:
        """Forget a connection that is gone; the id of the session that went offline
        with it (it may resume), if it held one."""
        if conn not in self.connections:
            return None
        self.connections.discard(conn)
        host = conn.host
        self.per_address[host] -= 1
        if self.per_address[host] <= 0:
            del self.per_address[host]
        sid = conn.session_id
        if sid is None or self.sessions.get(sid) is not conn:
            return None
        del self.sessions[sid]
        for channel in conn.channels:
            self._drop_member(channel, conn)
        return sid

    # -- sessions --------------------------------------------------------------

    def adopt(self, conn: ClientConnection, sid: str, user_id: str, token: str) -> None:
        """Give ``conn`` the session ``sid`` (replacing the connection that held it)."""
        old = self.sessions.get(sid)
        if old is not None and old is not conn:
            self.replace(old)
        conn.session_id, conn.user_id, conn.token = sid, user_id, token
        self.sessions[sid] = conn

    def forget(self, conn: ClientConnection) -> None:
        """Detach a connection from its session (losing it then tells no one)."""
        sid = conn.session_id
        if sid is not None and self.sessions.get(sid) is conn:
            del self.sessions[sid]
        for channel in conn.channels:
            self._drop_member(channel, conn)
        conn.session_id = None

    def replace(self, old: ClientConnection) -> None:
        """The session moved to another connection: end the old one quietly."""
        self.forget(old)
        old.kick(ClientError.REPLACED, "the session was resumed on another connection")

    def targets(self, sids: Iterable[str]) -> list[ClientConnection]:
        """The connections holding these sessions here (one missing is counted)."""
        found = []
        for sid in sids:
            conn = self.sessions.get(sid)
            if conn is not None:
                found.append(conn)
            else:
                self.counters.count("push_no_session")
        return found

    # -- channels --------------------------------------------------------------

    def members(self, channel: str) -> Collection[ClientConnection]:
        """The connections in ``channel`` (every connection for :data:`ALL`)."""
        return self.connections if channel == ALL else self.channels.get(channel, ())

    def join(self, conn: ClientConnection, channel: str) -> bool:
        """Put ``conn`` in ``channel`` if the channel limits allow (refusals are counted)."""
        if not self._may_join(conn, channel):
            return False
        conn.channels.add(channel)
        self.channels[channel].add(conn)
        return True

    def leave(self, conn: ClientConnection, channel: str) -> None:
        """Take ``conn`` out of ``channel``."""
        conn.channels.discard(channel)
        self._drop_member(channel, conn)

    def _may_join(self, conn: ClientConnection, channel: str) -> bool:
        if channel in conn.channels:
            return True
        if len(channel.encode()) > self.config.max_channel_name:
            self.counters.count_and_log(
                "channel_name_too_long",
                "broker: a channel name of {size} bytes refused (limit {limit})",
                size=len(channel.encode()),
                limit=self.config.max_channel_name,
            )
            return False
        if len(conn.channels) >= self.config.max_channels:
            self.counters.count_and_log(
                "channels_over_limit",
                "broker: session {sid} is in {limit} channels; joining {channel!r} refused",
                sid=conn.session_id,
                limit=self.config.max_channels,
                channel=channel,
            )
            return False
        return True

    def _drop_member(self, channel: str, conn: ClientConnection) -> None:
        members = self.channels.get(channel)
        if members is not None:
            members.discard(conn)
            if not members:
                del self.channels[channel]
