"""Hostile clients against a real broker: slowloris, a connection flood, a slow reader.

Each attack comes from its own loopback address (127.0.0.3, .4, ...: all of 127/8 reaches
the broker on Linux), while a well-behaved bystander on 127.0.0.2 keeps making requests in a
thread; its latencies must stay within :data:`P99_BOUND`. The broker's memory (``VmRSS``) is
sampled from ``/proc``. Each test prints one ``HOSTILE`` line (``pytest -s``), recorded in
docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mmo.testing.rawclient import RawClient
from mmo.wire import decode
from mmo.wire.gen.mmo.ttypes import ClientError, Packet, PacketKind

from .edge import EdgeCluster

LOGIN_TIMEOUT = 2.0
MAX_PER_ADDRESS = 32
#: The bystander's p99 bound while under attack (a noisy 2-core VM: generous on purpose).
P99_BOUND = 0.5
#: How much the broker's RSS may grow during one attack.
RSS_GROWTH_BOUND = 64 * 1024 * 1024

pytestmark = pytest.mark.timeout(120)


def rss(pid: int) -> int:
    """The resident set size of process ``pid``, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def p99(latencies: list[float]) -> float:
    """The 99th percentile of ``latencies``."""
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


class Bystander(threading.Thread):
    """A logged-in client on 127.0.0.2 making echo requests until stopped."""

    def __init__(self, port: int, user: str = "bob") -> None:
        super().__init__(daemon=True)
        self.client = RawClient(port, source="127.0.0.2")
        self.client.login(user, f"pw-{user}")
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.running = True

    def run(self) -> None:
        """Request, time, repeat (10 ms apart)."""
        n = 0
        while self.running:
            n += 1
            started = time.monotonic()
            try:
                reply = self.client.request("echo.echo", {"n": n})
            except OSError as e:
                self.errors.append(f"{type(e).__name__}: {e}")
                return
            self.latencies.append(time.monotonic() - started)
            if reply.kind != PacketKind.RESPONSE or reply.value != {"n": n}:
                self.errors.append(f"{reply.kind} {reply.code} {reply.message}")
            time.sleep(0.01)

    def finish(self) -> tuple[float, int]:
        """Stop (after enough requests for a p99); the p99 latency and the request count."""
        deadline = time.monotonic() + 5
        while len(self.latencies) <= 30 and time.monotonic() < deadline and self.is_alive():
            time.sleep(0.05)
        self.running = False
        self.join(10)
        self.client.close()
        assert not self.errors, self.errors[:5]
        assert len(self.latencies) > 20, "the bystander hardly ran"
        return p99(self.latencies), len(self.latencies)


@contextlib.contextmanager
def bystander(port: int) -> Iterator[Bystander]:
    """A running :class:`Bystander` (stopped on exit, even on failure)."""
    b = Bystander(port)
    b.start()
    try:
        yield b
    finally:
        b.running = False
        b.join(10)


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgeCluster]:
    """One broker with a short login timeout, a per-address cap of 32 and a high rate limit."""
    cluster = EdgeCluster(
        tmp_path_factory.mktemp("hostile"),
        brokers=1,
        broker_args=(
            "--login-timeout",
            str(LOGIN_TIMEOUT),
            "--max-per-address",
            str(MAX_PER_ADDRESS),
            # The slow-reader test floods a room from one session: let it (the
            # broadcast budgets have their own attack test, test_attacks.py).
            "--rate",
            "1000000",
            "--burst",
            "1000000",
            "--sender-rate",
            "1000000",
            "--sender-burst",
            "1000000",
            "--channel-budget",
            str(2**40),
        ),
    )
    try:
        cluster.wait_ready()
        yield cluster
    finally:
        cluster.stop()


def broker_pid(edge: EdgeCluster) -> int:
    """The broker process's pid."""
    return edge.processes["broker-1"].pid


def read_packets(buffer: bytearray) -> list[Packet]:
    """Take the whole frames out of ``buffer``."""
    packets = []
    while len(buffer) >= 4:
        (length,) = struct.unpack(">I", buffer[:4])
        if len(buffer) < 4 + length:
            break
        packets.append(decode(Packet, bytes(buffer[4 : 4 + length])))
        del buffer[: 4 + length]
    return packets


def test_slowloris_is_closed_by_the_login_timeout(edge: EdgeCluster) -> None:
    """20 byte-at-a-time connections that never finish a frame all get LOGIN_TIMEOUT in time."""
    count, started = 20, time.monotonic()
    socks: dict[socket.socket, bytearray] = {}
    closed_after: dict[socket.socket, float] = {}
    frame = struct.pack(">I", 200) + b"\x08" * 200  # a frame we never finish sending
    with bystander(edge.ports[0]) as b:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.4", 0))
            sock.connect(("127.0.0.1", edge.ports[0]))
            sock.setblocking(False)
            socks[sock] = bytearray()
        sent = 0
        while len(closed_after) < count and time.monotonic() - started < 10:
            for sock, buffer in socks.items():
                if sock in closed_after:
                    continue
                try:
                    sock.send(frame[sent : sent + 1])
                    data = sock.recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if data:
                    buffer += data
                else:
                    closed_after[sock] = time.monotonic() - started
            sent = min(sent + 1, len(frame) - 1)
            time.sleep(0.25)
        latency, requests = b.finish()
    answers = [read_packets(buffer) for buffer in socks.values()]
    for sock in socks:
        sock.close()
    assert len(closed_after) == count, f"{count - len(closed_after)} slowloris still open"
    for packets in answers:
        assert [(p.kind, p.code) for p in packets] == [
            (PacketKind.ERROR, ClientError.LOGIN_TIMEOUT)
        ]
    latest = max(closed_after.values())
    print(
        f"\nHOSTILE slowloris: connections={count} all closed by {latest:.2f}s"
        f" (login-timeout {LOGIN_TIMEOUT:g}s) bystander p99={latency * 1000:.0f}ms"
        f" requests={requests}"
    )
    # The broker sweeps once a second: closed within the timeout plus one sweep, with slack.
    assert latest <= LOGIN_TIMEOUT + 2.0
    assert latency <= P99_BOUND


def test_connection_flood_from_one_address_is_capped(edge: EdgeCluster) -> None:
    """300 connections from one IP: 32 admitted, the rest refused at once; others unaffected."""
    pid = broker_pid(edge)
    flood = 300
    before = rss(pid)
    held: list[socket.socket] = []
    refused = admitted = 0
    with bystander(edge.ports[0]) as b:
        time.sleep(0.5)  # a baseline for the bystander
        started = time.monotonic()
        for i in range(flood):
            if i % 40 == 39:
                # Twisted's listen backlog is 50: a faster burst has its SYNs dropped and
                # retried by the kernel after 1 s (see docs/reliability.md), which would
                # let the login timeout free slots mid-flood and blur the count.
                time.sleep(0.02)
            sock = socket.socket()
            sock.bind(("127.0.0.3", 0))
            sock.settimeout(5)
            sock.connect(("127.0.0.1", edge.ports[0]))
            held.append(sock)
        flooded_in = time.monotonic() - started
        # Refused connections have their answer at once; admitted ones hear nothing until
        # the login timeout (the whole flood takes far less, see the assert below).
        time.sleep(0.5)
        for sock in held:
            sock.setblocking(False)
            try:
                packets = read_packets(bytearray(sock.recv(4096)))
            except BlockingIOError:
                admitted += 1
                continue
            if [(p.kind, p.code) for p in packets] == [(PacketKind.ERROR, ClientError.UNAVAILABLE)]:
                refused += 1
        peak = rss(pid)
        time.sleep(0.5)
        latency, requests = b.finish()
    for sock in held:
        sock.close()
    growth = peak - before
    print(
        f"\nHOSTILE flood: connections={flood} in {flooded_in:.2f}s admitted={admitted}"
        f" refused={refused} (cap {MAX_PER_ADDRESS}) bystander p99={latency * 1000:.0f}ms"
        f" requests={requests} broker RSS +{growth / 1024:.0f} KiB"
    )
    assert flooded_in < LOGIN_TIMEOUT / 2  # so no admitted connection timed out yet
    assert admitted == MAX_PER_ADDRESS
    assert refused == flood - MAX_PER_ADDRESS
    assert latency <= P99_BOUND
    assert growth <= RSS_GROWTH_BOUND
    assert edge.processes["broker-1"].wait_for_log("is at its cap of 32 connections", 5)
    # The cap is per address: once the flood is gone, that address is served again.
    time.sleep(0.3)
    client = RawClient(edge.ports[0], source="127.0.0.3")
    try:
        assert client.login("carol", "pw-carol")["user_id"] == "carol"
    finally:
        client.close()


def read_own_messages(client: RawClient, user: str, count: int) -> None:
    """Read pushes until ``count`` chat messages from ``user`` arrived."""
    got = 0
    while got < count:
        packet = client.recv()
        if packet.kind == PacketKind.PUSH and packet.route == "chat.message":
            got += packet.value.get("from") == user
        elif packet.kind in (PacketKind.ERROR, PacketKind.KICK):
            raise AssertionError(f"the sender got {packet.code} {packet.message}")


def test_slow_reader_is_disconnected_and_memory_stays_bounded(edge: EdgeCluster) -> None:
    """A member that never reads its pushes is dropped (SLOW_CONSUMER); RSS stays bounded."""
    pid = broker_pid(edge)
    slow = RawClient(edge.ports[0], source="127.0.0.5", rcvbuf=4096)
    slow.login("dave", "pw-dave")
    assert slow.request("chat.join", {"room": "slow"}).kind == PacketKind.RESPONSE
    sender = RawClient(edge.ports[0], source="127.0.0.6")
    sender.login("erin", "pw-erin")
    assert sender.request("chat.join", {"room": "slow"}).kind == PacketKind.RESPONSE
    before = peak = rss(pid)
    batch, limit, sent = 100, 20_000, 0
    content = "x" * 1000  # the largest chat message
    started = time.monotonic()
    dropped = False
    with bystander(edge.ports[0]) as b:
        # Bounded: at most `limit` messages (20 MB of pushes), stopping once it is dropped.
        while sent < limit and not dropped:
            for _ in range(batch):
                sender.send(PacketKind.NOTIFY, "chat.send", {"content": content})
            read_own_messages(sender, "erin", batch)  # paces the sender on the fan-out
            sent += batch
            peak = max(peak, rss(pid))
            dropped = "slow consumer 127.0.0.5" in edge.processes["broker-1"].log_tail(50)
        took = time.monotonic() - started
        latency, requests = b.finish()
    sender.close()
    growth = peak - before
    print(
        f"\nHOSTILE slow reader: dropped={dropped} after {sent} pushes ({sent // 1000} MB)"
        f" in {took:.2f}s broker RSS +{growth / 1024 / 1024:.1f} MiB (peak"
        f" {peak / 1024 / 1024:.1f} MiB) bystander p99={latency * 1000:.0f}ms requests={requests}"
    )
    assert dropped, "the slow reader was never disconnected"
    assert slow.closed()
    slow.close()
    assert growth <= RSS_GROWTH_BOUND
    assert latency <= P99_BOUND
